#include "daemon/device/cuda_driver.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"
#include "common/cuda_driver_loader.h"
#include "common/status_macros.h"

namespace warmstart {

absl::StatusOr<std::unique_ptr<CudaDriver>> CudaDriver::Load() {
  absl::StatusOr<CudaDriverLibrary> library = OpenCudaDriver();
  if (!library.ok()) {
    return absl::UnavailableError(
        absl::StrCat("no CUDA driver: ", library.status().message()));
  }
  std::unique_ptr<CudaDriver> driver(new CudaDriver(library->handle));
  auto get_version = reinterpret_cast<PFN_cuDriverGetVersion_v2020>(
      ::dlsym(library->handle, "cuDriverGetVersion"));
  if (get_version == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "no CUDA driver: ", library->path, " lacks cuDriverGetVersion"));
  }
  if (CUresult rc = library->init(0); rc != CUDA_SUCCESS) {
    // CUDA_ERROR_NO_DEVICE and CUDA_ERROR_INSUFFICIENT_DRIVER land here on
    // machines with a driver package but no usable GPU.
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA driver: cuInit failed with error ", rc));
  }
  if (CUresult rc = get_version(&driver->driver_version_); rc != CUDA_SUCCESS) {
    return absl::UnavailableError(absl::StrCat(
        "no usable CUDA driver: cuDriverGetVersion failed (", rc, ")"));
  }
  const PFN_cuGetProcAddress_v12000 get_proc = library->get_proc;

  CudaApi& api = driver->api_;
  const CudaEntryPoint required[] = {
      CudaEntry("cuDeviceGetCount", &api.device_get_count),
      CudaEntry("cuDeviceGet", &api.device_get),
      CudaEntry("cuDeviceGetName", &api.device_get_name),
      CudaEntry("cuDeviceTotalMem", &api.device_total_mem),
      CudaEntry("cuMemGetInfo", &api.mem_get_info),
      CudaEntry("cuDeviceGetUuid", &api.device_get_uuid),
      CudaEntry("cuDeviceGetAttribute", &api.device_get_attribute),
      CudaEntry("cuGetErrorName", &api.get_error_name),
      CudaEntry("cuGetErrorString", &api.get_error_string),
      CudaEntry("cuDevicePrimaryCtxRetain", &api.device_primary_ctx_retain),
      CudaEntry("cuDevicePrimaryCtxRelease", &api.device_primary_ctx_release),
      CudaEntry("cuCtxSetCurrent", &api.ctx_set_current),
      CudaEntry("cuCtxPushCurrent", &api.ctx_push_current),
      CudaEntry("cuCtxPopCurrent", &api.ctx_pop_current),
      CudaEntry("cuMemAlloc", &api.mem_alloc),
      CudaEntry("cuMemFree", &api.mem_free),
      CudaEntry("cuIpcGetMemHandle", &api.ipc_get_mem_handle),
      CudaEntry("cuMemHostRegister", &api.mem_host_register),
      CudaEntry("cuMemHostUnregister", &api.mem_host_unregister),
      CudaEntry("cuStreamCreate", &api.stream_create),
      CudaEntry("cuStreamDestroy", &api.stream_destroy),
      CudaEntry("cuStreamSynchronize", &api.stream_synchronize),
      CudaEntry("cuEventCreate", &api.event_create),
      CudaEntry("cuEventRecord", &api.event_record),
      CudaEntry("cuEventSynchronize", &api.event_synchronize),
      CudaEntry("cuEventDestroy", &api.event_destroy),
      CudaEntry("cuMemsetD8Async", &api.memset_d8_async),
      CudaEntry("cuMemcpyHtoDAsync", &api.memcpy_htod_async),
      CudaEntry("cuMemcpyDtoH", &api.memcpy_dtoh),
  };
  if (const char* missing = ResolveCudaEntryPoints(get_proc, required)) {
    return absl::UnavailableError(absl::StrCat(
        "no usable CUDA driver: entry point ", missing, " not found"));
  }
  // VMM is all or nothing: without any one of these the device falls back
  // to cuMemAlloc and legacy IPC handles.
  const CudaEntryPoint vmm[] = {
      CudaEntry("cuMemGetAllocationGranularity",
                &api.mem_get_allocation_granularity),
      CudaEntry("cuMemCreate", &api.mem_create),
      CudaEntry("cuMemRelease", &api.mem_release),
      CudaEntry("cuMemExportToShareableHandle",
                &api.mem_export_to_shareable_handle),
      CudaEntry("cuMemAddressReserve", &api.mem_address_reserve),
      CudaEntry("cuMemAddressFree", &api.mem_address_free),
      CudaEntry("cuMemMap", &api.mem_map),
      CudaEntry("cuMemUnmap", &api.mem_unmap),
      CudaEntry("cuMemSetAccess", &api.mem_set_access),
  };
  ResolveCudaEntryPoints(get_proc, vmm);
  return driver;
}

CudaDriver::~CudaDriver() { ::dlclose(library_); }

absl::Status CudaDriver::ToStatus(CUresult result,
                                  absl::string_view what) const {
  return CudaResultToStatus(api_.get_error_name, api_.get_error_string, result,
                            what, absl::StatusCode::kUnavailable);
}

absl::StatusOr<CudaDeviceInfo> CudaDriver::Device(int ordinal) const {
  int count = 0;
  WS_RETURN_IF_ERROR(
      ToStatus(api_.device_get_count(&count), "cuDeviceGetCount"));
  if (ordinal < 0 || ordinal >= count) {
    return absl::NotFoundError(absl::StrCat("no GPU with ordinal ", ordinal,
                                            ": the CUDA driver sees ", count));
  }
  CUdevice device;
  WS_RETURN_IF_ERROR(
      ToStatus(api_.device_get(&device, ordinal), "cuDeviceGet"));
  CudaDeviceInfo info;
  info.ordinal = ordinal;
  char name[256] = {};
  WS_RETURN_IF_ERROR(ToStatus(
      api_.device_get_name(name, sizeof(name) - 1, device), "cuDeviceGetName"));
  info.name = name;
  size_t total = 0;
  WS_RETURN_IF_ERROR(
      ToStatus(api_.device_total_mem(&total, device), "cuDeviceTotalMem"));
  info.total_bytes = total;
  CUuuid uuid;
  WS_RETURN_IF_ERROR(
      ToStatus(api_.device_get_uuid(&uuid, device), "cuDeviceGetUuid"));
  info.uuid = FormatGpuUuid(uuid);
  return info;
}

absl::StatusOr<std::vector<CudaDeviceInfo>> CudaDriver::Devices() const {
  int count = 0;
  WS_RETURN_IF_ERROR(
      ToStatus(api_.device_get_count(&count), "cuDeviceGetCount"));
  std::vector<CudaDeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    WS_ASSIGN_OR_RETURN(CudaDeviceInfo info, Device(i));
    devices.push_back(std::move(info));
  }
  return devices;
}

}  // namespace warmstart
