#include "daemon/registry/fingerprint.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"

namespace warmstart {
namespace {

// O_DIRECT alignment (kDirectAlignment) for the header reads.
constexpr uint64_t kHashReadAlignment = 4096;

// A remote file: its URL, size and the version (ETag) recorded when it was
// parsed, with no further request.
FileFingerprint RemoteFingerprint(const FileManifest& file) {
  FileFingerprint print;
  print.path = file.path;
  print.size = file.file_size;
  print.etag = file.version;
  return print;
}

absl::StatusOr<FileFingerprint> FingerprintFile(const std::string& path,
                                                const FileOpener& opener) {
  WS_ASSIGN_OR_RETURN(ScopedFd fd, opener.Open(path, O_RDONLY));
  return FingerprintOpenFile(fd.get(), path);
}

}  // namespace

absl::StatusOr<FileFingerprint> FingerprintOpenFile(int fd,
                                                    const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, path);
  FileFingerprint print;
  print.path = path;
  print.device = st.st_dev;
  print.inode = st.st_ino;
  print.size = static_cast<uint64_t>(st.st_size);
  print.mtime_ns =
      int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  print.ctime_ns =
      int64_t{st.st_ctim.tv_sec} * 1'000'000'000 + st.st_ctim.tv_nsec;

  // The descriptor may be O_DIRECT (the loader's): the buffer, offsets and
  // lengths are kept aligned, and a short read means the end of the file.
  const uint64_t head = std::min<uint64_t>(print.size, kHeaderHashBytes);
  const uint64_t want =
      (head + kHashReadAlignment - 1) / kHashReadAlignment * kHashReadAlignment;
  std::unique_ptr<char, decltype(&std::free)> buffer(
      static_cast<char*>(
          std::aligned_alloc(kHashReadAlignment, std::max<uint64_t>(want, 1))),
      &std::free);
  if (buffer == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": no memory to hash its header"));
  }
  uint64_t done = 0;
  while (done < want) {
    const ssize_t n = ::pread(fd, buffer.get() + done, want - done, done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, path);
    done += static_cast<uint64_t>(n);
    // Short: the end of the file (it may have shrunk since fstat: the hash
    // will differ anyway).
    if (n == 0 || done % kHashReadAlignment != 0) break;
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(buffer.get()),
         std::min(done, head), digest);
  print.header_sha256 = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
  return print;
}

absl::StatusOr<Fingerprint> FingerprintPlan(const LoadPlan& plan) {
  const Manifest& manifest = plan.manifest();
  Fingerprint prints;
  for (size_t i = 0; i < manifest.files.size(); ++i) {
    const FileManifest& file = manifest.files[i];
    if (IsRemoteUrl(file.path)) {
      prints.push_back(RemoteFingerprint(file));
      continue;
    }
    const ReadFile* opened = plan.local_file(i);
    if (opened == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(file.path, ": fingerprinted before it was opened"));
    }
    WS_ASSIGN_OR_RETURN(FileFingerprint print,
                        FingerprintOpenFile(opened->fd.get(), file.path));
    prints.push_back(std::move(print));
  }
  return prints;
}

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
      prints.push_back(RemoteFingerprint(file));
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
