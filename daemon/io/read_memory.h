// ReadMemory: anonymous memory that O_DIRECT reads land in (the staging
// pool, the benchmark's baselines), mapped so that the block layer can make
// large requests of it.
//
// An O_DIRECT read becomes block requests of at most max_segments (often
// 254) physically contiguous runs each. In 4 KiB pages that caps a request
// near 1 MiB; in 2 MiB pages a request reaches the device's max_sectors_kb
// (4 MiB on a virtio disk). On this project's test machine (a virtio disk),
// 910 KiB requests kept about one request in flight and read 1.3-1.5 GB/s;
// 4 MiB requests kept up to 50 in flight and read 2-3 GB/s. So the memory
// is mapped at a 2 MiB boundary and advised for transparent huge pages
// (MADV_HUGEPAGE, honoured when /sys/kernel/mm/transparent_hugepage/enabled
// is `always` or `madvise`); elsewhere it is 4 KiB pages, as plain memory.
//
// Thread safety: the owner is not thread-safe; the memory itself is plain
// memory.
#ifndef WARMSTART_DAEMON_IO_READ_MEMORY_H_
#define WARMSTART_DAEMON_IO_READ_MEMORY_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"

namespace warmstart {

// Owns one anonymous private mapping; move-only; unmapped on destruction.
class ReadMemory {
 public:
  static constexpr uint64_t kHugePageBytes = uint64_t{2} << 20;

  // Maps `bytes` (> 0; rounded up to whole 4 KiB pages) of address space
  // at a 2 MiB boundary, advised for huge pages; touches nothing, so
  // nothing is resident yet (MAP_NORESERVE).
  // Errors: ResourceExhausted naming the size when mmap fails.
  static absl::StatusOr<ReadMemory> Map(uint64_t bytes);

  ReadMemory() = default;
  ReadMemory(ReadMemory&& other) noexcept;
  ReadMemory& operator=(ReadMemory&& other) noexcept;
  ReadMemory(const ReadMemory&) = delete;
  ReadMemory& operator=(const ReadMemory&) = delete;
  ~ReadMemory();

  char* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Whether the kernel took the huge-page advice (false on kernels built
  // without THP; the memory is then 4 KiB pages).
  bool advised() const { return advised_; }

  // Faults [offset, offset + length) in for writing (MADV_POPULATE_WRITE,
  // Linux 5.14; a write per page before), so reads into it take no fault.
  // REQUIRES: the range lies inside the memory.
  void Populate(uint64_t offset, uint64_t length);

  // Bytes of the mapping backed by transparent huge pages now, from
  // /proc/self/smaps (AnonHugePages); nullopt when that cannot be read.
  std::optional<uint64_t> HugePageBytes() const;

 private:
  ReadMemory(char* data, uint64_t size, bool advised)
      : data_(data), size_(size), advised_(advised) {}

  char* data_ = nullptr;
  uint64_t size_ = 0;
  bool advised_ = false;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_IO_READ_MEMORY_H_
