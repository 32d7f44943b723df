// How much of a file the page cache holds: the loader reads a file that is
// mostly cached through the cache (memory speed) instead of O_DIRECT from
// the disk, and the benchmark checks that cold runs are cold.
#ifndef WARMSTART_DAEMON_IO_CACHED_FRACTION_H_
#define WARMSTART_DAEMON_IO_CACHED_FRACTION_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace warmstart {

// The fraction (0 to 1) of the first `size` bytes of the file open as `fd`
// whose pages are in the page cache; 1 for an empty file. Uses cachestat(2)
// (Linux 6.5) and, where that is missing, mincore(2) over read-only
// mappings of at most 1 GiB at a time. Touches no page of the file. Errors:
// those of mmap and mincore (naming the call); PermissionDenied where only
// mincore is left and this process neither owns the file nor may write it
// (the kernel then reports every page as resident).
absl::StatusOr<double> CachedFraction(int fd, uint64_t size);

// CachedFraction's fallback, by mincore(2) alone (for kernels before 6.5);
// exposed so that it is tested where cachestat exists.
absl::StatusOr<double> CachedFractionByMincore(int fd, uint64_t size);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_IO_CACHED_FRACTION_H_
