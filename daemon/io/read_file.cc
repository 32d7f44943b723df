#include "daemon/io/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/io/cached_fraction.h"

namespace warmstart {
namespace {

void NoteDirectRefused(const std::string& path, Metrics* metrics) {
  if (metrics != nullptr) {
    metrics
        ->GetCounter("warmstart_io_direct_refused_total",
                     "Files opened buffered because their filesystem refused "
                     "O_DIRECT.")
        ->Add();
  }
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    Logger("io")->warn(
        "the filesystem of {} refuses O_DIRECT; reading such files through "
        "the page cache (warned once; see "
        "warmstart_io_direct_refused_total)",
        path);
  }
}

}  // namespace

absl::StatusOr<ReadFile> OpenReadFile(const std::string& path, bool want_direct,
                                      const FileOpener& opener,
                                      Metrics* metrics) {
  absl::StatusOr<ScopedFd> fd =
      opener.Open(path, want_direct ? O_RDONLY | O_DIRECT : O_RDONLY);
  // open() answers EINVAL for O_DIRECT on filesystems without direct I/O
  // (tmpfs before Linux 6.6, procfs, some FUSE and network filesystems); the
  // openers report it as InvalidArgument. Other errors of that class
  // (ENOTDIR, ENAMETOOLONG, ...) come back again from the buffered open.
  const bool refused = want_direct && absl::IsInvalidArgument(fd.status());
  if (refused) fd = opener.Open(path, O_RDONLY);
  if (!fd.ok()) return fd.status();
  ReadFile file;
  file.fd = *std::move(fd);
  file.path = path;
  file.direct = want_direct && !refused;
  struct stat st;
  if (::fstat(file.fd.get(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("fstat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  file.size = static_cast<uint64_t>(st.st_size);
  // Counted only now, so a path that is no file at all is not reported as a
  // filesystem without direct I/O.
  if (refused) NoteDirectRefused(path, metrics);
  return file;
}

absl::StatusOr<ReadFile> OpenFileForLoad(const std::string& path,
                                         bool want_direct,
                                         const FileOpener& opener,
                                         Metrics* metrics) {
  if (!want_direct) return OpenReadFile(path, false, opener, metrics);
  // Opened buffered first to look at the cache through the descriptor that
  // will read (the path may be replaced meanwhile); O_DIRECT is then set on
  // that same descriptor, so the file checked is the file read.
  WS_ASSIGN_OR_RETURN(ReadFile file,
                      OpenReadFile(path, false, opener, metrics));
  absl::StatusOr<double> cached = CachedFraction(file.fd.get(), file.size);
  if (cached.ok() && *cached >= kMostlyCached) {
    file.cached = true;
    if (metrics != nullptr) {
      metrics
          ->GetCounter("warmstart_io_cached_files_total",
                       "Files read through the page cache instead of with "
                       "O_DIRECT because the cache held most of them.")
          ->Add();
    }
    return file;
  }
  const int flags = ::fcntl(file.fd.get(), F_GETFL);
  if (flags >= 0 && ::fcntl(file.fd.get(), F_SETFL, flags | O_DIRECT) == 0) {
    file.direct = true;
  } else if (errno == EINVAL) {
    NoteDirectRefused(path, metrics);
  } else {
    return ErrnoToStatus(errno, absl::StrCat("set O_DIRECT on ", path));
  }
  return file;
}

AlignedRange AlignForDirect(uint64_t offset, uint64_t length) {
  constexpr uint64_t kMask = kDirectAlignment - 1;
  const uint64_t begin = offset & ~kMask;
  const uint64_t end = (offset + length + kMask) & ~kMask;
  return AlignedRange{begin, end - begin, offset - begin};
}

}  // namespace warmstart
