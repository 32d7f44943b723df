#include "common/cuda_driver_loader.h"

#include <dlfcn.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace warmstart {

absl::StatusOr<CudaDriverLibrary> OpenCudaDriver() {
  CudaDriverLibrary library;
  const char* override_path = std::getenv("WARMSTART_LIBCUDA");
  library.path = override_path != nullptr ? override_path : "libcuda.so.1";
  library.handle = ::dlopen(library.path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library.handle == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load ", library.path, ": ", ::dlerror()));
  }
  library.init =
      reinterpret_cast<PFN_cuInit_v2000>(::dlsym(library.handle, "cuInit"));
  library.get_proc = reinterpret_cast<PFN_cuGetProcAddress_v12000>(
      ::dlsym(library.handle, "cuGetProcAddress_v2"));
  if (library.init == nullptr || library.get_proc == nullptr) {
    ::dlclose(library.handle);
    return absl::FailedPreconditionError(
        absl::StrCat(library.path,
                     " lacks cuInit or cuGetProcAddress_v2 (a driver older "
                     "than CUDA 12)"));
  }
  return library;
}

const char* ResolveCudaEntryPoints(PFN_cuGetProcAddress_v12000 get_proc,
                                   absl::Span<const CudaEntryPoint> group) {
  const char* missing = nullptr;
  for (const CudaEntryPoint& entry : group) {
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    const CUresult rc = get_proc(entry.symbol, entry.fn, kCudaRequestedAbi,
                                 CU_GET_PROC_ADDRESS_DEFAULT, &found);
    if ((rc != CUDA_SUCCESS || found != CU_GET_PROC_ADDRESS_SUCCESS ||
         *entry.fn == nullptr) &&
        missing == nullptr) {
      missing = entry.symbol;
    }
  }
  // A group is used together (VMM, IPC): half of one is none of it.
  if (missing != nullptr) {
    for (const CudaEntryPoint& entry : group) *entry.fn = nullptr;
  }
  return missing;
}

std::string FormatGpuUuid(const CUuuid& uuid) {
  const auto* b = reinterpret_cast<const unsigned char*>(uuid.bytes);
  return absl::StrFormat(
      "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%"
      "02x",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
      b[12], b[13], b[14], b[15]);
}

std::string CudaErrorMessage(PFN_cuGetErrorName_v6000 get_error_name,
                             PFN_cuGetErrorString_v6000 get_error_string,
                             CUresult result, absl::string_view what) {
  const char* name = nullptr;
  const char* text = nullptr;
  // Both leave the pointer null for codes the driver does not know.
  if (get_error_name != nullptr) get_error_name(result, &name);
  if (get_error_string != nullptr) get_error_string(result, &text);
  return absl::StrCat(what, " failed: ", name != nullptr ? name : "CUDA error",
                      ": ", text != nullptr ? text : "unknown", " (", result,
                      ")");
}

absl::Status CudaResultToStatus(PFN_cuGetErrorName_v6000 get_error_name,
                                PFN_cuGetErrorString_v6000 get_error_string,
                                CUresult result, absl::string_view what,
                                absl::StatusCode no_gpu_code) {
  if (result == CUDA_SUCCESS) return absl::OkStatus();
  const std::string message =
      CudaErrorMessage(get_error_name, get_error_string, result, what);
  switch (result) {
    case CUDA_ERROR_OUT_OF_MEMORY:
      return absl::ResourceExhaustedError(message);
    case CUDA_ERROR_INVALID_VALUE:
      return absl::InvalidArgumentError(message);
    case CUDA_ERROR_NOT_SUPPORTED:
      return absl::UnimplementedError(message);
    case CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
      return absl::AlreadyExistsError(message);
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_DEINITIALIZED:
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
      return absl::Status(no_gpu_code, message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace warmstart
