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
  queue_.push_back(Item{next_ticket_++, std::move(work)});
}

bool CopyWorkers::DoneBefore(uint64_t ticket) const {
  // Items start in ticket order, so the unfinished ones are those running
  // and those still queued.
  return (queue_.empty() || queue_.front().ticket >= ticket) &&
         (running_.empty() || *running_.begin() >= ticket);
}

uint64_t CopyWorkers::Mark() const {
  absl::MutexLock lock(&mutex_);
  return next_ticket_;
}

void CopyWorkers::WaitFor(uint64_t mark) {
  absl::MutexLock lock(&mutex_);
  std::pair<const CopyWorkers*, uint64_t> wait{this, mark};
  mutex_.Await(absl::Condition(
      +[](std::pair<const CopyWorkers*, uint64_t>* wait)
           ABSL_NO_THREAD_SAFETY_ANALYSIS {
             return wait->first->DoneBefore(wait->second);
           },
      &wait));
}

void CopyWorkers::Work() {
  for (;;) {
    Item item;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(
          +[](CopyWorkers* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // Stopping, and nothing is left.
      item = std::move(queue_.front());
      queue_.pop_front();
      running_.insert(item.ticket);
    }
    item.work();
    // Destroyed before it stops counting: what it captured (a slab, a
    // callback) must be gone once WaitIdle returns.
    item.work = nullptr;
    absl::MutexLock lock(&mutex_);
    running_.erase(item.ticket);
  }
}

}  // namespace warmstart
