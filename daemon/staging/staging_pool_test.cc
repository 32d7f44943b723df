#include "daemon/staging/staging_pool.h"

#include <atomic>
#include <cstdint>
#include <thread>

#include "common/testing/status_matchers.h"
#include "daemon/device/host_device.h"
#include "daemon/device/testing/fault_injecting_device.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSlab = 1 << 20;

TEST(StagingPoolTest, SlabsArePageAlignedDistinctAndRegistered) {
  HostDevice host(HostDeviceOptions{});
  testing::FaultInjectingDevice device(&host, {});
  {
    ASSERT_OK_AND_ASSIGN(auto pool,
                         StagingPool::Create({4 * kSlab, kSlab}, &device));
    EXPECT_EQ(pool->slab_count(), 4);
    EXPECT_EQ(device.registered_regions(), 4);
    auto regions = pool->Regions();
    ASSERT_EQ(regions.size(), 4u);
    for (const iovec& region : regions) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(region.iov_base) % 4096, 0u);
      EXPECT_EQ(region.iov_len, kSlab);
    }
    StagingPool::Slab a = pool->Acquire();
    StagingPool::Slab b = pool->Acquire();
    EXPECT_NE(a.data(), b.data());
    EXPECT_NE(a.index(), b.index());
    EXPECT_EQ(pool->free_slabs(), 2);
    a.data()[kSlab - 1] = 1;  // Writable to the end.
  }
  EXPECT_EQ(device.registered_regions(), 0);
}

TEST(StagingPoolTest, SlabsComeBackWhenDestroyedOrMoved) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({2 * kSlab, kSlab}, &device));
  {
    StagingPool::Slab slab = pool->Acquire();
    StagingPool::Slab moved = std::move(slab);
    EXPECT_FALSE(slab.valid());  // NOLINT(bugprone-use-after-move)
    EXPECT_TRUE(moved.valid());
    EXPECT_EQ(pool->free_slabs(), 1);
  }
  EXPECT_EQ(pool->free_slabs(), 2);
}

TEST(StagingPoolTest, TryAcquireReturnsInvalidWhenNoneIsFree) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto pool, StagingPool::Create({kSlab, kSlab}, &device));
  StagingPool::Slab only = pool->TryAcquire();
  EXPECT_TRUE(only.valid());
  EXPECT_FALSE(pool->TryAcquire().valid());
  only = StagingPool::Slab();
  EXPECT_TRUE(pool->TryAcquire().valid());
}

TEST(StagingPoolTest, AcquireWaitsForAReturnedSlabAndNeverAllocates) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({2 * kSlab, kSlab}, &device));
  std::atomic<int> max_in_use{0};
  std::atomic<int> in_use{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 6; ++t) {
    workers.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        StagingPool::Slab slab = pool->Acquire();
        int now = ++in_use;
        int seen = max_in_use.load();
        while (now > seen && !max_in_use.compare_exchange_weak(seen, now)) {
        }
        slab.data()[0] = static_cast<char>(i);
        --in_use;
      }
    });
  }
  for (auto& worker : workers) worker.join();
  EXPECT_LE(max_in_use.load(), 2);
  EXPECT_EQ(pool->free_slabs(), 2);
}

TEST(StagingPoolTest, BadSizesAreRefused) {
  HostDevice device(HostDeviceOptions{});
  EXPECT_THAT(StagingPool::Create({kSlab, 1000}, &device),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("multiples of 4096")));
  EXPECT_THAT(StagingPool::Create({kSlab, 2 * kSlab}, &device),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("at least one slab")));
}

TEST(StagingPoolTest, PinFailureReleasesWhatWasPinned) {
  HostDevice host(HostDeviceOptions{});
  testing::FaultInjectingDevice device(&host, {.fail_register_at = 3});
  EXPECT_THAT(
      StagingPool::Create({4 * kSlab, kSlab}, &device),
      StatusIs(absl::StatusCode::kInternal, HasSubstr("pin slab 2 of 4")));
  EXPECT_EQ(device.registered_regions(), 0);
}

}  // namespace
}  // namespace warmstart
