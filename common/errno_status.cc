#include "common/errno_status.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace warmstart {
namespace {

constexpr absl::string_view kIoErrorMarker = "; an I/O error of the storage)";

bool IsStorageError(int e) {
  switch (e) {
    case EIO:
    case EUCLEAN:  // A corrupt filesystem structure (ext4, btrfs, xfs).
    case EBADMSG:  // A checksum failure some filesystems report.
    case EREMOTEIO:
    case ESTALE:
    case ENOMEDIUM:
    case EMEDIUMTYPE:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool IsIoError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kDataLoss &&
         absl::StrContains(status.message(), kIoErrorMarker);
}

absl::Status ErrnoToStatus(int error_number, absl::string_view context) {
  const int e = std::abs(error_number);
  // strerror_r has two incompatible signatures; strerrordesc_np (glibc >= 2.32)
  // is thread-safe and returns null for unknown values.
  const char* description = strerrordesc_np(e);
  if (IsStorageError(e)) {
    return absl::DataLossError(absl::StrCat(
        context, ": ", description != nullptr ? description : "unknown error",
        " (errno ", e, kIoErrorMarker));
  }
  std::string message = absl::StrCat(
      context, ": ", description != nullptr ? description : "unknown error",
      " (errno ", e, ")");
  switch (e) {
    case ENOENT:
    case ENXIO:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EINVAL:
    case ENAMETOOLONG:
    case ELOOP:
    case EISDIR:
    case ENOTDIR:
    case EXDEV:
      return absl::InvalidArgumentError(message);
    case EAGAIN:
    case EBUSY:
    case EINTR:
      return absl::UnavailableError(message);
    case ETIMEDOUT:
      return absl::DeadlineExceededError(message);
    case ENOSYS:
    case EOPNOTSUPP:
      return absl::UnimplementedError(message);
    default:
      return absl::UnknownError(message);
  }
}

}  // namespace warmstart
