#include "tools/warmstartctl/exit_codes.h"

#include <cerrno>

#include "common/errno_status.h"
#include "common/testing/status_matchers.h"
#include "daemon/formats/tensor_data.h"

namespace warmstart {
namespace ctl {
namespace {

TEST(ExitCodeForTest, FollowsTheTable) {
  EXPECT_EQ(ExitCodeFor(absl::InvalidArgumentError("x")), kExitMalformed);
  EXPECT_EQ(ExitCodeFor(absl::FailedPreconditionError("x")), kExitMalformed);
  EXPECT_EQ(ExitCodeFor(absl::NotFoundError("x")), kExitNotFound);
  EXPECT_EQ(ExitCodeFor(absl::PermissionDeniedError("x")), kExitRefused);
  EXPECT_EQ(ExitCodeFor(absl::ResourceExhaustedError("x")), kExitRefused);
  EXPECT_EQ(ExitCodeFor(absl::UnavailableError("x")), kExitUnavailable);
  EXPECT_EQ(ExitCodeFor(absl::DeadlineExceededError("x")), kExitTimeout);
  EXPECT_EQ(ExitCodeFor(absl::DataLossError("read: EIO")), kExitMalformed);
  absl::Status mismatch = absl::DataLossError("SHA-256 mismatch");
  mismatch.SetPayload(kChecksumMismatchPayload, absl::Cord());
  EXPECT_EQ(ExitCodeFor(mismatch), kExitChecksum);
}

TEST(ExitCodeForTest, IoErrorsHaveTheirOwnExitCode) {
  // They were 2, "malformed input", which sends an operator after the file
  // instead of the disk.
  EXPECT_EQ(ExitCodeFor(ErrnoToStatus(EIO, "read /m/x")), kExitIoError);
  EXPECT_EQ(ExitCodeFor(ErrnoToStatus(EUCLEAN, "read /m/x")), kExitIoError);
  const absl::Status from_daemon = ErrnoToStatus(EIO, "read /m/x");
  EXPECT_EQ(ExitCodeForDaemonCall(absl::Status(
                from_daemon.code(), std::string(from_daemon.message()))),
            kExitIoError);
}

TEST(ExitCodeForTest, DaemonRefusalsAreExit5) {
  EXPECT_EQ(ExitCodeForDaemonCall(absl::AlreadyExistsError("x")), kExitRefused);
  EXPECT_EQ(ExitCodeForDaemonCall(absl::FailedPreconditionError("x")),
            kExitRefused);
  EXPECT_EQ(ExitCodeForDaemonCall(absl::PermissionDeniedError("x")),
            kExitRefused);
  EXPECT_EQ(ExitCodeForDaemonCall(absl::NotFoundError("x")), kExitNotFound);
  EXPECT_EQ(ExitCodeForDaemonCall(absl::UnavailableError("x")),
            kExitUnavailable);
  EXPECT_EQ(ExitCodeForDaemonCall(absl::AbortedError("x")), kExitMalformed);
  EXPECT_EQ(ExitCodeForDaemonCall(absl::DataLossError("read: EIO")),
            kExitMalformed);
  EXPECT_EQ(ExitCodeForDaemonCall(absl::DataLossError(
                "m.tensors: tensor w: SHA-256 mismatch: expected ab, got cd")),
            kExitChecksum);
}

TEST(FailTest, PrintsOneEscapedLineAndReturnsTheCode) {
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Fail(kExitNotFound, "model \"a\nb\x1b[2J\" not found"),
            kExitNotFound);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "warmstartctl: model \"a\\x0ab\\x1b[2J\" not found\n");
}

TEST(FailTest, ADaemonCallFailureTakesItsExitCodeFromTheStatus) {
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(FailDaemonCall(absl::PermissionDeniedError("not yours")),
            kExitRefused);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "warmstartctl: not yours\n");
}

}  // namespace
}  // namespace ctl
}  // namespace warmstart
