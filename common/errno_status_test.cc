#include "common/errno_status.h"

#include <cerrno>

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(ErrnoToStatusTest, MapsErrnoClassesToCodes) {
  EXPECT_EQ(ErrnoToStatus(ENOENT, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(EACCES, "x").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoToStatus(EPERM, "x").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoToStatus(ENOMEM, "x").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EINVAL, "x").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoToStatus(ENOSYS, "x").code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ErrnoToStatus(EIO, "x").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ErrnoToStatus(EAGAIN, "x").code(), absl::StatusCode::kUnavailable);
}

TEST(ErrnoToStatusTest, MessageNamesContextReasonAndNumber) {
  EXPECT_THAT(ErrnoToStatus(ENOENT, "open /tmp/model.safetensors"),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr("open /tmp/model.safetensors: "),
                             HasSubstr("No such file or directory"),
                             HasSubstr("(errno 2)"))));
}

TEST(ErrnoToStatusTest, AcceptsNegatedIoUringResults) {
  EXPECT_THAT(
      ErrnoToStatus(-EPERM, "io_uring_setup"),
      StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("(errno 1)")));
}

TEST(ErrnoToStatusTest, StorageErrorsAreIoErrorsRecognisedAcrossGrpc) {
  // EUCLEAN (a corrupt filesystem) was UNKNOWN, and EIO indistinguishable
  // from a malformed file: both are now I/O errors, by code and marker.
  for (int e : {EIO, EUCLEAN, EBADMSG, EREMOTEIO, ESTALE}) {
    const absl::Status status = ErrnoToStatus(e, "read /m/x.safetensors");
    EXPECT_THAT(status,
                StatusIs(absl::StatusCode::kDataLoss,
                         AllOf(HasSubstr("read /m/x.safetensors: "),
                               HasSubstr("an I/O error of the storage"))))
        << e;
    EXPECT_TRUE(IsIoError(status)) << e;
    // Only the code and the message cross gRPC.
    EXPECT_TRUE(
        IsIoError(absl::Status(status.code(), std::string(status.message()))));
  }
  EXPECT_FALSE(IsIoError(absl::DataLossError("SHA-256 mismatch")));
  EXPECT_FALSE(IsIoError(ErrnoToStatus(ENOENT, "x")));
  EXPECT_FALSE(IsIoError(absl::OkStatus()));
}

TEST(ErrnoToStatusTest, UnknownErrnoIsUnknownWithNumber) {
  EXPECT_THAT(ErrnoToStatus(4000, "ctx"),
              StatusIs(absl::StatusCode::kUnknown, HasSubstr("errno 4000")));
}

}  // namespace
}  // namespace warmstart
