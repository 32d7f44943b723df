#include "daemon/device/cuda_resources.h"

#include "daemon/base/logging.h"

namespace warmstart {

void LogCudaReleaseFailure(const CudaDriver& driver, CUresult result,
                           const char* what) {
  Logger("device")->error("{}", driver.ToStatus(result, what));
}

ScopedContext::ScopedContext(const CudaDriver& driver, CUcontext context)
    : driver_(driver),
      status_(driver.ToStatus(driver.api().ctx_push_current(context),
                              "cuCtxPushCurrent")) {}

ScopedContext::~ScopedContext() {
  if (!status_.ok()) return;
  CUcontext popped = nullptr;
  const CUresult result = driver_.api().ctx_pop_current(&popped);
  if (result != CUDA_SUCCESS) {
    LogCudaReleaseFailure(driver_, result, "cuCtxPopCurrent");
  }
}

}  // namespace warmstart
