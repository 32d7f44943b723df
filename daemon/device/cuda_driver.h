// CudaDriver: the CUDA driver API, loaded at run time.
//
// The daemon must start on machines without a GPU or driver, so nothing links
// libcuda.so.1: Load() dlopens it and resolves entry points through
// cuGetProcAddress. A missing driver is a status ("no CUDA driver: ..."),
// never a crash. The library can be overridden with $WARMSTART_LIBCUDA (the
// tests point it at a simulated driver, tests/doubles/cuda_sim.cc).
//
// Thread safety: a loaded CudaDriver is immutable; the CUDA driver API itself
// is thread-safe.
#ifndef WARMSTART_DAEMON_DEVICE_CUDA_DRIVER_H_
#define WARMSTART_DAEMON_DEVICE_CUDA_DRIVER_H_

#include <cuda.h>
#include <cudaTypedefs.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace warmstart {

struct CudaDeviceInfo {
  int ordinal = 0;
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
  std::string name;
  uint64_t total_bytes = 0;
};

// The driver entry points the daemon calls, at the ABI of CUDA 12.0 (the
// PFN_..._vNNNN types name the version each one resolves to). Every member
// is non-null after a successful Load() except the VMM group, which is all
// null when the driver lacks any of it.
struct CudaApi {
  // Devices.
  PFN_cuDeviceGetCount_v2000 device_get_count = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDeviceGetName_v2000 device_get_name = nullptr;
  PFN_cuDeviceTotalMem_v3020 device_total_mem = nullptr;
  PFN_cuDeviceGetUuid_v11040 device_get_uuid = nullptr;
  PFN_cuDeviceGetAttribute_v2000 device_get_attribute = nullptr;
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuGetErrorString_v6000 get_error_string = nullptr;

  // Contexts.
  PFN_cuDevicePrimaryCtxRetain_v7000 device_primary_ctx_retain = nullptr;
  PFN_cuDevicePrimaryCtxRelease_v11000 device_primary_ctx_release = nullptr;
  PFN_cuCtxSetCurrent_v4000 ctx_set_current = nullptr;
  PFN_cuCtxPushCurrent_v4000 ctx_push_current = nullptr;
  PFN_cuCtxPopCurrent_v4000 ctx_pop_current = nullptr;

  // Legacy allocations and IPC.
  PFN_cuMemAlloc_v3020 mem_alloc = nullptr;
  PFN_cuMemFree_v3020 mem_free = nullptr;
  PFN_cuMemGetInfo_v3020 mem_get_info = nullptr;
  PFN_cuIpcGetMemHandle_v4010 ipc_get_mem_handle = nullptr;

  // Virtual memory management (optional).
  PFN_cuMemGetAllocationGranularity_v10020 mem_get_allocation_granularity =
      nullptr;
  PFN_cuMemCreate_v10020 mem_create = nullptr;
  PFN_cuMemRelease_v10020 mem_release = nullptr;
  PFN_cuMemExportToShareableHandle_v10020 mem_export_to_shareable_handle =
      nullptr;
  PFN_cuMemAddressReserve_v10020 mem_address_reserve = nullptr;
  PFN_cuMemAddressFree_v10020 mem_address_free = nullptr;
  PFN_cuMemMap_v10020 mem_map = nullptr;
  PFN_cuMemUnmap_v10020 mem_unmap = nullptr;
  PFN_cuMemSetAccess_v10020 mem_set_access = nullptr;

  // Pinned host memory.
  PFN_cuMemHostRegister_v6050 mem_host_register = nullptr;
  PFN_cuMemHostUnregister_v4000 mem_host_unregister = nullptr;

  // Streams, events and copies.
  PFN_cuStreamCreate_v2000 stream_create = nullptr;
  PFN_cuStreamDestroy_v4000 stream_destroy = nullptr;
  PFN_cuStreamSynchronize_v2000 stream_synchronize = nullptr;
  PFN_cuEventCreate_v2000 event_create = nullptr;
  PFN_cuEventRecord_v2000 event_record = nullptr;
  PFN_cuEventSynchronize_v2000 event_synchronize = nullptr;
  PFN_cuEventDestroy_v4000 event_destroy = nullptr;
  PFN_cuMemsetD8Async_v3020 memset_d8_async = nullptr;
  PFN_cuMemcpyHtoDAsync_v3020 memcpy_htod_async = nullptr;
  PFN_cuMemcpyDtoH_v3020 memcpy_dtoh = nullptr;
};

class CudaDriver {
 public:
  // Loads the driver library and initialises it. Fails with Unavailable
  // ("no CUDA driver: ...") when the library is missing, cuInit fails or a
  // required entry point is missing. Missing VMM entry points only leave
  // has_vmm() false.
  static absl::StatusOr<std::unique_ptr<CudaDriver>> Load();

  ~CudaDriver();
  CudaDriver(const CudaDriver&) = delete;
  CudaDriver& operator=(const CudaDriver&) = delete;

  // The GPUs the driver sees (possibly none).
  absl::StatusOr<std::vector<CudaDeviceInfo>> Devices() const;
  // One GPU; NotFound when the driver sees no GPU with that ordinal.
  absl::StatusOr<CudaDeviceInfo> Device(int ordinal) const;

  int driver_version() const { return driver_version_; }
  const CudaApi& api() const { return api_; }
  // Whether the driver has the VMM entry points (whether a GPU supports VMM
  // is a device attribute).
  bool has_vmm() const { return api_.mem_create != nullptr; }

  // OK for CUDA_SUCCESS; otherwise "<what> failed: <error name>: <error
  // text> (<code>)" with a code that follows the error: out of memory ->
  // ResourceExhausted, no device or driver -> Unavailable, not supported ->
  // Unimplemented, already registered -> AlreadyExists, invalid value ->
  // InvalidArgument, anything else -> Internal.
  absl::Status ToStatus(CUresult result, absl::string_view what) const;

 private:
  explicit CudaDriver(void* library) : library_(library) {}

  void* library_;
  int driver_version_ = 0;
  CudaApi api_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_CUDA_DRIVER_H_
