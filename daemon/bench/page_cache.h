// Page-cache control for cold and warm benchmarks.
#ifndef WARMSTART_DAEMON_BENCH_PAGE_CACHE_H_
#define WARMSTART_DAEMON_BENCH_PAGE_CACHE_H_

#include <string>

#include "absl/status/statusor.h"

namespace warmstart {

// Drops the file's pages from the page cache (fdatasync, then
// posix_fadvise(POSIX_FADV_DONTNEED)).
absl::Status EvictFromPageCache(const std::string& path);

// The fraction (0 to 1) of the file's pages resident in the page cache
// (CachedFraction). An empty file counts as resident.
absl::StatusOr<double> ResidentFraction(const std::string& path);

// Reads the whole file through the page cache so it is resident.
absl::Status WarmPageCache(const std::string& path);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BENCH_PAGE_CACHE_H_
