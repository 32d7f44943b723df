// PreadEngine: the ReadEngine of a fixed pool of threads calling pread(2),
// for kernels or sandboxes without io_uring.
//
// Thread safety: as ReadEngine. Callbacks run on the pool's threads, up to
// `threads` at a time.
#ifndef WARMSTART_DAEMON_IO_PREAD_ENGINE_H_
#define WARMSTART_DAEMON_IO_PREAD_ENGINE_H_

#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "daemon/io/read_engine.h"

namespace warmstart {

class PreadEngine final : public ReadEngine {
 public:
  // Starts `threads` threads; at most `queue_depth` reads are queued or
  // running at once. REQUIRES: threads >= 1, queue_depth >= 1.
  PreadEngine(unsigned threads, unsigned queue_depth);
  ~PreadEngine() override;
  PreadEngine(const PreadEngine&) = delete;
  PreadEngine& operator=(const PreadEngine&) = delete;

  absl::string_view name() const override { return "pread"; }
  // Nothing to register: pread pins each destination for the duration of
  // the call anyway.
  absl::Status RegisterBuffers(absl::Span<const iovec> buffers) override {
    return absl::OkStatus();
  }
  void UnregisterBuffers() override {}
  void Submit(const ReadRequest& request, ReadDone done) override;
  void Drain() override;

 private:
  struct Task {
    ReadRequest request;
    ReadDone done;
  };

  void Work();

  bool HasRoom() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return in_flight_ < queue_depth_;
  }
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return in_flight_ == 0;
  }
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return !queue_.empty() || stopping_;
  }

  const unsigned queue_depth_;
  absl::Mutex mutex_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mutex_);
  // Reads submitted whose callback has not returned (queued or running).
  unsigned in_flight_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_IO_PREAD_ENGINE_H_
