#include "daemon/staging/staging_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/device/host_device.h"
#include "daemon/io/read_engine.h"
#include "tests/doubles/fault_injecting_device.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSlab = 1 << 20;

// Pages of the pool's slabs the kernel holds in memory right now.
uint64_t ResidentPages(const StagingPool& pool) {
  uint64_t resident = 0;
  for (const iovec& region : pool.Regions()) {
    std::vector<unsigned char> pages(region.iov_len / 4096);
    if (::mincore(region.iov_base, region.iov_len, pages.data()) != 0) {
      ADD_FAILURE() << "mincore: " << errno;
      return 0;
    }
    for (unsigned char page : pages) resident += page & 1;
  }
  return resident;
}

// A clock the test moves by hand.
struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1000);
  std::function<absl::Time()> source() {
    return [this] { return now; };
  }
};

StagingPoolOptions QuietAfter30s(uint64_t total, FakeClock& clock) {
  StagingPoolOptions options;
  options.total_bytes = total;
  options.slab_bytes = kSlab;
  options.release_after = absl::Seconds(30);
  options.now = clock.source();
  return options;
}

TEST(StagingPoolTest, SlabsArePageAlignedDistinctAndRegistered) {
  HostDevice host(HostDeviceOptions{});
  testing::FaultInjectingDevice device(&host, {});
  {
    ASSERT_OK_AND_ASSIGN(auto pool,
                         StagingPool::Create({4 * kSlab, kSlab}, &device));
    EXPECT_EQ(pool->slab_count(), 4);
    ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency,
                         pool->MakeResident());
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

TEST(StagingPoolTest, SlabsLieInHugePageAlignedAdvisedMemory) {
  // 2 MiB pages make O_DIRECT reads into the slabs larger block requests
  // (ReadMemory); the advice is taken wherever the kernel has THP.
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({4 * kSlab, kSlab}, &device));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->Regions()[0].iov_base) %
                ReadMemory::kHugePageBytes,
            0u);
  EXPECT_EQ(pool->huge_page_advised(),
            ::access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0);
  ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency, pool->MakeResident());
  const std::optional<uint64_t> huge = pool->HugePageBytes();
  ASSERT_TRUE(huge.has_value());
  EXPECT_LE(*huge, 4 * kSlab);
}

TEST(StagingPoolTest, SlabsComeBackWhenDestroyedOrMoved) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({2 * kSlab, kSlab}, &device));
  ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency, pool->MakeResident());
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
  ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency, pool->MakeResident());
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
  ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency, pool->MakeResident());
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
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({4 * kSlab, kSlab}, &device));
  EXPECT_THAT(pool->MakeResident(), StatusIs(absl::StatusCode::kInternal,
                                             HasSubstr("pin slab 2 of 4")));
  EXPECT_EQ(device.registered_regions(), 0);
  EXPECT_EQ(pool->resident_bytes(), 0u);
  EXPECT_EQ(ResidentPages(*pool), 0u);
  // The fault was once: the next load pins the whole pool.
  ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency, pool->MakeResident());
  EXPECT_EQ(device.registered_regions(), 4);
}

TEST(StagingPoolTest, NothingIsResidentOrPinnedUntilALoadNeedsIt) {
  HostDevice host(HostDeviceOptions{});
  testing::FaultInjectingDevice device(&host, {});
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({4 * kSlab, kSlab}, &device));
  EXPECT_EQ(ResidentPages(*pool), 0u);
  EXPECT_EQ(pool->resident_bytes(), 0u);
  EXPECT_EQ(device.registered_regions(), 0);
  ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency, pool->MakeResident());
  EXPECT_EQ(ResidentPages(*pool), 4 * kSlab / 4096);
  EXPECT_EQ(pool->resident_bytes(), 4 * kSlab);
  EXPECT_EQ(device.registered_regions(), 4);
}

TEST(StagingPoolTest, AQuietPoolReturnsItsMemoryAndComesBackForTheNextLoad) {
  HostDevice host(HostDeviceOptions{});
  testing::FaultInjectingDevice device(&host, {});
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(
      auto pool, StagingPool::Create(QuietAfter30s(2 * kSlab, clock), &device));
  EXPECT_FALSE(pool->ReleaseIfQuiet()) << "never resident: nothing to return";
  {
    ASSERT_OK_AND_ASSIGN(StagingPool::Residency load, pool->MakeResident());
    StagingPool::Slab slab = pool->Acquire();
    std::memset(slab.data(), 0x5a, kSlab);
    clock.now += absl::Hours(1);
    EXPECT_FALSE(pool->ReleaseIfQuiet()) << "a load is using it";
  }
  clock.now += absl::Seconds(29);
  EXPECT_FALSE(pool->ReleaseIfQuiet()) << "quiet for 29 s of 30";
  EXPECT_EQ(pool->resident_bytes(), 2 * kSlab);
  clock.now += absl::Seconds(1);
  EXPECT_TRUE(pool->ReleaseIfQuiet());
  EXPECT_FALSE(pool->ReleaseIfQuiet()) << "released already";
  EXPECT_EQ(pool->resident_bytes(), 0u);
  EXPECT_EQ(ResidentPages(*pool), 0u);
  EXPECT_EQ(device.registered_regions(), 0) << "unpinned before released";

  ASSERT_OK_AND_ASSIGN(StagingPool::Residency next, pool->MakeResident());
  EXPECT_EQ(device.registered_regions(), 2);
  EXPECT_EQ(ResidentPages(*pool), 2 * kSlab / 4096);
  StagingPool::Slab slab = pool->Acquire();
  EXPECT_EQ(slab.data()[0], 0) << "fresh pages, not the old ones";
  slab.data()[kSlab - 1] = 1;
}

TEST(StagingPoolTest, ASlabOnLoanKeepsThePoolResident) {
  HostDevice device(HostDeviceOptions{});
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(
      auto pool, StagingPool::Create(QuietAfter30s(2 * kSlab, clock), &device));
  StagingPool::Slab kept;
  {
    ASSERT_OK_AND_ASSIGN(StagingPool::Residency load, pool->MakeResident());
    kept = pool->Acquire();
  }
  clock.now += absl::Minutes(5);
  EXPECT_FALSE(pool->ReleaseIfQuiet());
  kept = StagingPool::Slab();
  EXPECT_TRUE(pool->ReleaseIfQuiet());
}

TEST(StagingPoolTest, InfiniteReleaseAfterKeepsThePool) {
  HostDevice device(HostDeviceOptions{});
  FakeClock clock;
  StagingPoolOptions options = QuietAfter30s(kSlab, clock);
  options.release_after = absl::InfiniteDuration();
  ASSERT_OK_AND_ASSIGN(auto pool, StagingPool::Create(options, &device));
  { ASSERT_OK_AND_ASSIGN(auto load, pool->MakeResident()); }
  clock.now += absl::Hours(24 * 365);
  EXPECT_FALSE(pool->ReleaseIfQuiet());
  EXPECT_EQ(pool->resident_bytes(), kSlab);
}

TEST(StagingPoolDeathTest, ASlabWithoutAResidencyAborts) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto pool, StagingPool::Create({kSlab, kSlab}, &device));
  EXPECT_DEATH(pool->TryAcquire(), "without a Residency");
}

// The io_uring engine reads into the pool's fixed buffers; after a release
// and a new residency it must read into the new pages, not the old pinned
// ones the kernel kept for the first registration.
TEST(StagingPoolTest, FixedBufferReadsLandInTheSlabsAfterARelease) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("weights");
  std::string contents(kSlab, '\0');
  for (size_t i = 0; i < contents.size(); ++i) {
    contents[i] = static_cast<char>(i * 7 + i / 4096);
  }
  std::ofstream(path, std::ios::binary) << contents;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ReadEngineOptions engine_options;
  engine_options.kind = ReadEngineOptions::Kind::kIoUring;
  absl::StatusOr<std::unique_ptr<ReadEngine>> engine =
      CreateReadEngine(engine_options);
  if (!engine.ok()) GTEST_SKIP() << "no io_uring here: " << engine.status();
  HostDevice device(HostDeviceOptions{});
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(
      auto pool, StagingPool::Create(QuietAfter30s(2 * kSlab, clock), &device,
                                     engine->get()));
  for (int load = 0; load < 3; ++load) {
    SCOPED_TRACE(load);
    {
      ASSERT_OK_AND_ASSIGN(StagingPool::Residency residency,
                           pool->MakeResident());
      StagingPool::Slab slab = pool->Acquire();
      absl::Notification done;
      absl::StatusOr<uint64_t> result;
      (*engine)->Submit({fd, 0, kSlab, slab.data(), path},
                        [&](absl::StatusOr<uint64_t> r) {
                          result = std::move(r);
                          done.Notify();
                        });
      done.WaitForNotification();
      ASSERT_OK(result.status());
      ASSERT_EQ(*result, kSlab);
      EXPECT_EQ(std::memcmp(slab.data(), contents.data(), kSlab), 0);
    }
    clock.now += absl::Seconds(30);
    ASSERT_TRUE(pool->ReleaseIfQuiet());
    EXPECT_EQ(ResidentPages(*pool), 0u);
  }
  pool.reset();
  ::close(fd);
}

}  // namespace
}  // namespace warmstart
