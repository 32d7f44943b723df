#include "daemon/formats/byte_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/status_macros.h"

namespace warmstart {
namespace {

absl::Status RangeError(const std::string& name, uint64_t offset,
                        uint64_t length, uint64_t size) {
  return absl::OutOfRangeError(
      absl::StrCat(name, ": at byte ", offset, ": reading ", length,
                   " bytes runs past the end of the file (", size, " bytes)"));
}

bool RangeFits(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FileByteSource>> FileByteSource::Open(
    const std::string& path, const FileOpener& opener) {
  WS_ASSIGN_OR_RETURN(ScopedFd fd, opener.Open(path, O_RDONLY));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  return std::unique_ptr<FileByteSource>(new FileByteSource(
      path, std::move(fd), static_cast<uint64_t>(st.st_size)));
}

absl::Status FileByteSource::ReadAt(uint64_t offset, uint64_t length,
                                    char* out) const {
  if (!RangeFits(offset, length, size_)) {
    return RangeError(path_, offset, length, size_);
  }
  uint64_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd_.get(), out + done, length - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(
          errno, absl::StrCat(path_, ": read at byte ", offset + done));
    }
    if (n == 0) {
      // The file shrank after it was opened.
      return absl::DataLossError(absl::StrCat(
          path_, ": at byte ", offset + done,
          ": unexpected end of file (was the file truncated while reading?)"));
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status MemoryByteSource::ReadAt(uint64_t offset, uint64_t length,
                                      char* out) const {
  if (!RangeFits(offset, length, data_.size())) {
    return RangeError(name_, offset, length, data_.size());
  }
  if (length > 0) std::memcpy(out, data_.data() + offset, length);
  return absl::OkStatus();
}

}  // namespace warmstart

namespace warmstart {

bool IsRemoteUrl(absl::string_view path) {
  return absl::StartsWith(path, "http://") ||
         absl::StartsWith(path, "https://") || absl::StartsWith(path, "s3://");
}

}  // namespace warmstart
