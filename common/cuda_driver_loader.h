// Loading the CUDA driver at run time: the pieces the daemon's CudaDriver
// (daemon/device/cuda_driver.h) and the client's importer
// (client/cuda_import.cc) share, so that both open the same library,
// resolve entry points at the same ABI and, above all, format a GPU's UUID
// identically: the daemon names a device by that string and the client finds
// the device by it.
//
// Nothing links libcuda.so.1; OpenCudaDriver dlopens it (or the library
// $WARMSTART_LIBCUDA names: the tests' simulated driver). Pure functions
// apart from OpenCudaDriver's dlopen; thread-safe.
#ifndef WARMSTART_COMMON_CUDA_DRIVER_LOADER_H_
#define WARMSTART_COMMON_CUDA_DRIVER_LOADER_H_

#include <cuda.h>
#include <cudaTypedefs.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace warmstart {

// Entry points are requested at the ABI of CUDA 12.0, the oldest driver
// series supported; newer drivers serve that ABI too, and daemon and client
// then see the same cuDeviceGetUuid.
inline constexpr int kCudaRequestedAbi = 12000;

// The driver library as opened by OpenCudaDriver. Not an owner: the handle
// stays open until the caller dlcloses it (the client never does).
struct CudaDriverLibrary {
  void* handle = nullptr;
  std::string path;  // What was opened, for messages.
  PFN_cuInit_v2000 init = nullptr;
  PFN_cuGetProcAddress_v12000 get_proc = nullptr;
};

// dlopens $WARMSTART_LIBCUDA when set, else libcuda.so.1, and finds cuInit
// and cuGetProcAddress_v2 (it does not call cuInit). FailedPrecondition
// "cannot load <path>: <dlerror>" or "<path> lacks cuInit or
// cuGetProcAddress_v2 (a driver older than CUDA 12)"; nothing stays open
// then. Callers prefix the message and pick their own code.
absl::StatusOr<CudaDriverLibrary> OpenCudaDriver();

// One entry point to resolve and where its address goes.
struct CudaEntryPoint {
  const char* symbol;
  void** fn;
};

template <typename Fn>
CudaEntryPoint CudaEntry(const char* symbol, Fn* fn) {
  return {symbol, reinterpret_cast<void**>(fn)};
}

// Resolves every entry of `group` through `get_proc` at kCudaRequestedAbi.
// All or nothing: returns null when all were found; otherwise sets every
// entry of the group to null and returns the first symbol the driver lacks.
const char* ResolveCudaEntryPoints(PFN_cuGetProcAddress_v12000 get_proc,
                                   absl::Span<const CudaEntryPoint> group);

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" in lower-case hex, as
// nvidia-smi names a GPU.
std::string FormatGpuUuid(const CUuuid& uuid);

// "<what> failed: <error name>: <error text> (<code>)", asking the driver
// for the name and text; "CUDA error" and "unknown" where it knows none or
// the entry point is null. REQUIRES: result != CUDA_SUCCESS.
std::string CudaErrorMessage(PFN_cuGetErrorName_v6000 get_error_name,
                             PFN_cuGetErrorString_v6000 get_error_string,
                             CUresult result, absl::string_view what);

// The status for a driver call's result: OK for CUDA_SUCCESS, else
// CudaErrorMessage's text with a code: out of memory -> ResourceExhausted,
// invalid value -> InvalidArgument, not supported -> Unimplemented, host
// memory already registered -> AlreadyExists, no device, no or mismatched
// driver, not initialised, deinitialised or device unavailable ->
// `no_gpu_code` (each side says what that means to its callers), anything
// else -> Internal.
absl::Status CudaResultToStatus(PFN_cuGetErrorName_v6000 get_error_name,
                                PFN_cuGetErrorString_v6000 get_error_string,
                                CUresult result, absl::string_view what,
                                absl::StatusCode no_gpu_code);

}  // namespace warmstart

#endif  // WARMSTART_COMMON_CUDA_DRIVER_LOADER_H_
