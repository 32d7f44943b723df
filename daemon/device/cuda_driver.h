// CudaDriver: the CUDA driver API, loaded at run time.
//
// The daemon must start on machines without a GPU or driver, so nothing links
// libcuda.so.1: Load() dlopens it and resolves entry points through
// cuGetProcAddress. A missing driver is a status ("no CUDA driver: ..."),
// never a crash. The library can be overridden with $WARMSTART_LIBCUDA.
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

#include "absl/status/statusor.h"

namespace warmstart {

struct CudaDeviceInfo {
  int ordinal = 0;
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
  std::string name;
  uint64_t total_bytes = 0;
};

class CudaDriver {
 public:
  // Loads the driver library and initialises it. Fails with Unavailable
  // ("no CUDA driver: ...") when the library is missing or cuInit fails.
  static absl::StatusOr<std::unique_ptr<CudaDriver>> Load();

  ~CudaDriver();
  CudaDriver(const CudaDriver&) = delete;
  CudaDriver& operator=(const CudaDriver&) = delete;

  // The GPUs the driver sees (possibly none).
  absl::StatusOr<std::vector<CudaDeviceInfo>> Devices() const;

  int driver_version() const { return driver_version_; }

 private:
  explicit CudaDriver(void* library) : library_(library) {}

  // Resolves `symbol` into `*fn`, or fails naming the symbol.
  absl::Status Resolve(const char* symbol, void** fn);

  void* library_;
  int driver_version_ = 0;
  PFN_cuDeviceGetCount_v2000 device_get_count_ = nullptr;
  PFN_cuDeviceGet_v2000 device_get_ = nullptr;
  PFN_cuDeviceGetName_v2000 device_get_name_ = nullptr;
  PFN_cuDeviceTotalMem_v3020 device_total_mem_ = nullptr;
  PFN_cuDeviceGetUuid_v11040 device_get_uuid_ = nullptr;
  PFN_cuGetErrorString_v6000 get_error_string_ = nullptr;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_CUDA_DRIVER_H_
