#include "daemon/base/watchdog.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(WatchdogTest, RunsTheFunctionWhenNotDisarmedInTime) {
  absl::Notification expired;
  Watchdog watchdog(absl::Milliseconds(1), [&] { expired.Notify(); });
  // Waits for the event, not for a time: the expiry must come.
  expired.WaitForNotification();
  EXPECT_TRUE(expired.HasBeenNotified());
}

TEST(WatchdogTest, NeverRunsOnceDisarmed) {
  std::atomic<int> runs{0};
  {
    Watchdog watchdog(absl::Hours(1), [&] { ++runs; });
    watchdog.Disarm();
    watchdog.Disarm();  // Idempotent.
  }
  EXPECT_EQ(runs.load(), 0);
}

TEST(WatchdogTest, DestructionDisarmsAndJoins) {
  std::atomic<int> runs{0};
  {
    Watchdog watchdog(absl::Hours(1), [&] { ++runs; });
  }
  EXPECT_EQ(runs.load(), 0);
}

}  // namespace
}  // namespace warmstart
