// warmstartctl's exit statuses, the one mapping from a failed command's
// status to its exit status, and the one way a command reports its failure.
// Thread-safe.
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_EXIT_CODES_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_EXIT_CODES_H_

#include <string>

#include "absl/status/status.h"

namespace warmstart {
namespace ctl {

// Exit statuses, shared by every subcommand.
enum ExitCode {
  kExitOk = 0,
  kExitUsage = 1,
  kExitMalformed = 2,
  kExitUnavailable = 3,
  kExitNotFound = 4,
  kExitRefused = 5,
  kExitTimeout = 6,
  kExitChecksum = 7,
  kExitIoError = 8,
};

// The exit status for a failed command: a stored checksum that does not
// match 7, an I/O error of the storage (IsIoError: EIO, EUCLEAN, ...) 8,
// NotFound 4, PermissionDenied and ResourceExhausted (refused) 5,
// Unavailable 3, DeadlineExceeded 6, anything else 2 (malformed input).
int ExitCodeFor(const absl::Status& status);

// The exit status for a failed call to the daemon: as ExitCodeFor, and the
// daemon's refusals AlreadyExists (the name is taken) and
// FailedPrecondition (leased, incompatible protocol) are 5 too; DataLoss
// with the daemon's checksum mismatch message ("... mismatch: expected
// ...") is 7.
int ExitCodeForDaemonCall(const absl::Status& status);

// Prints "warmstartctl: <message>" to stderr, with bytes that are not
// printable escaped (messages carry file and tensor names, which may hold
// any byte), and returns `code`.
int Fail(int code, const std::string& message);

// Fail(ExitCodeForDaemonCall(status), status.message()).
int FailDaemonCall(const absl::Status& status);

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_EXIT_CODES_H_
