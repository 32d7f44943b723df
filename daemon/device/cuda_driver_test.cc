#include "daemon/device/cuda_driver.h"

#include <cstdlib>

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(CudaDriverTest, MissingLibraryIsAClearStatusNotACrash) {
  ::setenv("WARMSTART_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
  auto driver = CudaDriver::Load();
  ::unsetenv("WARMSTART_LIBCUDA");
  EXPECT_THAT(driver, StatusIs(absl::StatusCode::kUnavailable,
                               AllOf(StartsWith("no CUDA driver"),
                                     HasSubstr("/nonexistent/libcuda.so.1"))));
}

TEST(CudaDriverTest, LibraryWithoutDriverEntryPointsIsRefused) {
  // libz is a real shared library that is not a CUDA driver.
  ::setenv("WARMSTART_LIBCUDA", "libz.so.1", 1);
  auto driver = CudaDriver::Load();
  ::unsetenv("WARMSTART_LIBCUDA");
  EXPECT_THAT(driver, StatusIs(absl::StatusCode::kUnavailable,
                               HasSubstr("lacks cuInit")));
}

TEST(CudaDriverTest, ListsDevicesWhenAGpuIsPresent) {
  auto driver = CudaDriver::Load();
  if (!driver.ok()) GTEST_SKIP() << "no GPU here: " << driver.status();
  ASSERT_OK_AND_ASSIGN(auto devices, (*driver)->Devices());
  if (devices.empty()) GTEST_SKIP() << "driver present but no GPU";
  for (const auto& device : devices) {
    EXPECT_THAT(device.uuid, StartsWith("GPU-"));
    EXPECT_EQ(device.uuid.size(), 40u);
    EXPECT_GT(device.total_bytes, 0u);
    EXPECT_FALSE(device.name.empty());
  }
}

}  // namespace
}  // namespace warmstart
