#include "daemon/device/copy_workers.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(CopyWorkersTest, RunsEveryItemOffTheCallersThreadAndWaitIdleWaits) {
  CopyWorkers workers(2);
  std::atomic<int> done{0};
  std::atomic<int> on_caller{0};
  const std::thread::id caller = std::this_thread::get_id();
  for (int i = 0; i < 100; ++i) {
    workers.Run([&] {
      if (std::this_thread::get_id() == caller) ++on_caller;
      ++done;
    });
  }
  workers.WaitIdle();
  EXPECT_EQ(done, 100);
  EXPECT_EQ(on_caller, 0);
}

TEST(CopyWorkersTest, RunsAsManyItemsAtOnceAsItHasThreads) {
  // Each of the first two items waits for the other to start: with fewer
  // than two threads the wait times out.
  CopyWorkers workers(2);
  absl::Notification first_started, second_started;
  std::atomic<bool> first_saw{false}, second_saw{false};
  workers.Run([&] {
    first_started.Notify();
    first_saw =
        second_started.WaitForNotificationWithTimeout(absl::Seconds(30));
  });
  workers.Run([&] {
    second_started.Notify();
    second_saw =
        first_started.WaitForNotificationWithTimeout(absl::Seconds(30));
  });
  workers.WaitIdle();
  EXPECT_TRUE(first_saw);
  EXPECT_TRUE(second_saw);
}

TEST(CopyWorkersTest, OneThreadRunsItemsInTheOrderQueued) {
  CopyWorkers workers(1);
  absl::Mutex mutex;
  std::vector<int> order;
  for (int i = 0; i < 50; ++i) {
    workers.Run([&, i] {
      absl::MutexLock lock(&mutex);
      order.push_back(i);
    });
  }
  workers.WaitIdle();
  absl::MutexLock lock(&mutex);
  ASSERT_EQ(order.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(order[i], i);
}

TEST(CopyWorkersTest, DestructionFinishesWhatWasQueued) {
  std::atomic<int> done{0};
  {
    CopyWorkers workers(2);
    for (int i = 0; i < 20; ++i) {
      workers.Run([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ++done;
      });
    }
  }
  EXPECT_EQ(done, 20);
}

TEST(CopyWorkersTest, WaitingDoesNotWaitForItemsQueuedAfterTheMark) {
  // Another load's copy, queued after this load's mark, holds a thread
  // until the test releases it, which it does only once the wait returned:
  // a wait that included it would leave it to time out instead.
  CopyWorkers workers(2);
  std::atomic<bool> early_done{false};
  workers.Run([&] { early_done = true; });
  const uint64_t mark = workers.Mark();
  absl::Notification release_late;
  std::atomic<bool> released_in_time{false};
  workers.Run([&] {
    released_in_time =
        release_late.WaitForNotificationWithTimeout(absl::Seconds(30));
  });
  workers.WaitFor(mark);
  EXPECT_TRUE(early_done);
  release_late.Notify();
  workers.WaitIdle();
  EXPECT_TRUE(released_in_time);
}

TEST(CopyWorkersTest, WaitingForAMarkWaitsForEveryItemBeforeIt) {
  CopyWorkers workers(2);
  std::atomic<int> done{0};
  for (int i = 0; i < 40; ++i) {
    workers.Run([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      ++done;
    });
  }
  workers.WaitFor(workers.Mark());
  EXPECT_EQ(done, 40);
}

TEST(CopyWorkersTest, WaitIdleWithNothingQueuedReturns) {
  CopyWorkers workers(2);
  workers.WaitIdle();
}

}  // namespace
}  // namespace warmstart
