#include "daemon/base/watchdog.h"

#include <utility>

namespace warmstart {

Watchdog::Watchdog(absl::Duration timeout, std::function<void()> on_expiry)
    : thread_([this, timeout, on_expiry = std::move(on_expiry)] {
        if (!disarmed_.WaitForNotificationWithTimeout(timeout)) on_expiry();
      }) {}

Watchdog::~Watchdog() {
  Disarm();
  thread_.join();
}

void Watchdog::Disarm() {
  // Notify may be called once only; a second Disarm must be harmless.
  if (!disarmed_.HasBeenNotified()) disarmed_.Notify();
}

}  // namespace warmstart
