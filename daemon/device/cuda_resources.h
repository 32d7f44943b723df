// Move-only owners of CUDA driver objects, and the scope that makes a
// context current, for the CUDA backend (cuda_device.h).
//
// Each owner frees its object when destroyed or reset; a failure to free is
// logged (there is nobody to return it to). REQUIRES: the context the object
// belongs to is current on the thread that frees it, and the driver outlives
// the owner.
//
// Thread safety: an owner is not synchronised; ScopedContext acts on the
// calling thread only.
#ifndef WARMSTART_DAEMON_DEVICE_CUDA_RESOURCES_H_
#define WARMSTART_DAEMON_DEVICE_CUDA_RESOURCES_H_

#include <cuda.h>

#include <utility>

#include "absl/status/status.h"
#include "daemon/device/cuda_driver.h"

namespace warmstart {

// Logs the failure to free a driver object; the process goes on.
void LogCudaReleaseFailure(const CudaDriver& driver, CUresult result,
                           const char* what);

// Owns one driver object of the kind `Traits` describes:
//   using Handle = ...;                        // What identifies it.
//   static constexpr const char* kRelease;     // The freeing call's name.
//   static CUresult Release(const CudaApi&, const Handle&);
template <typename Traits>
class CudaOwned {
 public:
  using Handle = typename Traits::Handle;

  CudaOwned() = default;
  // Takes ownership of `handle`.
  CudaOwned(const CudaDriver* driver, Handle handle)
      : driver_(driver), handle_(handle) {}
  ~CudaOwned() { reset(); }

  CudaOwned(CudaOwned&& other) noexcept
      : driver_(std::exchange(other.driver_, nullptr)),
        handle_(other.handle_) {}
  CudaOwned& operator=(CudaOwned&& other) noexcept {
    if (this != &other) {
      reset();
      driver_ = std::exchange(other.driver_, nullptr);
      handle_ = other.handle_;
    }
    return *this;
  }
  CudaOwned(const CudaOwned&) = delete;
  CudaOwned& operator=(const CudaOwned&) = delete;

  bool valid() const { return driver_ != nullptr; }
  // REQUIRES: valid().
  const Handle& get() const { return handle_; }

  // Frees the object, if any.
  void reset() {
    if (driver_ == nullptr) return;
    const CUresult result = Traits::Release(driver_->api(), handle_);
    if (result != CUDA_SUCCESS) {
      LogCudaReleaseFailure(*driver_, result, Traits::kRelease);
    }
    driver_ = nullptr;
  }

 private:
  const CudaDriver* driver_ = nullptr;
  Handle handle_{};
};

// A range of device addresses: [pointer, pointer + size).
struct CudaRange {
  CUdeviceptr pointer = 0;
  size_t size = 0;
};

struct PrimaryContextTraits {
  using Handle = CUdevice;
  static constexpr const char* kRelease = "cuDevicePrimaryCtxRelease";
  static CUresult Release(const CudaApi& api, CUdevice device) {
    return api.device_primary_ctx_release(device);
  }
};
struct StreamTraits {
  using Handle = CUstream;
  static constexpr const char* kRelease = "cuStreamDestroy";
  static CUresult Release(const CudaApi& api, CUstream stream) {
    return api.stream_destroy(stream);
  }
};
struct EventTraits {
  using Handle = CUevent;
  static constexpr const char* kRelease = "cuEventDestroy";
  static CUresult Release(const CudaApi& api, CUevent event) {
    return api.event_destroy(event);
  }
};
// cuMemAlloc'd memory.
struct LinearMemoryTraits {
  using Handle = CUdeviceptr;
  static constexpr const char* kRelease = "cuMemFree";
  static CUresult Release(const CudaApi& api, CUdeviceptr pointer) {
    return api.mem_free(pointer);
  }
};
// cuMemCreate'd physical memory. The driver keeps it alive while mapped.
struct PhysicalMemoryTraits {
  using Handle = CUmemGenericAllocationHandle;
  static constexpr const char* kRelease = "cuMemRelease";
  static CUresult Release(const CudaApi& api,
                          CUmemGenericAllocationHandle handle) {
    return api.mem_release(handle);
  }
};
// A cuMemAddressReserve'd range.
struct AddressReservationTraits {
  using Handle = CudaRange;
  static constexpr const char* kRelease = "cuMemAddressFree";
  static CUresult Release(const CudaApi& api, const CudaRange& range) {
    return api.mem_address_free(range.pointer, range.size);
  }
};
// A cuMemMap'd range.
struct MappingTraits {
  using Handle = CudaRange;
  static constexpr const char* kRelease = "cuMemUnmap";
  static CUresult Release(const CudaApi& api, const CudaRange& range) {
    return api.mem_unmap(range.pointer, range.size);
  }
};

using PrimaryContext = CudaOwned<PrimaryContextTraits>;
using CudaStream = CudaOwned<StreamTraits>;
using CudaEvent = CudaOwned<EventTraits>;
using LinearMemory = CudaOwned<LinearMemoryTraits>;
using PhysicalMemory = CudaOwned<PhysicalMemoryTraits>;
using AddressReservation = CudaOwned<AddressReservationTraits>;
using Mapping = CudaOwned<MappingTraits>;

// Makes `context` current on the calling thread for the scope's lifetime
// (cuCtxPushCurrent / cuCtxPopCurrent), so whatever the caller had current
// is back afterwards. Check status() before making driver calls.
class ScopedContext {
 public:
  ScopedContext(const CudaDriver& driver, CUcontext context);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

  const absl::Status& status() const { return status_; }

 private:
  const CudaDriver& driver_;
  absl::Status status_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_CUDA_RESOURCES_H_
