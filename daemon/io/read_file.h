// ReadFile: a weight file opened for the read engines, with or without
// O_DIRECT, and the alignment arithmetic O_DIRECT reads need.
//
// Thread safety: a ReadFile is not synchronised; its descriptor may be read
// from many threads (the engines do) while the ReadFile outlives them.
#ifndef WARMSTART_DAEMON_IO_READ_FILE_H_
#define WARMSTART_DAEMON_IO_READ_FILE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/scoped_fd.h"
#include "daemon/base/file_opener.h"
#include "daemon/base/metrics.h"

namespace warmstart {

// O_DIRECT reads need file offsets, lengths and memory addresses aligned to
// the device's logical block; 4096 covers every block size in use.
constexpr uint64_t kDirectAlignment = 4096;

// A file open for reading. Move-only: owns its descriptor.
struct ReadFile {
  ScopedFd fd;
  std::string path;
  // The size when the file was opened.
  uint64_t size = 0;
  // Whether `fd` was opened with O_DIRECT (reads must then be aligned to
  // kDirectAlignment in offset, length and destination address).
  bool direct = false;
  // Whether O_DIRECT was wanted but the file is read through the page cache
  // because the cache held most of it (OpenFileForLoad).
  bool cached = false;
};

// Opens the regular file at `path` read-only through `opener` (not kept),
// with O_DIRECT when `want_direct`. A filesystem that refuses O_DIRECT
// (EINVAL on open) gets a buffered descriptor instead (direct == false):
// that degraded mode logs one warning per process and counts in
// warmstart_io_direct_refused_total of `metrics` (not kept; null: not
// counted).
// Errors: NotFound, PermissionDenied, ... from errno (naming the path), and
// the opener's refusals (PermissionDenied for a path outside its roots);
// InvalidArgument when `path` is not a regular file.
absl::StatusOr<ReadFile> OpenReadFile(
    const std::string& path, bool want_direct,
    const FileOpener& opener = PlainFileOpener(), Metrics* metrics = nullptr);

// Files at least this much in the page cache are read through it.
inline constexpr double kMostlyCached = 0.5;

// As OpenReadFile, for a load: with `want_direct`, a file whose pages are at
// least kMostlyCached in the page cache (CachedFraction) is read buffered
// (cached == true), at memory speed rather than at the disk's; the others
// O_DIRECT. Each file read through the cache counts in
// warmstart_io_cached_files_total of `metrics` (null: not counted). A
// failure to count the cached pages only means O_DIRECT.
absl::StatusOr<ReadFile> OpenFileForLoad(
    const std::string& path, bool want_direct,
    const FileOpener& opener = PlainFileOpener(), Metrics* metrics = nullptr);

// The smallest kDirectAlignment-aligned range that covers [offset,
// offset + length): read `aligned_length` bytes at `aligned_offset`, and the
// wanted bytes start `lead` bytes into the result.
struct AlignedRange {
  uint64_t aligned_offset;
  uint64_t aligned_length;
  uint64_t lead;
};
// REQUIRES: offset + length + kDirectAlignment does not overflow.
AlignedRange AlignForDirect(uint64_t offset, uint64_t length);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_IO_READ_FILE_H_
