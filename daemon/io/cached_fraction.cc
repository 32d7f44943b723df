#include "daemon/io/cached_fraction.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"

namespace warmstart {
namespace {

// cachestat(2): the same number on every architecture (the unified syscall
// table since Linux 5.1); the C library may not name it yet.
constexpr long kCachestatSyscall = 451;

struct CachestatRange {
  uint64_t off;
  uint64_t len;
};
struct Cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

constexpr uint64_t kMincoreWindow = uint64_t{1} << 30;

// Cached pages of [0, size) by mincore, a window at a time so that a large
// file needs neither a large vector nor a large mapping at once.
absl::StatusOr<uint64_t> CachedPagesByMincore(int fd, uint64_t size,
                                              uint64_t page) {
  std::vector<unsigned char> resident;
  uint64_t cached = 0;
  for (uint64_t offset = 0; offset < size; offset += kMincoreWindow) {
    const size_t length =
        static_cast<size_t>(std::min(kMincoreWindow, size - offset));
    void* mapped = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd,
                          static_cast<off_t>(offset));
    if (mapped == MAP_FAILED) {
      return ErrnoToStatus(errno, "mmap (to count cached pages)");
    }
    resident.resize((length + page - 1) / page);
    const int rc = ::mincore(mapped, length, resident.data());
    const int error = errno;
    ::munmap(mapped, length);
    if (rc != 0) return ErrnoToStatus(error, "mincore");
    for (unsigned char bits : resident) cached += bits & 1;
  }
  return cached;
}

}  // namespace

static uint64_t PageBytes() {
  return static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

static double Fraction(uint64_t cached, uint64_t size) {
  const uint64_t pages = (size + PageBytes() - 1) / PageBytes();
  return static_cast<double>(std::min(cached, pages)) /
         static_cast<double>(pages);
}

absl::StatusOr<double> CachedFractionByMincore(int fd, uint64_t size) {
  if (size == 0) return 1.0;
  // Linux (5.2 on) answers mincore on a file mapping truthfully only to
  // the file's owner, a writer or CAP_FOWNER; anyone else is told every
  // page is resident, which would read a cold file as cached.
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, "fstat");
  if (st.st_uid != ::geteuid() && ::geteuid() != 0 &&
      ::faccessat(AT_FDCWD, absl::StrCat("/proc/self/fd/", fd).c_str(), W_OK,
                  AT_EACCESS) != 0) {
    return absl::PermissionDeniedError(
        "mincore reports every page of a file this process neither owns nor "
        "may write as resident");
  }
  absl::StatusOr<uint64_t> cached = CachedPagesByMincore(fd, size, PageBytes());
  if (!cached.ok()) return cached.status();
  return Fraction(*cached, size);
}

absl::StatusOr<double> CachedFraction(int fd, uint64_t size) {
  if (size == 0) return 1.0;
  CachestatRange range{0, size};
  Cachestat stat{};
  if (::syscall(kCachestatSyscall, fd, &range, &stat, 0) == 0) {
    return Fraction(stat.nr_cache, size);
  }
  // ENOSYS before Linux 6.5 (or a seccomp filter that refuses it).
  return CachedFractionByMincore(fd, size);
}

}  // namespace warmstart
