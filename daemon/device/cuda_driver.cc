#include "daemon/device/cuda_driver.h"

#include <dlfcn.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace warmstart {
namespace {

// Entry points are requested at the ABI of CUDA 12.0, the oldest driver
// series the daemon supports; newer drivers serve that ABI too.
constexpr int kRequestedAbi = 12000;

std::string FormatUuid(const CUuuid& uuid) {
  const auto* b = reinterpret_cast<const unsigned char*>(uuid.bytes);
  return absl::StrFormat(
      "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%"
      "02x",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
      b[12], b[13], b[14], b[15]);
}

// One entry point to resolve and where its address goes.
struct EntryPoint {
  const char* symbol;
  void** fn;
};

template <typename Fn>
EntryPoint Entry(const char* symbol, Fn* fn) {
  return {symbol, reinterpret_cast<void**>(fn)};
}

// Resolves `symbol` through cuGetProcAddress; false when the driver lacks it.
bool ResolveEntry(PFN_cuGetProcAddress_v12000 get_proc, const EntryPoint& e) {
  CUdriverProcAddressQueryResult found;
  const CUresult rc = get_proc(e.symbol, e.fn, kRequestedAbi,
                               CU_GET_PROC_ADDRESS_DEFAULT, &found);
  if (rc != CUDA_SUCCESS || found != CU_GET_PROC_ADDRESS_SUCCESS ||
      *e.fn == nullptr) {
    *e.fn = nullptr;
    return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaDriver>> CudaDriver::Load() {
  const char* override_path = std::getenv("WARMSTART_LIBCUDA");
  const char* path = override_path != nullptr ? override_path : "libcuda.so.1";
  void* library = ::dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("no CUDA driver: cannot load ", path, ": ", ::dlerror()));
  }
  std::unique_ptr<CudaDriver> driver(new CudaDriver(library));

  auto init = reinterpret_cast<PFN_cuInit_v2000>(::dlsym(library, "cuInit"));
  auto get_version = reinterpret_cast<PFN_cuDriverGetVersion_v2020>(
      ::dlsym(library, "cuDriverGetVersion"));
  if (init == nullptr || get_version == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "no CUDA driver: ", path, " lacks cuInit or cuDriverGetVersion"));
  }
  if (CUresult rc = init(0); rc != CUDA_SUCCESS) {
    // CUDA_ERROR_NO_DEVICE and CUDA_ERROR_INSUFFICIENT_DRIVER land here on
    // machines with a driver package but no usable GPU.
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA driver: cuInit failed with error ", rc));
  }
  if (CUresult rc = get_version(&driver->driver_version_); rc != CUDA_SUCCESS) {
    return absl::UnavailableError(absl::StrCat(
        "no usable CUDA driver: cuDriverGetVersion failed (", rc, ")"));
  }
  auto get_proc = reinterpret_cast<PFN_cuGetProcAddress_v12000>(
      ::dlsym(library, "cuGetProcAddress_v2"));
  if (get_proc == nullptr) {
    return absl::UnavailableError(
        "no usable CUDA driver: cuGetProcAddress_v2 missing (driver older "
        "than CUDA 12)");
  }

  CudaApi& api = driver->api_;
  const EntryPoint required[] = {
      Entry("cuDeviceGetCount", &api.device_get_count),
      Entry("cuDeviceGet", &api.device_get),
      Entry("cuDeviceGetName", &api.device_get_name),
      Entry("cuDeviceTotalMem", &api.device_total_mem),
      Entry("cuMemGetInfo", &api.mem_get_info),
      Entry("cuDeviceGetUuid", &api.device_get_uuid),
      Entry("cuDeviceGetAttribute", &api.device_get_attribute),
      Entry("cuGetErrorName", &api.get_error_name),
      Entry("cuGetErrorString", &api.get_error_string),
      Entry("cuDevicePrimaryCtxRetain", &api.device_primary_ctx_retain),
      Entry("cuDevicePrimaryCtxRelease", &api.device_primary_ctx_release),
      Entry("cuCtxSetCurrent", &api.ctx_set_current),
      Entry("cuCtxPushCurrent", &api.ctx_push_current),
      Entry("cuCtxPopCurrent", &api.ctx_pop_current),
      Entry("cuMemAlloc", &api.mem_alloc),
      Entry("cuMemFree", &api.mem_free),
      Entry("cuIpcGetMemHandle", &api.ipc_get_mem_handle),
      Entry("cuMemHostRegister", &api.mem_host_register),
      Entry("cuMemHostUnregister", &api.mem_host_unregister),
      Entry("cuStreamCreate", &api.stream_create),
      Entry("cuStreamDestroy", &api.stream_destroy),
      Entry("cuStreamSynchronize", &api.stream_synchronize),
      Entry("cuEventCreate", &api.event_create),
      Entry("cuEventRecord", &api.event_record),
      Entry("cuEventSynchronize", &api.event_synchronize),
      Entry("cuEventDestroy", &api.event_destroy),
      Entry("cuMemsetD8Async", &api.memset_d8_async),
      Entry("cuMemcpyHtoDAsync", &api.memcpy_htod_async),
      Entry("cuMemcpyDtoH", &api.memcpy_dtoh),
  };
  for (const EntryPoint& entry : required) {
    if (!ResolveEntry(get_proc, entry)) {
      return absl::UnavailableError(absl::StrCat(
          "no usable CUDA driver: entry point ", entry.symbol, " not found"));
    }
  }
  // VMM is all or nothing: without any one of these the device falls back
  // to cuMemAlloc and legacy IPC handles.
  const EntryPoint vmm[] = {
      Entry("cuMemGetAllocationGranularity",
            &api.mem_get_allocation_granularity),
      Entry("cuMemCreate", &api.mem_create),
      Entry("cuMemRelease", &api.mem_release),
      Entry("cuMemExportToShareableHandle",
            &api.mem_export_to_shareable_handle),
      Entry("cuMemAddressReserve", &api.mem_address_reserve),
      Entry("cuMemAddressFree", &api.mem_address_free),
      Entry("cuMemMap", &api.mem_map),
      Entry("cuMemUnmap", &api.mem_unmap),
      Entry("cuMemSetAccess", &api.mem_set_access),
  };
  bool has_vmm = true;
  for (const EntryPoint& entry : vmm) {
    has_vmm = ResolveEntry(get_proc, entry) && has_vmm;
  }
  if (!has_vmm) {
    for (const EntryPoint& entry : vmm) *entry.fn = nullptr;
  }
  return driver;
}

CudaDriver::~CudaDriver() { ::dlclose(library_); }

absl::Status CudaDriver::ToStatus(CUresult result,
                                  absl::string_view what) const {
  if (result == CUDA_SUCCESS) return absl::OkStatus();
  const char* name = nullptr;
  const char* text = nullptr;
  // Both leave the pointer null for codes the driver does not know.
  api_.get_error_name(result, &name);
  api_.get_error_string(result, &text);
  const std::string message =
      absl::StrCat(what, " failed: ", name != nullptr ? name : "CUDA error",
                   ": ", text != nullptr ? text : "unknown", " (", result, ")");
  switch (result) {
    case CUDA_ERROR_OUT_OF_MEMORY:
      return absl::ResourceExhaustedError(message);
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_DEINITIALIZED:
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
      return absl::UnavailableError(message);
    case CUDA_ERROR_NOT_SUPPORTED:
      return absl::UnimplementedError(message);
    case CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
      return absl::AlreadyExistsError(message);
    case CUDA_ERROR_INVALID_VALUE:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
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
  info.uuid = FormatUuid(uuid);
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
