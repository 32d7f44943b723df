// HostDevice: "device memory" in host shared memory, for machines without a
// GPU (CPU inference) and for every test.
//
// An allocation is a memfd (huge pages where the system has them reserved),
// mapped read-write in the daemon. Its pages are reserved (fallocate) and
// faulted in on background threads, ahead of the copies, because the first
// write into fresh pages is the slow part of loading (about 1.1-1.4 GB/s
// here, below the page cache). Writers wait for the reservation
// (WaitWritable), so a shortage is ResourceExhausted, never the OOM killer;
// Allocate refuses up front what is over MemAvailable or the cgroup limit.
// Exported as the memfd itself; Seal() adds F_SEAL_SHRINK, F_SEAL_GROW and
// F_SEAL_FUTURE_WRITE so no client can resize it or map it writable.
//
// Thread safety: thread-safe.
#ifndef WARMSTART_DAEMON_DEVICE_HOST_DEVICE_H_
#define WARMSTART_DAEMON_DEVICE_HOST_DEVICE_H_

#include <memory>
#include <string>

#include "daemon/base/metrics.h"
#include "daemon/device/device.h"

namespace warmstart {

struct HostDeviceOptions {
  // Try MFD_HUGETLB first (falls back to normal pages when the system has no
  // huge pages reserved: one warning, counter
  // warmstart_host_hugepage_fallback_total in `metrics`).
  bool huge_pages = true;
  // Threads that fault the pages of a new allocation in.
  unsigned prefault_threads = 2;
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
  // not faulted in. Huge-page allocations are always written by memcpy.
  bool write_through_fd = true;

  // Where the huge-page fallbacks are counted. Not owned; must outlive the
  // device. Null: not counted.
  Metrics* metrics = nullptr;
};

class HostDevice : public Device {
 public:
  explicit HostDevice(HostDeviceOptions options) : options_(options) {}

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
  // A memcpy, done before returning.
  void CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                    const char* source, uint64_t bytes,
                    std::function<void(absl::Status)> done) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  // MemAvailable and the memory cgroups' limits (v1 and v2).
  DeviceMemory Memory() const override;

 private:
  // A memfd of `size` bytes in normal pages, reserved and faulted in by
  // background threads.
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> AllocateSmallPages(
      uint64_t size, const std::string& label);

  const HostDeviceOptions options_;
  const std::string uuid_ = "host";
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_HOST_DEVICE_H_
