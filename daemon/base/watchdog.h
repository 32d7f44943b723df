// Watchdog: runs a function once if it has not been disarmed by a deadline.
//
// The daemon arms one when it starts to shut down, so that a stop that
// cannot complete (a handler stuck in a system call, say) ends the process
// after a bound instead of never: a supervisor then restarts it.
//
// Ownership: move-only in spirit (neither copyable nor movable); owns the
// thread that waits. Thread safety: Disarm may be called from any thread;
// the destructor disarms and joins, so `on_expiry` never runs after it.
#ifndef WARMSTART_DAEMON_BASE_WATCHDOG_H_
#define WARMSTART_DAEMON_BASE_WATCHDOG_H_

#include <functional>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace warmstart {

class Watchdog {
 public:
  // Starts waiting: `on_expiry` runs on the watchdog's thread once `timeout`
  // has passed without Disarm. REQUIRES: `on_expiry` is not empty.
  Watchdog(absl::Duration timeout, std::function<void()> on_expiry);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Stops the wait; `on_expiry` will not run unless it already has. Idempotent.
  void Disarm();

 private:
  absl::Notification disarmed_;
  std::thread thread_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BASE_WATCHDOG_H_
