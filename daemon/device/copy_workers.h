// CopyWorkers: a few threads that run queued host copies, so that a load's
// copies into the arena run alongside each other and alongside the thread
// that issues its reads (HostDevice::CopyFromHost).
#ifndef WARMSTART_DAEMON_DEVICE_COPY_WORKERS_H_
#define WARMSTART_DAEMON_DEVICE_COPY_WORKERS_H_

#include <deque>
#include <functional>
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

  // Blocks until every item queued so far (by any caller) has returned.
  void WaitIdle();

 private:
  void Work();

  const unsigned threads_wanted_;
  absl::Mutex mutex_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mutex_);
  int unfinished_ ABSL_GUARDED_BY(mutex_) = 0;  // Queued or running.
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_COPY_WORKERS_H_
