// CudaDevice: weights in GPU memory, uploaded with asynchronous copies.
//
// Allocations. Where the GPU supports virtual memory management with POSIX
// file descriptor handles, each allocation is one cuMemCreate'd block
// (rounded up to the allocation granularity), mapped read-write into the
// daemon's address space and exported once as a file descriptor
// (ExportedMemory::kCudaVmmFd), which a client in another container of the
// pod imports after receiving it over the handle socket. Elsewhere (or with
// allow_vmm off) an allocation is cuMemAlloc'd and exported as a legacy
// 64-byte IPC handle (kCudaIpcHandle); the fallback is logged once and
// counted in warmstart_cuda_legacy_ipc_fallback_total. Either way the memory
// is zeroed before Allocate returns.
//
// Copies. CopyFromHost enqueues cuMemcpyHtoDAsync on one of `copy_streams`
// streams (round robin) and records an event behind it, and returns at once:
// the loader reads slab N+1 while slab N is copied. One completion thread
// per device waits for those events in the order the copies were issued and
// then runs each copy's `done`, which hands the slab back to the staging
// pool. So callbacks run one at a time, on that thread, in issue order.
//
// Contexts. Every driver call runs with the GPU's primary context current:
// pushed and popped around each call on the caller's thread (so any context
// the caller has current is left alone), current for good on the completion
// thread.
//
// Thread safety: thread-safe. A `done` callback runs on the completion
// thread and must not call Synchronize or destroy the device.
#ifndef WARMSTART_DAEMON_DEVICE_CUDA_DEVICE_H_
#define WARMSTART_DAEMON_DEVICE_CUDA_DEVICE_H_

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/scoped_fd.h"
#include "daemon/base/metrics.h"
#include "daemon/device/cuda_driver.h"
#include "daemon/device/cuda_resources.h"
#include "daemon/device/device.h"

namespace warmstart {

class CudaDevice;

// GPU memory from a CudaDevice. Owns the memory and its export (the VMM
// file descriptor, closed on destruction). REQUIRES: destroyed before the
// device that made it, with no copy into it in flight.
class CudaAllocation : public DeviceAllocation {
 public:
  ~CudaAllocation() override;
  CudaAllocation(const CudaAllocation&) = delete;
  CudaAllocation& operator=(const CudaAllocation&) = delete;

  uint64_t size() const override { return size_; }
  // GPU memory is not addressable by the CPU.
  char* host_data() override { return nullptr; }
  // Nothing to do: the daemon never writes the memory after the load, and
  // clients get read-only access when they import it (cuMemSetAccess with
  // PROT_READ on their side, where the driver allows).
  absl::Status Seal() override { return absl::OkStatus(); }
  ExportedMemory Export() const override;

  // The allocation's address in the device's primary context, for code in
  // this process (tests, read-back).
  CUdeviceptr device_pointer() const { return pointer_; }
  // True for a VMM allocation, false for cuMemAlloc'd memory.
  bool vmm() const { return physical_.valid(); }

 private:
  friend class CudaDevice;
  CudaAllocation(CudaDevice* device, uint64_t size);

  CudaDevice* const device_;
  const uint64_t size_;
  CUdeviceptr pointer_ = 0;
  // Legacy: the memory and its IPC handle.
  LinearMemory linear_;
  std::string ipc_handle_;
  // VMM: physical memory, the address range it is mapped at, the mapping
  // and the exported descriptor.
  PhysicalMemory physical_;
  AddressReservation reservation_;
  Mapping mapping_;
  ScopedFd exported_fd_;
};

struct CudaDeviceOptions {
  // Streams that copies rotate over, 1 to 16. Two let one copy be queued
  // while the copy engine works on another.
  int copy_streams = 2;
  // Use VMM allocations where the GPU can export them as file descriptors.
  // Off forces cuMemAlloc and legacy IPC handles (for clients that can only
  // import those).
  bool allow_vmm = true;
  // Where allocated and copied bytes, copy errors and legacy-IPC fallbacks
  // are counted. Not owned; must outlive the device and its allocations.
  // Null: counted in a Metrics of the device's own, which nobody exports.
  Metrics* metrics = nullptr;
};

class CudaDevice : public Device {
 public:
  // Opens GPU `ordinal` through `driver`, which must outlive the device:
  // retains its primary context, creates the streams and starts the
  // completion thread. Errors: InvalidArgument for options out of range,
  // NotFound for an ordinal the driver does not see, the driver's error
  // otherwise.
  static absl::StatusOr<std::unique_ptr<CudaDevice>> Create(
      const CudaDriver* driver, int ordinal, CudaDeviceOptions options);

  // Waits for every copy and its callback, then destroys the streams and
  // events and releases the primary context. REQUIRES: every allocation of
  // this device destroyed and every registered host region unregistered
  // (checked: a violation aborts with a message); not called from a `done`
  // callback.
  ~CudaDevice() override;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  // The GPU's UUID ("GPU-...").
  const std::string& uuid() const override { return info_.uuid; }
  const std::string& name() const { return info_.name; }
  // Whether allocations are VMM (exported as file descriptors) rather than
  // cuMemAlloc'd (exported as legacy IPC handles).
  bool uses_vmm() const { return vmm_; }

  absl::StatusOr<std::unique_ptr<DeviceAllocation>> Allocate(
      uint64_t bytes, const std::string& label) override;
  // free_bytes from cuMemGetInfo, asked at every call (the registry asks
  // under its lock at each reservation, so concurrent loads see each
  // other); nullopt, with a warning logged once, when the driver fails.
  DeviceMemory Memory() const override;
  // Pins the region with cuMemHostRegister.
  absl::Status RegisterHostMemory(void* data, uint64_t bytes) override;
  void UnregisterHostMemory(void* data) override;
  // A copy that cannot be issued reports its error through `done` on the
  // calling thread, before CopyFromHost returns (once nothing reads
  // `source` any more). REQUIRES: `destination` is a CudaAllocation of this
  // device.
  void CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                    const char* source, uint64_t bytes,
                    std::function<void(absl::Status)> done) override;
  // Waits until every copy issued before the call has completed and its
  // callback has returned; copies issued meanwhile by other threads are not
  // waited for. Always OK: each copy's error goes to its own callback, so
  // one model's failed copy never fails another model's load.
  absl::Status Synchronize() override;

  // Copies [offset, offset + bytes) of `source` into `destination`
  // synchronously (read-back for verification and tests). REQUIRES:
  // `source` is a CudaAllocation of this device, the range lies inside it
  // and no copy into it is in flight (Synchronize).
  absl::Status CopyToHost(const DeviceAllocation& source, uint64_t offset,
                          char* destination, uint64_t bytes);

 private:
  friend class CudaAllocation;

  // A copy issued and not yet reported.
  struct PendingCopy {
    CudaEvent event;  // Recorded on the copy's stream right after it.
    uint64_t bytes = 0;
    std::function<void(absl::Status)> done;
  };

  CudaDevice(const CudaDriver* driver, CudaDeviceInfo info, CUdevice device,
             PrimaryContext retained, CUcontext context, Metrics* metrics);

  // Fill in `allocation` (sized already) step by step; on failure its
  // destructor frees what was made. REQUIRES: the context is current.
  absl::Status AllocateVmm(CudaAllocation& allocation);
  absl::Status AllocateLinear(CudaAllocation& allocation);
  // Zeroes the allocation and waits for it. REQUIRES: the context is
  // current.
  absl::Status Zero(const CudaAllocation& allocation);
  // An event from the free list, or a new one. REQUIRES: the context is
  // current.
  absl::StatusOr<CudaEvent> TakeEvent() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Issues the copy and queues it, with `done` moved in, for the completion
  // thread. On failure `done` is left to the caller, and `*unmarked` is the
  // stream when the copy was issued but its event could not be recorded.
  // REQUIRES: the context is current.
  absl::Status Enqueue(CUdeviceptr target, const char* source, uint64_t bytes,
                       std::function<void(absl::Status)>& done,
                       CUstream* unmarked) ABSL_LOCKS_EXCLUDED(mutex_);
  bool CompletionReady() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The completion thread: waits for each pending copy's event, in order,
  // and runs its callback.
  void CompleteCopies() ABSL_LOCKS_EXCLUDED(mutex_);

  const CudaDriver* const driver_;
  const CudaDeviceInfo info_;
  const CUdevice device_;
  PrimaryContext retained_;
  const CUcontext context_;
  // Set when no Metrics was given; before the pointers into it.
  std::unique_ptr<Metrics> unexported_metrics_;
  Gauge* const allocated_bytes_;  // Over every CudaDevice of the Metrics.
  Counter* const copied_bytes_;
  Counter* const copy_errors_;
  // Set by Create, then immutable.
  bool vmm_ = false;
  uint64_t granularity_ = 0;
  std::vector<CudaStream> copy_streams_;
  // Allocate zeroes new memory on this stream and waits for it alone.
  CudaStream zero_stream_;

  absl::Mutex mutex_;
  size_t next_stream_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<CudaEvent> free_events_ ABSL_GUARDED_BY(mutex_);
  std::deque<PendingCopy> pending_ ABSL_GUARDED_BY(mutex_);
  // Copies queued for the completion thread, and those it has reported.
  uint64_t queued_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t reported_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  // The completion thread's start: not yet, or the outcome of making the
  // context current on it.
  bool thread_started_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status thread_status_ ABSL_GUARDED_BY(mutex_);
  std::thread completion_thread_;

  std::atomic<int> live_allocations_{0};
  std::atomic<int> registered_regions_{0};
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_CUDA_DEVICE_H_
