// The real-GPU counterpart of sim_driver.h's SimulatedCudaPathsTest: a
// fixture that opens GPU 0 through the REAL CUDA driver on one allocation
// path, or skips the test with the reason when there is no driver, no GPU,
// or (on the VMM path) no export of VMM memory as file descriptors.
//
// Ownership: the fixture owns the driver and the device and releases them
// in TearDown, the device first.
// Thread safety: as any gtest fixture (the test's main thread).
#ifndef WARMSTART_TESTS_DOUBLES_REAL_GPU_H_
#define WARMSTART_TESTS_DOUBLES_REAL_GPU_H_

#include <memory>
#include <string>

#include "common/testing/status_matchers.h"
#include "daemon/device/cuda_device.h"
#include "daemon/device/cuda_driver.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace testing {

// The parameter: whether VMM allocations are allowed (true) or legacy
// cuMemAlloc with IPC handles is forced (false).
class RealGpuPathsTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    auto driver = CudaDriver::Load();
    if (!driver.ok()) GTEST_SKIP() << "no GPU here: " << driver.status();
    driver_ = std::move(*driver);
    ASSERT_OK_AND_ASSIGN(auto devices, driver_->Devices());
    if (devices.empty()) GTEST_SKIP() << "CUDA driver present but no GPU";
    CudaDeviceOptions options;
    options.allow_vmm = GetParam();
    ASSERT_OK_AND_ASSIGN(device_,
                         CudaDevice::Create(driver_.get(), 0, options));
    if (GetParam() && !device_->uses_vmm()) {
      GTEST_SKIP() << device_->name()
                   << " cannot export VMM memory as file descriptors";
    }
  }

  void TearDown() override {
    device_.reset();
    driver_.reset();
  }

  std::unique_ptr<CudaDriver> driver_;
  std::unique_ptr<CudaDevice> device_;
};

// Names RealGpuPathsTest's parameter in test names: "vmm", "legacy".
inline std::string GpuPathName(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "vmm" : "legacy";
}

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_TESTS_DOUBLES_REAL_GPU_H_
