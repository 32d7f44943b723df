#include "daemon/registry/fingerprint.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"

namespace warmstart {
namespace {

absl::StatusOr<FileFingerprint> FingerprintFile(const std::string& path,
                                                const FileOpener& opener) {
  WS_ASSIGN_OR_RETURN(ScopedFd fd, opener.Open(path, O_RDONLY));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoToStatus(errno, path);
  FileFingerprint print;
  print.path = path;
  print.device = st.st_dev;
  print.inode = st.st_ino;
  print.size = static_cast<uint64_t>(st.st_size);
  print.mtime_ns =
      int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  print.ctime_ns =
      int64_t{st.st_ctim.tv_sec} * 1'000'000'000 + st.st_ctim.tv_nsec;

  std::string head(std::min<uint64_t>(print.size, kHeaderHashBytes), '\0');
  size_t done = 0;
  while (done < head.size()) {
    const ssize_t n =
        ::pread(fd.get(), head.data() + done, head.size() - done, done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, path);
    if (n == 0) break;  // Shrunk since fstat: the hash will differ anyway.
    done += static_cast<size_t>(n);
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(head.data()), done, digest);
  print.header_sha256 = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
  return print;
}

}  // namespace

bool FileFingerprint::operator==(const FileFingerprint& other) const {
  return path == other.path && device == other.device && inode == other.inode &&
         size == other.size && mtime_ns == other.mtime_ns &&
         ctime_ns == other.ctime_ns && header_sha256 == other.header_sha256 &&
         etag == other.etag;
}

absl::StatusOr<Fingerprint> FingerprintFiles(const Manifest& manifest,
                                             const FileOpener& opener) {
  Fingerprint prints;
  for (const FileManifest& file : manifest.files) {
    if (IsRemoteUrl(file.path)) {
      FileFingerprint print;
      print.path = file.path;
      print.size = file.file_size;
      print.etag = file.version;
      prints.push_back(std::move(print));
      continue;
    }
    WS_ASSIGN_OR_RETURN(FileFingerprint print,
                        FingerprintFile(file.path, opener));
    prints.push_back(std::move(print));
  }
  return prints;
}

std::string DescribeChange(const Fingerprint& before, const Fingerprint& now) {
  if (before.size() != now.size()) {
    return absl::StrCat("the checkpoint had ", before.size(),
                        " files and now has ", now.size());
  }
  for (size_t i = 0; i < before.size(); ++i) {
    const FileFingerprint& a = before[i];
    const FileFingerprint& b = now[i];
    if (a.path != b.path) {
      return absl::StrCat("file ", i, " was ", a.path, " and is now ", b.path);
    }
    if (a.device != b.device || a.inode != b.inode) {
      return absl::StrCat(a.path, " was replaced by another file");
    }
    if (a.size != b.size) {
      return absl::StrCat(a.path, ": size ", a.size, " -> ", b.size);
    }
    if (a.etag != b.etag) {
      return absl::StrCat(a.path, ": ETag ", a.etag, " -> ", b.etag,
                          " (the object was replaced)");
    }
    if (a.mtime_ns != b.mtime_ns) {
      return absl::StrCat(a.path, " was modified since it was loaded");
    }
    if (a.header_sha256 != b.header_sha256) {
      return absl::StrCat(a.path, ": its header changed");
    }
    if (a.ctime_ns != b.ctime_ns) {
      return absl::StrCat(a.path,
                          " was changed since it was loaded (its ctime "
                          "moved; its mtime may have been set back)");
    }
  }
  return "";
}

}  // namespace warmstart
