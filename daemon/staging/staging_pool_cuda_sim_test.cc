// The staging pool over the CUDA backend against the SIMULATED driver
// (tests/doubles/cuda_sim.h), on both allocation paths: a pin that fails
// part-way fails the pool and unpins every slab pinned before it.
#include "absl/status/status.h"
#include "common/testing/status_matchers.h"
#include "daemon/staging/staging_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/doubles/sim_driver.h"

namespace warmstart {
namespace {

using ::warmstart::testing::AllocationPathName;
using ::warmstart::testing::SimulatedCudaPathsTest;

using ::testing::AllOf;
using ::testing::HasSubstr;

class StagingPoolCudaSimTest : public SimulatedCudaPathsTest {};

TEST_P(StagingPoolCudaSimTest, FailedPinningFailsThePoolAndUnpinsTheRest) {
  sim_.inject("cuMemHostRegister", 3, CUDA_ERROR_OUT_OF_MEMORY);
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({4 * 65536, 65536}, device_.get()));
  EXPECT_THAT(pool->MakeResident(),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       AllOf(HasSubstr("pin slab 2 of 4"),
                             HasSubstr("cuMemHostRegister"))));
  EXPECT_EQ(sim_.registered_host_regions(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllocationPaths, StagingPoolCudaSimTest,
                         ::testing::Bool(), AllocationPathName);

}  // namespace
}  // namespace warmstart
