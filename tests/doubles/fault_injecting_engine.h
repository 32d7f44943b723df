// FaultInjectingEngine: a ReadEngine for tests that wraps a real one and
// injects the faults a disk or filesystem produces: an error at the N-th
// read, short reads, slow reads, and an action (such as truncating the file)
// just before the N-th read. It counts the reads that reach the wrapped
// engine and how many were in flight at once.
//
// Ownership: owns the wrapped engine; drains it before it is destroyed, so
// no callback runs once the engine is gone.
// Thread safety: as ReadEngine; the counters may be read at any time.
#ifndef WARMSTART_TESTS_DOUBLES_FAULT_INJECTING_ENGINE_H_
#define WARMSTART_TESTS_DOUBLES_FAULT_INJECTING_ENGINE_H_

#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/io/read_engine.h"

namespace warmstart {
namespace testing {

class FaultInjectingEngine final : public ReadEngine {
 public:
  struct Options {
    // The read (1-based, in submission order, counting the pieces of split
    // requests) that fails with `fail_errno`; 0 for none. The read still
    // reaches the wrapped engine; its result is replaced by the error.
    uint64_t fail_read = 0;
    int fail_errno = EIO;
    // When nonzero, each request reaches the wrapped engine as pieces of at
    // most this many bytes, the way a filesystem returning short reads would
    // deliver it; the pieces' results are joined into one.
    // REQUIRES (for O_DIRECT descriptors): a multiple of kDirectAlignment.
    uint64_t max_bytes_per_read = 0;
    // Each completion waits this long on the engine thread (a slow disk).
    absl::Duration completion_delay = absl::ZeroDuration();
    // Runs on the submitting thread just before the read with this 1-based
    // index is submitted; 0 for none.
    uint64_t action_before_read = 0;
    std::function<void()> action;
  };

  // Takes ownership of `engine`.
  FaultInjectingEngine(std::unique_ptr<ReadEngine> engine, Options options);
  ~FaultInjectingEngine() override;

  absl::string_view name() const override { return engine_->name(); }
  absl::Status RegisterBuffers(absl::Span<const iovec> buffers) override {
    return engine_->RegisterBuffers(buffers);
  }
  void UnregisterBuffers() override { engine_->UnregisterBuffers(); }
  void Submit(const ReadRequest& request, ReadDone done) override;
  void Drain() override { engine_->Drain(); }

  // Reads submitted to the wrapped engine so far.
  uint64_t reads() const;
  // Bytes the wrapped engine delivered, over every read completed so far
  // (failed reads count nothing).
  uint64_t bytes_read() const;
  // The most reads seen in flight in the wrapped engine at once. A read
  // counts from when the wrapped engine's Submit returns until its callback
  // ends, so this never exceeds the true number.
  int64_t max_in_flight() const;

 private:
  struct Join;
  static void PieceDone(const std::shared_ptr<Join>& join, size_t piece,
                        absl::StatusOr<uint64_t> result);

  const std::unique_ptr<ReadEngine> engine_;
  const Options options_;
  mutable absl::Mutex mutex_;
  uint64_t reads_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t bytes_read_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t in_flight_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t max_in_flight_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_TESTS_DOUBLES_FAULT_INJECTING_ENGINE_H_
