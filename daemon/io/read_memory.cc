#include "daemon/io/read_memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older C libraries lack it.
#endif

namespace warmstart {
namespace {

constexpr uint64_t kPageBytes = 4096;

}  // namespace

absl::StatusOr<ReadMemory> ReadMemory::Map(uint64_t bytes) {
  // Whole pages, so that the trimming munmaps below are page-aligned.
  bytes = (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
  // Over-map by one huge page and trim, so the start is on a 2 MiB
  // boundary (a huge page can only back an aligned 2 MiB of address space).
  const uint64_t padded = bytes + kHugePageBytes;
  void* mapped = ::mmap(nullptr, padded, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapped == MAP_FAILED) {
    absl::Status status =
        ErrnoToStatus(errno, absl::StrCat("map ", bytes, " bytes for reads"));
    return absl::ResourceExhaustedError(status.message());
  }
  char* const start = static_cast<char*>(mapped);
  const uint64_t misalignment =
      reinterpret_cast<uintptr_t>(start) % kHugePageBytes;
  char* const data =
      start + (misalignment == 0 ? 0 : kHugePageBytes - misalignment);
  if (data > start) ::munmap(start, static_cast<size_t>(data - start));
  char* const end = start + padded;
  if (end > data + bytes) {
    ::munmap(data + bytes, static_cast<size_t>(end - (data + bytes)));
  }
  const bool advised = ::madvise(data, bytes, MADV_HUGEPAGE) == 0;
  return ReadMemory(data, bytes, advised);
}

ReadMemory::ReadMemory(ReadMemory&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      advised_(std::exchange(other.advised_, false)) {}

ReadMemory& ReadMemory::operator=(ReadMemory&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    advised_ = std::exchange(other.advised_, false);
  }
  return *this;
}

ReadMemory::~ReadMemory() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

void ReadMemory::Populate(uint64_t offset, uint64_t length) {
  char* const begin = data_ + offset;
  if (::madvise(begin, length, MADV_POPULATE_WRITE) != 0) {
    for (uint64_t at = 0; at < length; at += kPageBytes) begin[at] = 0;
  }
}

std::optional<uint64_t> ReadMemory::HugePageBytes() const {
  std::FILE* smaps = std::fopen("/proc/self/smaps", "re");
  if (smaps == nullptr) return std::nullopt;
  // The mapping's own section: from its "start-end" header line to the
  // next header. The kernel may have merged it with a neighbour, so the
  // section that contains `data_` is the one read.
  const uintptr_t address = reinterpret_cast<uintptr_t>(data_);
  std::optional<uint64_t> huge;
  bool inside = false;
  char line[512];
  while (std::fgets(line, sizeof(line), smaps) != nullptr) {
    uintptr_t start = 0;
    uintptr_t end = 0;
    // Only a header line starts "start-end" in hex (field names such as
    // "AnonHugePages:" stop the scan at their second character).
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR, &start, &end) == 2) {
      inside = start <= address && address < end;
      continue;
    }
    unsigned long long kib = 0;
    if (inside && std::sscanf(line, "AnonHugePages: %llu kB", &kib) == 1) {
      huge = static_cast<uint64_t>(kib) * 1024;
      break;
    }
  }
  std::fclose(smaps);
  return huge;
}

}  // namespace warmstart
