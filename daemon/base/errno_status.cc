#include "daemon/base/errno_status.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace warmstart {

absl::Status ErrnoToStatus(int error_number, absl::string_view context) {
  const int e = std::abs(error_number);
  // strerror_r has two incompatible signatures; strerrordesc_np (glibc >= 2.32)
  // is thread-safe and returns null for unknown values.
  const char* description = strerrordesc_np(e);
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
    case EIO:
      return absl::DataLossError(message);
    default:
      return absl::UnknownError(message);
  }
}

}  // namespace warmstart
