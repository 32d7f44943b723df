#include "daemon/device/cuda_driver.h"

#include <dlfcn.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/base/status_macros.h"

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
  RETURN_IF_ERROR(
      driver->Resolve("cuDeviceGetCount",
                      reinterpret_cast<void**>(&driver->device_get_count_)));
  RETURN_IF_ERROR(driver->Resolve(
      "cuDeviceGet", reinterpret_cast<void**>(&driver->device_get_)));
  RETURN_IF_ERROR(driver->Resolve(
      "cuDeviceGetName", reinterpret_cast<void**>(&driver->device_get_name_)));
  RETURN_IF_ERROR(
      driver->Resolve("cuDeviceTotalMem",
                      reinterpret_cast<void**>(&driver->device_total_mem_)));
  RETURN_IF_ERROR(driver->Resolve(
      "cuDeviceGetUuid", reinterpret_cast<void**>(&driver->device_get_uuid_)));
  RETURN_IF_ERROR(
      driver->Resolve("cuGetErrorString",
                      reinterpret_cast<void**>(&driver->get_error_string_)));
  return driver;
}

CudaDriver::~CudaDriver() { ::dlclose(library_); }

absl::Status CudaDriver::Resolve(const char* symbol, void** fn) {
  auto get_proc = reinterpret_cast<PFN_cuGetProcAddress_v12000>(
      ::dlsym(library_, "cuGetProcAddress_v2"));
  if (get_proc == nullptr) {
    return absl::UnavailableError(
        "no usable CUDA driver: cuGetProcAddress_v2 missing (driver older "
        "than CUDA 12)");
  }
  CUdriverProcAddressQueryResult found;
  CUresult rc =
      get_proc(symbol, fn, kRequestedAbi, CU_GET_PROC_ADDRESS_DEFAULT, &found);
  if (rc != CUDA_SUCCESS || found != CU_GET_PROC_ADDRESS_SUCCESS ||
      *fn == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "no usable CUDA driver: entry point ", symbol, " not found"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CudaDeviceInfo>> CudaDriver::Devices() const {
  auto check = [this](CUresult rc, const char* what) -> absl::Status {
    if (rc == CUDA_SUCCESS) return absl::OkStatus();
    const char* text = nullptr;
    get_error_string_(rc, &text);
    return absl::InternalError(absl::StrCat(
        what, " failed: ", text != nullptr ? text : "?", " (", rc, ")"));
  };
  int count = 0;
  RETURN_IF_ERROR(check(device_get_count_(&count), "cuDeviceGetCount"));
  std::vector<CudaDeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    CUdevice device;
    RETURN_IF_ERROR(check(device_get_(&device, i), "cuDeviceGet"));
    CudaDeviceInfo info;
    info.ordinal = i;
    char name[256] = {};
    RETURN_IF_ERROR(check(device_get_name_(name, sizeof(name) - 1, device),
                          "cuDeviceGetName"));
    info.name = name;
    size_t total = 0;
    RETURN_IF_ERROR(
        check(device_total_mem_(&total, device), "cuDeviceTotalMem"));
    info.total_bytes = total;
    CUuuid uuid;
    RETURN_IF_ERROR(check(device_get_uuid_(&uuid, device), "cuDeviceGetUuid"));
    info.uuid = FormatUuid(uuid);
    devices.push_back(std::move(info));
  }
  return devices;
}

}  // namespace warmstart
