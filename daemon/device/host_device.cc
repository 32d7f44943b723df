#include "daemon/device/host_device.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/device/cgroup_memory.h"

namespace warmstart {
namespace {

constexpr uint64_t kHugePageBytes = uint64_t{2} << 20;
constexpr uint64_t kPageBytes = 4096;

uint64_t RoundUp(uint64_t value, uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Reserves the pages of a memfd mapping (fallocate, in ascending order, on
// one thread) and faults them in (on the others, behind the reservation)
// while the loader fills the allocation. A host load is bound by first-touch
// page faults, so taking them on other cores ahead of the copies hides most
// of their cost. Writers wait for the reservation to pass what they write
// (WaitReserved), so a shortage is a status for the loader, never the OOM
// killer or a SIGBUS on first touch.
class Prefaulter {
 public:
  // `threads` > 0 also faults the pages into this process's mapping, for
  // writers that write through it; 0 only reserves them.
  Prefaulter(int memfd, char* data, uint64_t size, unsigned threads,
             std::string label)
      : memfd_(memfd), data_(data), size_(size), label_(std::move(label)) {
    // The reservation is cheap (about 10 GB/s here); its thread then helps
    // fault pages in.
    threads_.emplace_back([this, threads] {
      Reserve();
      if (threads > 0) Populate();
    });
    for (unsigned i = 1; i < threads; ++i) {
      threads_.emplace_back([this] { Populate(); });
    }
  }
  ~Prefaulter() {
    {
      absl::MutexLock lock(&mutex_);
      stopping_ = true;
    }
    for (std::thread& thread : threads_) thread.join();
  }

  // Blocks until [0, end) is reserved; the reservation's error otherwise.
  absl::Status WaitReserved(uint64_t end) {
    absl::MutexLock lock(&mutex_);
    auto ready = [this, end]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return reserved_ >= end || !error_.ok() || stopping_;
    };
    mutex_.Await(absl::Condition(&ready));
    if (reserved_ >= end) return absl::OkStatus();
    if (!error_.ok()) return error_;
    return absl::CancelledError("host memory is being released");
  }

 private:
  static constexpr uint64_t kChunk = uint64_t{8} << 20;

  bool Stopping() {
    absl::MutexLock lock(&mutex_);
    return stopping_;
  }

  void Reserve() {
    for (uint64_t begin = 0; begin < size_ && !Stopping(); begin += kChunk) {
      const uint64_t length = std::min(kChunk, size_ - begin);
      int rc;
      do {
        rc = ::fallocate(memfd_, 0, static_cast<off_t>(begin),
                         static_cast<off_t>(length));
      } while (rc != 0 && errno == EINTR);
      absl::MutexLock lock(&mutex_);
      if (rc != 0) {
        absl::Status status = ErrnoToStatus(
            errno, absl::StrCat("reserve ", size_, " bytes of host memory for ",
                                label_));
        error_ = absl::ResourceExhaustedError(status.message());
        return;
      }
      reserved_ = begin + length;
    }
  }

  void Populate() {
    for (uint64_t begin = next_.fetch_add(kChunk); begin < size_ && !Stopping();
         begin = next_.fetch_add(kChunk)) {
      const uint64_t length = std::min(kChunk, size_ - begin);
      if (!WaitReserved(begin + length).ok()) return;
      if (::madvise(data_ + begin, length, MADV_POPULATE_WRITE) != 0) {
        // Kernels before 5.14 lack MADV_POPULATE_WRITE; the pages exist
        // already, so a read fault maps them as well.
        for (uint64_t offset = 0; offset < length; offset += kPageBytes) {
          (void)*static_cast<volatile char*>(data_ + begin + offset);
        }
      }
    }
  }

  const int memfd_;
  char* const data_;
  const uint64_t size_;
  const std::string label_;
  std::atomic<uint64_t> next_{0};
  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t reserved_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Status error_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::thread> threads_;
};

class HostAllocation : public DeviceAllocation {
 public:
  // `write_through_fd`: reserves the pages in the background and has
  // CopyFromHost write through the memfd (4 KiB shared memory); otherwise
  // `prefault_threads` > 0 reserves and faults the pages in.
  HostAllocation(ScopedFd memfd, char* data, uint64_t size,
                 unsigned prefault_threads, bool write_through_fd,
                 std::string label)
      : memfd_(std::move(memfd)),
        data_(data),
        size_(size),
        write_through_fd_(write_through_fd) {
    if (write_through_fd || prefault_threads > 0) {
      prefaulter_ = std::make_unique<Prefaulter>(
          memfd_.get(), data_, size_, write_through_fd ? 0 : prefault_threads,
          std::move(label));
    }
  }
  ~HostAllocation() override {
    prefaulter_.reset();
    if (data_ != nullptr) ::munmap(data_, size_);
  }

  uint64_t size() const override { return size_; }
  char* host_data() override { return data_; }

  absl::Status WaitWritable(uint64_t end) override {
    return prefaulter_ == nullptr ? absl::OkStatus()
                                  : prefaulter_->WaitReserved(end);
  }

  bool PrefersCopies() const override { return write_through_fd_; }
  int memfd() const { return memfd_.get(); }

  absl::Status Seal() override {
    // Everything was written, so everything was reserved.
    prefaulter_.reset();
    // F_SEAL_FUTURE_WRITE keeps this writable mapping but refuses new
    // writable ones and write(2), so clients can only map it read-only.
    if (::fcntl(memfd_.get(), F_ADD_SEALS,
                F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE |
                    F_SEAL_SEAL) != 0) {
      return ErrnoToStatus(errno, "seal host memory");
    }
    // The daemon's own mapping was the last writable one: a stray write in
    // the daemon must not change what every client maps as read-only.
    if (::mprotect(data_, size_, PROT_READ) != 0) {
      return ErrnoToStatus(errno, "make host memory read-only");
    }
    return absl::OkStatus();
  }

  ExportedMemory Export() const override {
    ExportedMemory exported;
    exported.kind = ExportedMemory::Kind::kHostMemfd;
    exported.fd = memfd_.get();
    exported.size = size_;
    return exported;
  }

 private:
  ScopedFd memfd_;
  char* data_;
  uint64_t size_;
  const bool write_through_fd_;
  std::unique_ptr<Prefaulter> prefaulter_;
};

// MemAvailable from `meminfo`, in bytes; 0 when unknown.
uint64_t MemAvailableBytes(const std::string& meminfo) {
  uint64_t available = 0;
  if (std::FILE* file = std::fopen(meminfo.c_str(), "re")) {
    char line[256];
    unsigned long long kib = 0;
    while (std::fgets(line, sizeof(line), file) != nullptr) {
      if (std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
    }
    std::fclose(file);
    available = static_cast<uint64_t>(kib) * 1024;
  }
  return available;
}

}  // namespace

DeviceMemory HostDevice::Memory() const {
  DeviceMemory memory;
  const uint64_t available = MemAvailableBytes(options_.meminfo);
  if (available != 0) {
    memory.free_bytes = available;
    memory.source = absl::StrCat("MemAvailable (", available, " bytes)");
  }
  absl::StatusOr<CgroupMemory> cgroup =
      ReadCgroupMemory(options_.cgroup_root, options_.self_cgroup);
  if (!cgroup.ok()) {
    // Without the figures the per-allocation checks and fallocate still
    // turn a shortage into an error; say once why the limit is unknown.
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      Logger("device")->warn("memory cgroup limits unknown: {}",
                             cgroup.status().message());
    }
    return memory;
  }
  memory.shared_bytes = cgroup->shmem;
  if (cgroup->limit != 0 &&
      (!memory.free_bytes.has_value() || cgroup->free() < *memory.free_bytes)) {
    memory.free_bytes = cgroup->free();
    memory.source =
        absl::StrCat("the memory cgroup limit ", cgroup->limit_file, " (",
                     cgroup->limit, " bytes, ", cgroup->usage, " used)");
  }
  return memory;
}

absl::StatusOr<std::unique_ptr<DeviceAllocation>> HostDevice::Allocate(
    uint64_t bytes, const std::string& label) {
  const std::string name = absl::StrCat("warmstart:", label);
  ScopedFd memfd;
  uint64_t size = RoundUp(std::max<uint64_t>(bytes, 1), kPageBytes);
  char* data = nullptr;
  if (options_.huge_pages) {
    const uint64_t huge_size = RoundUp(size, kHugePageBytes);
    memfd.reset(::memfd_create(name.c_str(),
                               MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB));
    if (memfd.valid() && ::ftruncate(memfd.get(), huge_size) == 0) {
      void* mapped = ::mmap(nullptr, huge_size, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_POPULATE, memfd.get(), 0);
      if (mapped != MAP_FAILED) {
        data = static_cast<char*>(mapped);
        size = huge_size;
      }
    }
    if (data == nullptr) {
      memfd.reset();
      static std::atomic<bool> warned{false};
      if (!warned.exchange(true)) {
        Logger("device")->warn(
            "no huge pages reserved (vm.nr_hugepages): host memory uses 4 KiB "
            "pages, which load more slowly");
      }
      if (options_.metrics != nullptr) {
        options_.metrics
            ->GetCounter("warmstart_host_hugepage_fallback_total",
                         "Host allocations that fell back to 4 KiB pages.")
            ->Add();
      }
    }
  }
  if (data == nullptr) return AllocateSmallPages(size, label);
  // Huge pages are populated by mmap (MAP_POPULATE): no prefault threads.
  return std::unique_ptr<DeviceAllocation>(
      new HostAllocation(std::move(memfd), data, size, 0,
                         /*write_through_fd=*/false, label));
}

absl::StatusOr<std::unique_ptr<DeviceAllocation>> HostDevice::AllocateFileImage(
    uint64_t bytes, const std::string& label) {
  // A memfd needs no page-multiple size: the last page is partly beyond
  // the end, and readers of the file see exactly `bytes`.
  return AllocateSmallPages(std::max<uint64_t>(bytes, 1), label);
}

absl::StatusOr<std::unique_ptr<DeviceAllocation>>
HostDevice::AllocateSmallPages(uint64_t size, const std::string& label) {
  const std::string name = absl::StrCat("warmstart:", label);
  // Shared memory has no limit of its own (and MemAvailable leaves out the
  // huge-page pool): check before reserving.
  if (const DeviceMemory memory = Memory();
      memory.free_bytes.has_value() && size > *memory.free_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("host memory for ", label, ": ", size, " bytes wanted, ",
                     *memory.free_bytes, " available under ", memory.source));
  }
  ScopedFd memfd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!memfd.valid()) return ErrnoToStatus(errno, "memfd_create " + name);
  if (::ftruncate(memfd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("size host memory for ", label,
                                             " to ", size, " bytes"));
  }
  void* mapped =
      ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
  if (mapped == MAP_FAILED) {
    return ErrnoToStatus(
        errno, absl::StrCat("map ", size, " bytes of host memory for ", label));
  }
  return std::unique_ptr<DeviceAllocation>(
      new HostAllocation(std::move(memfd), static_cast<char*>(mapped), size,
                         std::max(1u, options_.prefault_threads),
                         options_.write_through_fd, label));
}

void HostDevice::CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                              const char* source, uint64_t bytes,
                              std::function<void(absl::Status)> done) {
  if (absl::Status writable = destination.WaitWritable(offset + bytes);
      !writable.ok()) {
    done(std::move(writable));
    return;
  }
  auto* host = dynamic_cast<HostAllocation*>(&destination);
  if (host == nullptr || !host->PrefersCopies()) {
    std::memcpy(destination.host_data() + offset, source, bytes);
    done(absl::OkStatus());
    return;
  }
  // Writing through the memfd puts the bytes in its pages without mapping
  // them here: no page fault per 4 KiB and no zeroing of pages that are
  // overwritten whole, about twice the rate of a memcpy into fresh pages
  // of the mapping (2.45 vs 1.5 GB/s here).
  while (bytes > 0) {
    const ssize_t n =
        ::pwrite(host->memfd(), source, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status status = ErrnoToStatus(
          n < 0 ? errno : EIO,
          absl::StrCat("copy ", bytes, " bytes into host memory at ", offset));
      done(n < 0 && (errno == ENOSPC || errno == ENOMEM)
               ? absl::ResourceExhaustedError(status.message())
               : status);
      return;
    }
    source += n;
    offset += static_cast<uint64_t>(n);
    bytes -= static_cast<uint64_t>(n);
  }
  done(absl::OkStatus());
}

}  // namespace warmstart
