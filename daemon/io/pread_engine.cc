#include "daemon/io/pread_engine.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace warmstart {
namespace {

absl::StatusOr<uint64_t> ReadFully(const ReadRequest& request) {
  uint64_t done = 0;
  while (done < request.length) {
    const size_t length =
        static_cast<size_t>(std::min(request.length - done, kMaxBytesPerCall));
    const ssize_t got = ::pread(request.fd, request.destination + done, length,
                                static_cast<off_t>(request.offset + done));
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ReadErrorStatus(errno, request, request.offset + done);
    }
    if (got == 0) break;  // The file ends here.
    done += static_cast<uint64_t>(got);
    if (done < request.length && ShortReadIsEndOfFile(request, done)) break;
  }
  return done;
}

}  // namespace

PreadEngine::PreadEngine(unsigned threads, unsigned queue_depth)
    : queue_depth_(queue_depth) {
  threads_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) {
    threads_.emplace_back(&PreadEngine::Work, this);
  }
}

PreadEngine::~PreadEngine() {
  Drain();
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

void PreadEngine::Submit(const ReadRequest& request, ReadDone done) {
  mutex_.LockWhen(absl::Condition(this, &PreadEngine::HasRoom));
  ++in_flight_;
  queue_.push_back(Task{request, std::move(done)});
  mutex_.Unlock();
}

void PreadEngine::Drain() {
  mutex_.LockWhen(absl::Condition(this, &PreadEngine::Idle));
  mutex_.Unlock();
}

void PreadEngine::Work() {
  for (;;) {
    mutex_.LockWhen(absl::Condition(this, &PreadEngine::HasWork));
    // The destructor drains before it stops the pool, so the queue is empty.
    if (stopping_) {
      mutex_.Unlock();
      return;
    }
    Task task = std::move(queue_.front());
    queue_.pop_front();
    mutex_.Unlock();
    task.done(ReadFully(task.request));
    // Destroyed before it stops counting, so that whatever the callback
    // captured is gone once Drain returns.
    task.done = nullptr;
    absl::MutexLock lock(&mutex_);
    --in_flight_;
  }
}

}  // namespace warmstart
