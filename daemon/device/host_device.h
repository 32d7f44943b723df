// HostDevice: "device memory" in host shared memory, for machines without a
// GPU (CPU inference) and for every test.
//
// An allocation is a memfd in the largest pages the system allows (see
// HostPageKind), mapped read-write in the daemon. Its pages are reserved
// (fallocate) and faulted in on background threads, ahead of the copies,
// because the first write into fresh pages is the slow part of loading
// (about 1.1-1.4 GB/s here, below the page cache). Writers wait for the
// reservation (WaitWritable), so a shortage is ResourceExhausted, never the OOM
// killer; Allocate refuses up front what is over MemAvailable or the cgroup
// limit. Exported as the memfd itself; Seal() adds F_SEAL_SHRINK, F_SEAL_GROW
// and F_SEAL_FUTURE_WRITE so no client can resize it or map it writable.
//
// Thread safety: thread-safe.
#ifndef WARMSTART_DAEMON_DEVICE_HOST_DEVICE_H_
#define WARMSTART_DAEMON_DEVICE_HOST_DEVICE_H_

#include <memory>
#include <optional>
#include <string>

#include "daemon/base/metrics.h"
#include "daemon/device/device.h"

namespace warmstart {

class CopyWorkers;  // copy_workers.h

// The pages of a host arena, best first. Large pages make a worker's first
// touch of every page cheaper (one PMD mapping per 2 MiB, no per-4 KiB
// fault), and the load too when free 2 MiB pages are at hand (one page
// allocation per 2 MiB instead of 512); getting them can cost reclaim.
enum class HostPageKind {
  // 2 MiB hugetlb pages, taken from those vm.nr_hugepages reserves
  // (MFD_HUGETLB); written through the mapping (memcpy).
  kHugetlb,
  // 2 MiB shmem transparent huge pages (shmem_enabled always, within_size,
  // advise or force): the daemon's mapping is advised (MADV_HUGEPAGE),
  // faulted in ahead in ascending order (MADV_POPULATE_WRITE, which is
  // also the reservation) and filled through it, reads landing in place.
  // Writes to the memfd (pwrite) would get huge pages under within_size
  // and always but not under advise, and loaded slower than the mapping
  // where they did (README, "Huge pages").
  kShmemThp,
  // 4 KiB shmem pages, filled through the memfd (pwrite).
  kSmall,
};

// "hugetlb", "shmem_thp" or "4k": the label value of
// warmstart_host_allocations_total and what warmstartctl bench prints.
const char* HostPageKindName(HostPageKind kind);

struct HostPageChoice {
  HostPageKind kind;
  std::string reason;  // Names the setting and its value.
};

// The pages a shmem (non-hugetlb) arena gets under the shmem THP setting
// in `shmem_enabled_path` (sysfs's form, the setting in brackets: "always
// within_size [advise] never deny force"). An unreadable or unknown file is
// kSmall, with the reason saying so. Reads the file on every call (the
// setting may change while the daemon runs).
HostPageChoice ChooseShmemPages(const std::string& shmem_enabled_path);

struct HostDeviceOptions {
  // Try MFD_HUGETLB first (falls back to shmem pages, see ChooseShmemPages,
  // when the system has no huge pages reserved: one warning, counter
  // warmstart_host_hugepage_fallback_total in `metrics`).
  bool huge_pages = true;
  // Use shmem transparent huge pages where shmem_thp_setting allows them.
  bool transparent_huge_pages = true;
  std::string shmem_thp_setting =
      "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
  // Threads that fault the pages of a new allocation in.
  unsigned prefault_threads = 2;
  // Threads that run CopyFromHost's copies, so that a load's copies run in
  // parallel with each other and with the thread that issues reads; 0 runs
  // each copy on the caller's thread before CopyFromHost returns.
  unsigned copy_threads = 2;
  // Where the memory figures are read (tests give fake files): the cgroup
  // file systems' root, this process's cgroup list and meminfo.
  std::string cgroup_root = "/sys/fs/cgroup";
  std::string self_cgroup = "/proc/self/cgroup";
  std::string meminfo = "/proc/meminfo";

  // Allocations in 4 KiB pages are written by CopyFromHost through their
  // memfd (pwrite) rather than through the mapping, and prefer copies to
  // reads landing in place (DeviceAllocation::PrefersCopies): each page is
  // then allocated once and filled whole, with no page fault and no
  // zeroing, about twice as fast here. Their pages are reserved ahead but
  // not faulted in. Huge-page allocations (hugetlb and shmem THP) are
  // always written through the mapping.
  bool write_through_fd = true;

  // Where the huge-page fallbacks and the allocations by page kind are
  // counted. Not owned; must outlive the device. Null: not counted.
  Metrics* metrics = nullptr;
};

class HostDevice : public Device {
 public:
  explicit HostDevice(HostDeviceOptions options);
  // Waits for every copy still queued.
  ~HostDevice() override;

  // The pages the next Allocate gets and why ("2 MiB hugetlb pages: 512 of
  // vm.nr_hugepages free"), for the daemon's start-up log and the bench.
  // hugetlb is predicted from HugePages_Free in `meminfo`; Allocate may
  // still fall back if they are taken meanwhile.
  HostPageChoice PagesForNextAllocation() const;

  const std::string& uuid() const override { return uuid_; }
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> Allocate(
      uint64_t bytes, const std::string& label) override;
  // A memfd of exactly `bytes`, in 4 KiB pages: a hugetlbfs memfd's size is
  // a multiple of 2 MiB, which would append zeros to the file.
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> AllocateFileImage(
      uint64_t bytes, const std::string& label) override;
  // Host memory needs no pinning for memcpy.
  absl::Status RegisterHostMemory(void*, uint64_t) override {
    return absl::OkStatus();
  }
  void UnregisterHostMemory(void*) override {}
  // A memcpy (or a pwrite into the memfd, see write_through_fd) on one of
  // `copy_threads` threads, which also call `done`; on the caller's thread
  // before returning when copy_threads is 0 or the copy is under 256 KiB.
  // `source` must stay valid until `done` is called.
  void CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                    const char* source, uint64_t bytes,
                    std::function<void(absl::Status)> done) override;
  // Waits until every copy issued so far (by any caller) has completed and
  // its `done` has returned.
  absl::Status Synchronize() override;
  // MemAvailable and the memory cgroups' limits (v1 and v2).
  DeviceMemory Memory() const override;

 private:
  // A shmem memfd of `size` bytes (rounded up to 2 MiB for the THP kinds)
  // in pages of `kind` (not kHugetlb), reserved by a background thread and,
  // when written through the mapping, faulted in by others.
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> AllocateShmem(
      uint64_t size, const std::string& label, HostPageKind kind);
  HostPageChoice ShmemChoice() const;
  // Why the hugetlb cgroup limits of this process (ReadCgroupHugetlb) leave
  // no room for `bytes` of hugetlb pages; nullopt when they do (or cannot
  // be read: the reservation then decides).
  std::optional<std::string> HugetlbCgroupRefuses(uint64_t bytes) const;
  // The copy itself, on whichever thread runs it.
  static void Copy(DeviceAllocation& destination, uint64_t offset,
                   const char* source, uint64_t bytes,
                   const std::function<void(absl::Status)>& done);

  const HostDeviceOptions options_;
  const std::string uuid_ = "host";
  std::unique_ptr<CopyWorkers> copy_workers_;  // Null when copy_threads is 0.
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_HOST_DEVICE_H_
