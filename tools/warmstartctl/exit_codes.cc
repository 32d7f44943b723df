#include "tools/warmstartctl/exit_codes.h"

#include <cstdio>

#include "absl/strings/match.h"
#include "common/errno_status.h"
#include "common/printable.h"
#include "daemon/formats/tensor_data.h"

namespace warmstart {
namespace ctl {

int ExitCodeFor(const absl::Status& status) {
  if (IsChecksumMismatch(status)) return kExitChecksum;
  if (IsIoError(status)) return kExitIoError;
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kResourceExhausted:
      return kExitRefused;
    case absl::StatusCode::kUnavailable:
      return kExitUnavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return kExitTimeout;
    default:
      return kExitMalformed;
  }
}

int ExitCodeForDaemonCall(const absl::Status& status) {
  // The checksum payload does not cross gRPC; the daemon's message for a
  // stored checksum that does not match does (VerifyStoredChecksums).
  if (status.code() == absl::StatusCode::kDataLoss &&
      absl::StrContains(status.message(), " mismatch: expected ")) {
    return kExitChecksum;
  }
  switch (status.code()) {
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
      return kExitRefused;
    default:
      return ExitCodeFor(status);
  }
}

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "warmstartctl: %s\n", Printable(message).c_str());
  return code;
}

int FailDaemonCall(const absl::Status& status) {
  return Fail(ExitCodeForDaemonCall(status), std::string(status.message()));
}

}  // namespace ctl
}  // namespace warmstart
