#include "tests/doubles/sim_driver.h"

#include <dlfcn.h>

#include <cstdlib>

#include "daemon/device/cuda_device.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace testing {
namespace {

template <typename Fn>
void Bind(void* library, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(::dlsym(library, name));
  ASSERT_NE(*fn, nullptr) << name << ": " << ::dlerror();
}

}  // namespace

std::string SimLibraryPath() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  return std::string(srcdir != nullptr ? srcdir : ".") + "/" +
         (workspace != nullptr ? workspace : "warmstart") +
         "/tests/doubles/libcuda_sim.so";
}

absl::StatusOr<std::unique_ptr<CudaDriver>> LoadSimulatedDriver(
    const std::map<std::string, std::string>& options) {
  ::setenv("WARMSTART_LIBCUDA", SimLibraryPath().c_str(), 1);
  for (const auto& [name, value] : options) {
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  auto driver = CudaDriver::Load();
  for (const auto& [name, value] : options) ::unsetenv(name.c_str());
  ::unsetenv("WARMSTART_LIBCUDA");
  return driver;
}

void BindSim(SimControls* sim) {
  void* library = ::dlopen(SimLibraryPath().c_str(), RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(library, nullptr) << ::dlerror();
  Bind(library, "warmstart_sim_inject", &sim->inject);
  Bind(library, "warmstart_sim_pause_streams", &sim->pause_streams);
  Bind(library, "warmstart_sim_live_allocations", &sim->live_allocations);
  Bind(library, "warmstart_sim_live_address_ranges", &sim->live_address_ranges);
  Bind(library, "warmstart_sim_registered_host_regions",
       &sim->registered_host_regions);
  Bind(library, "warmstart_sim_outstanding_copies", &sim->outstanding_copies);
  Bind(library, "warmstart_sim_live_streams", &sim->live_streams);
  Bind(library, "warmstart_sim_live_events", &sim->live_events);
  Bind(library, "warmstart_sim_context_retains", &sim->context_retains);
  Bind(library, "warmstart_sim_pageable_copies", &sim->pageable_copies);
  // The library is linked with -z nodelete: the functions stay valid.
  ::dlclose(library);
}

std::string AllocationPathName(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "vmm" : "legacy";
}

const char* SimulatedBytes(const DeviceAllocation& allocation) {
  return reinterpret_cast<const char*>(
      static_cast<const CudaAllocation&>(allocation).device_pointer());
}

}  // namespace testing
}  // namespace warmstart
