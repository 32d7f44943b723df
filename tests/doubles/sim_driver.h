// Test support for the SIMULATED CUDA driver (cuda_sim.h): loading it in
// place of libcuda.so.1, binding its test controls, and reading simulated
// device memory. For tests that carry ":libcuda_sim.so" (//tests/doubles)
// in their data.
//
// Ownership: LoadSimulatedDriver's caller owns the driver; a
// SimulatedCudaTest owns its driver and devices and releases them in
// TearDown, devices first.
// Thread safety: LoadSimulatedDriver sets and unsets environment variables:
// call it from the test's main thread only.
#ifndef WARMSTART_TESTS_DOUBLES_SIM_DRIVER_H_
#define WARMSTART_TESTS_DOUBLES_SIM_DRIVER_H_

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/testing/status_matchers.h"
#include "daemon/device/cuda_device.h"
#include "daemon/device/cuda_driver.h"
#include "daemon/device/device.h"
#include "gtest/gtest.h"
#include "tests/doubles/cuda_sim.h"

namespace warmstart {
namespace testing {

// Where the simulated driver library lies in the test's runfiles.
std::string SimLibraryPath();

// Loads the simulated driver; `options` (WARMSTART_SIM_* variables) are set
// for the cuInit that Load makes and removed afterwards.
absl::StatusOr<std::unique_ptr<CudaDriver>> LoadSimulatedDriver(
    const std::map<std::string, std::string>& options = {});

// The simulation's test controls, from the library the driver loaded.
struct SimControls {
  decltype(&warmstart_sim_inject) inject = nullptr;
  decltype(&warmstart_sim_pause_streams) pause_streams = nullptr;
  decltype(&warmstart_sim_live_allocations) live_allocations = nullptr;
  decltype(&warmstart_sim_live_address_ranges) live_address_ranges = nullptr;
  decltype(&warmstart_sim_registered_host_regions) registered_host_regions =
      nullptr;
  decltype(&warmstart_sim_outstanding_copies) outstanding_copies = nullptr;
  decltype(&warmstart_sim_live_streams) live_streams = nullptr;
  decltype(&warmstart_sim_live_events) live_events = nullptr;
  decltype(&warmstart_sim_context_retains) context_retains = nullptr;
  decltype(&warmstart_sim_pageable_copies) pageable_copies = nullptr;
};

// Binds every control (a gtest failure for one that is missing).
// REQUIRES: LoadSimulatedDriver has loaded the library.
void BindSim(SimControls* sim);

// Simulated device memory is host memory: the bytes of a CudaAllocation.
const char* SimulatedBytes(const DeviceAllocation& allocation);

// Opens the simulated driver and GPU; checks when the test ends that the
// device gave everything back to the driver.
class SimulatedCudaTest : public ::testing::Test {
 protected:
  void Open(const std::map<std::string, std::string>& options,
            CudaDeviceOptions device_options = {}) {
    ASSERT_OK_AND_ASSIGN(driver_, LoadSimulatedDriver(options));
    ASSERT_NO_FATAL_FAILURE(BindSim(&sim_));
    ASSERT_OK_AND_ASSIGN(device_,
                         CudaDevice::Create(driver_.get(), 0, device_options));
  }

  // Opens `count` simulated GPUs (WARMSTART_SIM_DEVICES): device_ is
  // ordinal 0, others_ owns the rest, devices_ lists all in ordinal order.
  void OpenDevices(int count) {
    ASSERT_NO_FATAL_FAILURE(
        Open({{"WARMSTART_SIM_DEVICES", std::to_string(count)}}));
    devices_.push_back(device_.get());
    for (int ordinal = 1; ordinal < count; ++ordinal) {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<CudaDevice> device,
                           CudaDevice::Create(driver_.get(), ordinal, {}));
      devices_.push_back(device.get());
      others_.push_back(std::move(device));
    }
  }

  void TearDown() override {
    devices_.clear();
    others_.clear();
    device_.reset();
    if (sim_.live_allocations != nullptr) {
      EXPECT_EQ(sim_.live_allocations(), 0);
      EXPECT_EQ(sim_.live_address_ranges(), 0);
      EXPECT_EQ(sim_.registered_host_regions(), 0);
      EXPECT_EQ(sim_.outstanding_copies(), 0);
      EXPECT_EQ(sim_.live_streams(), 0);
      EXPECT_EQ(sim_.live_events(), 0);
      EXPECT_EQ(sim_.context_retains(), 0);
    }
    driver_.reset();
  }

  std::unique_ptr<CudaDriver> driver_;
  SimControls sim_;
  std::unique_ptr<CudaDevice> device_;
  std::vector<Device*> devices_;
  std::vector<std::unique_ptr<CudaDevice>> others_;
};

// A test on both allocation paths; the parameter: VMM (true) or cuMemAlloc
// with legacy IPC (false).
class SimulatedCudaPathsTest : public SimulatedCudaTest,
                               public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(
        Open({{"WARMSTART_SIM_VMM", GetParam() ? "1" : "0"}}));
  }
};

// Names SimulatedCudaPathsTest's parameter in test names: "vmm", "legacy".
std::string AllocationPathName(const ::testing::TestParamInfo<bool>& info);

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_TESTS_DOUBLES_SIM_DRIVER_H_
