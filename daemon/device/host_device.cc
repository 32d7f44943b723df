#include "daemon/device/host_device.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/device/cgroup_memory.h"
#include "daemon/device/copy_workers.h"

namespace warmstart {
namespace {

constexpr uint64_t kHugePageBytes = uint64_t{2} << 20;
constexpr uint64_t kPageBytes = 4096;
// Copies below this run on the caller's thread (HostDevice::CopyFromHost).
constexpr uint64_t kSmallestQueuedCopy = uint64_t{256} << 10;

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
  // writers that write through it; 0 only reserves them. `by_faulting`
  // reserves by faulting the pages in through the mapping (in ascending
  // order, MADV_POPULATE_WRITE) instead of fallocate: for an advised
  // mapping, whose faults get huge pages where fallocate would allocate
  // 4 KiB ones (the memfd's own setting may not allow them).
  Prefaulter(int memfd, char* data, uint64_t size, unsigned threads,
             bool by_faulting, std::string label)
      : memfd_(memfd),
        data_(data),
        size_(size),
        by_faulting_(by_faulting),
        label_(std::move(label)) {
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
    // Past the end nothing would ever be reserved: a caller's bug, not a
    // wait (which would hold a copy thread, and every Synchronize, for
    // good).
    if (end > size_) {
      return absl::OutOfRangeError(absl::StrCat(
          "write up to byte ", end, " of host memory of ", size_, " bytes"));
    }
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
      int rc = -1;
      if (by_faulting_) {
        do {
          rc = ::madvise(data_ + begin, length, MADV_POPULATE_WRITE);
        } while (rc != 0 && errno == EINTR);
        // Kernels before 5.14 lack it: reserve with fallocate (4 KiB
        // pages there, unless the setting gives writes huge ones).
        if (rc != 0 && errno == EINVAL) by_faulting_ = false;
      }
      if (!by_faulting_) {
        do {
          rc = ::fallocate(memfd_, 0, static_cast<off_t>(begin),
                           static_cast<off_t>(length));
        } while (rc != 0 && errno == EINTR);
      }
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
  bool by_faulting_;  // Only the reserving thread reads and writes it.
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
  // How the pages are reserved and written.
  enum class Fill {
    // Reserved by fallocate in the background; CopyFromHost writes
    // through the memfd (4 KiB pages).
    kThroughMemfd,
    // Reserved by fallocate and faulted in by `prefault_threads` in the
    // background; written through the mapping (4 KiB shmem without
    // write_through_fd, and hugetlb, whose mmap reserved the pages already).
    kThroughMapping,
    // A MADV_HUGEPAGE mapping, reserved by faulting it in, in order, on
    // one background thread (shmem transparent huge pages); written
    // through the mapping.
    kThroughAdvisedMapping,
  };

  HostAllocation(ScopedFd memfd, char* data, uint64_t size, Fill fill,
                 unsigned prefault_threads, std::string label)
      : memfd_(std::move(memfd)),
        data_(data),
        size_(size),
        write_through_fd_(fill == Fill::kThroughMemfd) {
    switch (fill) {
      case Fill::kThroughMemfd:
        prefaulter_ = std::make_unique<Prefaulter>(memfd_.get(), data_, size_,
                                                   0, false, std::move(label));
        break;
      case Fill::kThroughMapping:
        prefaulter_ = std::make_unique<Prefaulter>(memfd_.get(), data_, size_,
                                                   prefault_threads, false,
                                                   std::move(label));
        break;
      case Fill::kThroughAdvisedMapping:
        prefaulter_ = std::make_unique<Prefaulter>(memfd_.get(), data_, size_,
                                                   0, true, std::move(label));
        break;
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
    // Pages nothing wrote (padding, meta tensors, a model's zero tail) are
    // reserved too before the reservation stops: otherwise a client's read
    // would allocate them, charged to its own cgroup (which, for hugetlb
    // pages a pod did not request, is a SIGBUS).
    if (prefaulter_ != nullptr) {
      absl::Status reserved = prefaulter_->WaitReserved(size_);
      prefaulter_.reset();
      if (!reserved.ok()) return reserved;
    }
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

// The number after `format` (a scanf format such as "MemAvailable: %llu
// kB") in `meminfo`; 0 when absent or unreadable.
uint64_t MeminfoValue(const std::string& meminfo, const char* format) {
  unsigned long long value = 0;
  if (std::FILE* file = std::fopen(meminfo.c_str(), "re")) {
    char line[256];
    while (std::fgets(line, sizeof(line), file) != nullptr) {
      if (std::sscanf(line, format, &value) == 1) break;
    }
    std::fclose(file);
  }
  return static_cast<uint64_t>(value);
}

// MemAvailable from `meminfo`, in bytes; 0 when unknown.
uint64_t MemAvailableBytes(const std::string& meminfo) {
  return MeminfoValue(meminfo, "MemAvailable: %llu kB") * 1024;
}

// Null `metrics`: not counted.
void CountAllocation(Metrics* metrics, HostPageKind kind) {
  if (metrics == nullptr) return;
  metrics
      ->GetCounterFamily("warmstart_host_allocations_total",
                         "Host arenas allocated, by the pages they got.",
                         {"pages"})
      ->WithLabels({HostPageKindName(kind)})
      ->Add();
}

}  // namespace

const char* HostPageKindName(HostPageKind kind) {
  switch (kind) {
    case HostPageKind::kHugetlb:
      return "hugetlb";
    case HostPageKind::kShmemThp:
      return "shmem_thp";
    case HostPageKind::kSmall:
      return "4k";
  }
  return "4k";
}

HostPageChoice ChooseShmemPages(const std::string& shmem_enabled_path) {
  std::string text;
  if (std::FILE* file = std::fopen(shmem_enabled_path.c_str(), "re")) {
    char buffer[256];
    const size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, file);
    std::fclose(file);
    text.assign(buffer, n);
  } else {
    return {HostPageKind::kSmall,
            absl::StrCat("4 KiB pages: cannot read ", shmem_enabled_path, ": ",
                         std::strerror(errno))};
  }
  const size_t open = text.find('[');
  const size_t close = text.find(']', open);
  const std::string setting =
      open == std::string::npos || close == std::string::npos
          ? ""
          : text.substr(open + 1, close - open - 1);
  const std::string is = absl::StrCat(shmem_enabled_path, " is ", setting);
  // Every setting but never and deny gives huge pages to faults into a
  // mapping advised with MADV_HUGEPAGE. (Writes to the memfd get them
  // under always, within_size and force only: measured on Linux 6.18,
  // pwrite under advise left ShmemHugePages unchanged.)
  if (setting == "always" || setting == "within_size" || setting == "advise" ||
      setting == "force") {
    return {HostPageKind::kShmemThp,
            absl::StrCat("2 MiB shmem transparent huge pages through the "
                         "daemon's MADV_HUGEPAGE mapping: ",
                         is)};
  }
  if (setting == "never" || setting == "deny") {
    return {HostPageKind::kSmall,
            absl::StrCat("4 KiB pages: ", is,
                         " (within_size or advise there, or vm.nr_hugepages, "
                         "give 2 MiB pages)")};
  }
  return {HostPageKind::kSmall,
          absl::StrCat("4 KiB pages: ", shmem_enabled_path,
                       " names no known setting in brackets: \"", text, "\"")};
}

HostPageChoice HostDevice::ShmemChoice() const {
  if (!options_.transparent_huge_pages) {
    return {HostPageKind::kSmall,
            "4 KiB pages: transparent huge pages turned off"};
  }
  return ChooseShmemPages(options_.shmem_thp_setting);
}

std::optional<std::string> HostDevice::HugetlbCgroupRefuses(
    uint64_t bytes) const {
  absl::StatusOr<CgroupMemory> cgroup =
      ReadCgroupHugetlb(options_.cgroup_root, options_.self_cgroup);
  if (!cgroup.ok() || cgroup->free() >= bytes) return std::nullopt;
  return absl::StrCat("the hugetlb cgroup limit ", cgroup->limit_file, " (",
                      cgroup->limit, " bytes, ", cgroup->usage,
                      " used) leaves no room for ", bytes,
                      " bytes (on Kubernetes: request hugepages-2Mi)");
}

HostPageChoice HostDevice::PagesForNextAllocation() const {
  std::string no_hugetlb = "no hugetlb pages free (vm.nr_hugepages)";
  if (options_.huge_pages) {
    const uint64_t free_pages =
        MeminfoValue(options_.meminfo, "HugePages_Free: %llu");
    if (free_pages > 0 &&
        MeminfoValue(options_.meminfo, "Hugepagesize: %llu kB") == 2048) {
      std::optional<std::string> refused = HugetlbCgroupRefuses(kHugePageBytes);
      if (!refused.has_value()) {
        return {HostPageKind::kHugetlb,
                absl::StrCat("2 MiB hugetlb pages: ", free_pages,
                             " free of those vm.nr_hugepages reserves")};
      }
      no_hugetlb = *std::move(refused);
    }
  }
  HostPageChoice choice = ShmemChoice();
  if (options_.huge_pages) absl::StrAppend(&choice.reason, "; ", no_hugetlb);
  return choice;
}

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
    // A hugetlb cgroup limit charged when pages are taken (not at mmap)
    // would let the mapping succeed and fail the reservation later: such a
    // limit is checked here, so the arena falls back instead.
    std::optional<std::string> refused = HugetlbCgroupRefuses(huge_size);
    if (!refused.has_value()) {
      memfd.reset(::memfd_create(
          name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB));
    }
    if (memfd.valid() && ::ftruncate(memfd.get(), huge_size) == 0) {
      // A shared hugetlb mapping reserves its pages when it is made (mmap
      // fails with ENOMEM when too few are free), so writes into it cannot
      // fault for want of memory. The pages are faulted in (and zeroed)
      // ahead on the prefault threads while the reads run, not here: with
      // MAP_POPULATE zeroing 2 GB took a quarter of a load's time before its
      // first read was issued.
      void* mapped = ::mmap(nullptr, huge_size, PROT_READ | PROT_WRITE,
                            MAP_SHARED, memfd.get(), 0);
      if (mapped != MAP_FAILED) {
        data = static_cast<char*>(mapped);
        size = huge_size;
      }
    }
    if (data == nullptr) {
      memfd.reset();
      const HostPageChoice instead = ShmemChoice();
      static std::atomic<bool> warned{false};
      if (!warned.exchange(true)) {
        Logger("device")->warn(
            "{}: host memory uses {}",
            refused.value_or("no hugetlb pages free (vm.nr_hugepages)"),
            instead.reason);
      }
      if (options_.metrics != nullptr) {
        options_.metrics
            ->GetCounter("warmstart_host_hugepage_fallback_total",
                         "Host allocations that fell back from hugetlb pages "
                         "to shmem pages.")
            ->Add();
      }
      return AllocateShmem(size, label, instead.kind);
    }
  }
  if (data == nullptr) return AllocateShmem(size, label, ShmemChoice().kind);
  CountAllocation(options_.metrics, HostPageKind::kHugetlb);
  return std::unique_ptr<DeviceAllocation>(new HostAllocation(
      std::move(memfd), data, size, HostAllocation::Fill::kThroughMapping,
      std::max(1u, options_.prefault_threads), label));
}

absl::StatusOr<std::unique_ptr<DeviceAllocation>> HostDevice::AllocateFileImage(
    uint64_t bytes, const std::string& label) {
  // A memfd needs no page-multiple size: the last page is partly beyond
  // the end, and readers of the file see exactly `bytes`.
  return AllocateShmem(std::max<uint64_t>(bytes, 1), label,
                       HostPageKind::kSmall);
}

absl::StatusOr<std::unique_ptr<DeviceAllocation>> HostDevice::AllocateShmem(
    uint64_t size, const std::string& label, HostPageKind kind) {
  const std::string name = absl::StrCat("warmstart:", label);
  bool transparent_huge = kind == HostPageKind::kShmemThp;
  // Whole huge pages: under within_size a huge page is used only where the
  // file's size covers all of it, so a partial last one would be 4 KiB.
  if (transparent_huge) size = RoundUp(size, kHugePageBytes);
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
  // The daemon's own faults into the mapping (the advised fill, checks
  // after loading) get huge pages too. A kernel without THP refuses the
  // advice: the pages are then 4 KiB, written through the memfd.
  if (transparent_huge && ::madvise(mapped, size, MADV_HUGEPAGE) != 0) {
    transparent_huge = false;
    kind = HostPageKind::kSmall;
  }
  CountAllocation(options_.metrics, kind);
  HostAllocation::Fill fill = HostAllocation::Fill::kThroughMapping;
  if (transparent_huge) {
    fill = HostAllocation::Fill::kThroughAdvisedMapping;
  } else if (options_.write_through_fd) {
    fill = HostAllocation::Fill::kThroughMemfd;
  }
  return std::unique_ptr<DeviceAllocation>(
      new HostAllocation(std::move(memfd), static_cast<char*>(mapped), size,
                         fill, std::max(1u, options_.prefault_threads), label));
}

HostDevice::HostDevice(HostDeviceOptions options)
    : options_(std::move(options)) {
  if (options_.copy_threads > 0) {
    copy_workers_ = std::make_unique<CopyWorkers>(options_.copy_threads);
  }
}

HostDevice::~HostDevice() = default;

absl::Status HostDevice::Synchronize() {
  if (copy_workers_ != nullptr) copy_workers_->WaitIdle();
  return absl::OkStatus();
}

void HostDevice::CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                              const char* source, uint64_t bytes,
                              std::function<void(absl::Status)> done) {
  // One thread copies at about 2.4 GB/s into 4 KiB pages (pwrite) here,
  // below what the disk delivers with 4 MiB reads in flight (3 GB/s): the
  // load's copies run on several threads while its thread issues reads.
  // Small copies (a model of many small tensors) cost less than handing
  // them over would, and queued one by one they would hold a closure each.
  if (copy_workers_ == nullptr || bytes < kSmallestQueuedCopy) {
    Copy(destination, offset, source, bytes, done);
    return;
  }
  copy_workers_->Run(
      [&destination, offset, source, bytes, done = std::move(done)] {
        Copy(destination, offset, source, bytes, done);
      });
}

void HostDevice::Copy(DeviceAllocation& destination, uint64_t offset,
                      const char* source, uint64_t bytes,
                      const std::function<void(absl::Status)>& done) {
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
