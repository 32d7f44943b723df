// Fingerprint: what identifies the files a model was loaded from, so that
// loading the same name again can tell "the same files" (join the load)
// from "other files" or "the same path, changed on disk" (refuse).
//
// Plain values and pure functions of the file system; thread-safe.
#ifndef WARMSTART_DAEMON_REGISTRY_FINGERPRINT_H_
#define WARMSTART_DAEMON_REGISTRY_FINGERPRINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/base/file_opener.h"
#include "daemon/formats/manifest.h"
#include "daemon/loader/load_job.h"

namespace warmstart {

// Bytes at the start of each file that the header hash covers: every
// safetensors and tensorizer header we have seen, and the metadata of most
// GGUF files, fit; a file rewritten in place with the same size and mtime
// almost always differs there.
inline constexpr uint64_t kHeaderHashBytes = uint64_t{1} << 20;

struct FileFingerprint {
  std::string path;
  uint64_t device = 0;
  uint64_t inode = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  // The inode's change time: a rewrite past the first MiB with its mtime
  // restored (touch -d, rsync -t) changes ctime, which no one can set back.
  int64_t ctime_ns = 0;
  std::string header_sha256;  // Hex, of the first kHeaderHashBytes.
  // A remote file (a URL) is identified by its URL, size and ETag alone
  // (device, inode, mtime and header hash stay empty): the object store
  // gives a new ETag to every new version.
  std::string etag;

  bool operator==(const FileFingerprint& other) const;
  bool operator!=(const FileFingerprint& other) const {
    return !(*this == other);
  }
};

using Fingerprint = std::vector<FileFingerprint>;

// Fingerprints every file of `manifest`, opened through `opener`; a remote
// file's fingerprint is its URL, size and the version (ETag) the manifest
// recorded when it was parsed, with no further request. Errors:
// those of the opener (NotFound, PermissionDenied for a path outside the
// model roots, ...) and of reading, naming the file.
absl::StatusOr<Fingerprint> FingerprintFiles(const Manifest& manifest,
                                             const FileOpener& opener);

// Fingerprints the open file `fd` (which may be O_DIRECT), named `path` in
// messages. Errors: errno's, naming `path`.
absl::StatusOr<FileFingerprint> FingerprintOpenFile(int fd,
                                                    const std::string& path);

// Fingerprints every file of `plan`'s manifest through the descriptors the
// plan opened (no path is opened again), remote files as FingerprintFiles
// does. REQUIRES: plan.OpenFiles has succeeded.
absl::StatusOr<Fingerprint> FingerprintPlan(const LoadPlan& plan);

// Why `now` differs from `before`, for error messages ("<path>: size 10 ->
// 12"); empty when they are equal.
std::string DescribeChange(const Fingerprint& before, const Fingerprint& now);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_REGISTRY_FINGERPRINT_H_
