#include "daemon/bench/page_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "daemon/io/cached_fraction.h"

namespace warmstart {
namespace {

absl::StatusOr<ScopedFd> OpenForRead(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, "open " + path);
  return fd;
}

}  // namespace

absl::Status EvictFromPageCache(const std::string& path) {
  absl::StatusOr<ScopedFd> fd = OpenForRead(path);
  if (!fd.ok()) return fd.status();
  // Dirty pages cannot be dropped: write them back first.
  ::fdatasync(fd->get());
  const int rc = ::posix_fadvise(fd->get(), 0, 0, POSIX_FADV_DONTNEED);
  if (rc != 0) return ErrnoToStatus(rc, "posix_fadvise DONTNEED " + path);
  return absl::OkStatus();
}

absl::StatusOr<double> ResidentFraction(const std::string& path) {
  absl::StatusOr<ScopedFd> fd = OpenForRead(path);
  if (!fd.ok()) return fd.status();
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return ErrnoToStatus(errno, "stat " + path);
  absl::StatusOr<double> cached =
      CachedFraction(fd->get(), static_cast<uint64_t>(st.st_size));
  if (!cached.ok()) {
    return absl::Status(cached.status().code(),
                        absl::StrCat(path, ": ", cached.status().message()));
  }
  return *cached;
}

absl::Status WarmPageCache(const std::string& path) {
  absl::StatusOr<ScopedFd> fd = OpenForRead(path);
  if (!fd.ok()) return fd.status();
  std::vector<char> buffer(8 << 20);
  while (true) {
    const ssize_t n = ::read(fd->get(), buffer.data(), buffer.size());
    if (n == 0) return absl::OkStatus();
    if (n < 0 && errno != EINTR) return ErrnoToStatus(errno, "read " + path);
  }
}

}  // namespace warmstart
