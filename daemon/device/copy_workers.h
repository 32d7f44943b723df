// CopyWorkers: a few threads that run queued host copies, so that a load's
// copies into the arena run alongside each other and alongside the thread
// that issues its reads (HostDevice::CopyFromHost).
#ifndef WARMSTART_DAEMON_DEVICE_COPY_WORKERS_H_
#define WARMSTART_DAEMON_DEVICE_COPY_WORKERS_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <set>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace warmstart {

// Runs queued work in the order it was queued, up to `threads` items at
// once. The threads start with the first item, so an idle daemon runs
// none. Thread-safe. Not copyable or movable; the destructor waits for
// every queued item to finish.
class CopyWorkers {
 public:
  // REQUIRES: threads > 0.
  explicit CopyWorkers(unsigned threads) : threads_wanted_(threads) {}
  ~CopyWorkers();
  CopyWorkers(const CopyWorkers&) = delete;
  CopyWorkers& operator=(const CopyWorkers&) = delete;

  // Queues `work`, which runs on one of the threads.
  void Run(std::function<void()> work);

  // Blocks until every item queued before the call has returned and what
  // it captured is destroyed; items queued later (another load's) are not
  // waited for. WaitIdle() is WaitFor(Mark()).
  void WaitIdle() { WaitFor(Mark()); }
  // The position of the next item to be queued.
  uint64_t Mark() const;
  // Blocks until every item queued before Mark() returned `mark` is done.
  void WaitFor(uint64_t mark);

 private:
  struct Item {
    uint64_t ticket;  // The order it was queued in.
    std::function<void()> work;
  };

  void Work();
  // Whether every item with a ticket below `ticket` has finished.
  bool DoneBefore(uint64_t ticket) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const unsigned threads_wanted_;
  mutable absl::Mutex mutex_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mutex_) = 0;
  // Tickets of the items being run now.
  std::set<uint64_t> running_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_COPY_WORKERS_H_
