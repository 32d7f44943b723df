// UringEngine: the io_uring ReadEngine.
//
// One ring and one engine thread per engine. Submit only queues the read and
// wakes the thread (an eventfd write); the engine thread alone touches the
// ring: it issues the reads, reaps completions, resubmits remainders and
// runs the callbacks. io_uring runs a request's async work and completion
// work on behalf of the task that issued it; issuing from the thread that
// also waits for completions keeps that work on a thread that is always
// ready for it and outlives every read it issued.
//
// Thread safety: as ReadEngine. Callbacks run on the engine thread, one at a
// time; while one runs no other read is reaped or issued.
#ifndef WARMSTART_DAEMON_IO_URING_ENGINE_H_
#define WARMSTART_DAEMON_IO_URING_ENGINE_H_

#include <liburing.h>

#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/scoped_fd.h"
#include "daemon/base/metrics.h"
#include "daemon/io/read_engine.h"

namespace warmstart {

class UringEngine final : public ReadEngine {
 public:
  // Sets up a ring for `queue_depth` reads in flight. Errors: ErrnoToStatus
  // of io_uring_queue_init's failure (PermissionDenied for EPERM under a
  // seccomp profile, Unimplemented for ENOSYS); Unimplemented for a kernel
  // whose io_uring lacks IORING_OP_READ (before Linux 5.6).
  // Refused buffer registrations are counted in `metrics` (not owned; it
  // must outlive the engine; null: not counted).
  // REQUIRES: 1 <= queue_depth <= kMaxQueueDepth.
  static absl::StatusOr<std::unique_ptr<UringEngine>> Create(
      unsigned queue_depth, Metrics* metrics = nullptr);

  ~UringEngine() override;
  UringEngine(const UringEngine&) = delete;
  UringEngine& operator=(const UringEngine&) = delete;

  absl::string_view name() const override { return "io_uring"; }
  // Stops the engine thread first (it restarts with the next Submit), so
  // that the ring is idle whatever the kernel's registration needs.
  // Errors: FailedPrecondition when buffers are registered already.
  absl::Status RegisterBuffers(absl::Span<const iovec> buffers) override;
  void UnregisterBuffers() override;
  void Submit(const ReadRequest& request, ReadDone done) override;
  void Drain() override;

 private:
  // One submitted read, owned by the engine until its callback has run.
  struct Read {
    ReadRequest request;
    ReadDone done;
    uint64_t bytes_done = 0;
    // Index of the registered buffer holding the whole destination, or -1.
    int buffer_index = -1;
  };

  UringEngine(unsigned queue_depth, Metrics* metrics)
      : queue_depth_(queue_depth), metrics_(metrics) {}

  // The engine thread.
  void Run();
  // Engine thread: queues an SQE reading what `read` still lacks.
  void Issue(Read* read);
  // Engine thread: queues an SQE reading the eventfd, which Submit and the
  // destructor write to wake the thread.
  void ArmWakeup();
  // Engine thread: handles one completion of `read` with io_uring result
  // `result` (bytes or a negated errno).
  void Complete(Read* read, int result);
  // Engine thread: runs the callback and retires the read.
  void Finish(Read* read, absl::StatusOr<uint64_t> result);
  void Wake();
  // Drains, then ends the engine thread and waits for it; Submit starts a
  // new one. Leaves no eventfd read armed in the ring.
  void StopThread();

  int FindRegisteredBuffer(const char* begin, uint64_t length) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool HasRoom() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return in_flight_ < queue_depth_;
  }
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return in_flight_ == 0;
  }

  const unsigned queue_depth_;
  Metrics* const metrics_;  // Not owned; null: nothing counted.
  // Set up by Create; after that only the engine thread touches the ring,
  // except (Un)RegisterBuffers and the destructor, which stop the thread
  // first.
  io_uring ring_;
  bool ring_ready_ = false;
  ScopedFd wakeup_fd_;
  // Engine thread: where the armed eventfd read lands.
  uint64_t wakeup_value_ = 0;

  absl::Mutex mutex_;
  // Submitted reads the engine thread has not issued yet.
  std::vector<std::unique_ptr<Read>> pending_ ABSL_GUARDED_BY(mutex_);
  // Reads submitted whose callback has not returned.
  unsigned in_flight_ ABSL_GUARDED_BY(mutex_) = 0;
  // Registered buffers, sorted by address: {base, length, index}.
  struct Registered {
    uintptr_t base;
    uint64_t length;
    int index;
  };
  std::vector<Registered> registered_ ABSL_GUARDED_BY(mutex_);
  bool registration_done_ ABSL_GUARDED_BY(mutex_) = false;
  // Engine thread: whether the eventfd read is in the ring.
  bool wakeup_armed_ = false;
  // The engine thread starts with the first Submit after it was stopped, so
  // that (Un)RegisterBuffers meets an idle ring (older kernels quiesce the ring
  // to register, which would wait forever for the armed eventfd read).
  bool started_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_IO_URING_ENGINE_H_
