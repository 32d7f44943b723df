#include "daemon/device/copy_workers.h"

#include <utility>

namespace warmstart {

CopyWorkers::~CopyWorkers() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
    threads.swap(threads_);
  }
  // Each thread leaves only once the queue is empty, so nothing queued is
  // dropped.
  for (std::thread& thread : threads) thread.join();
}

void CopyWorkers::Run(std::function<void()> work) {
  absl::MutexLock lock(&mutex_);
  while (threads_.size() < threads_wanted_) {
    threads_.emplace_back([this] { Work(); });
  }
  queue_.push_back(std::move(work));
  ++unfinished_;
}

void CopyWorkers::WaitIdle() {
  absl::MutexLock lock(&mutex_);
  mutex_.Await(absl::Condition(
      +[](int* unfinished) { return *unfinished == 0; }, &unfinished_));
}

void CopyWorkers::Work() {
  for (;;) {
    std::function<void()> work;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(
          +[](CopyWorkers* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // Stopping, and nothing is left.
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work();
    absl::MutexLock lock(&mutex_);
    --unfinished_;
  }
}

}  // namespace warmstart
