#include "tests/doubles/fault_injecting_engine.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace warmstart {
namespace testing {

// The pieces of one request, joined into one result when the last ends.
struct FaultInjectingEngine::Join {
  ReadDone done;
  std::vector<uint64_t> lengths;
  absl::Mutex mutex;
  std::vector<absl::StatusOr<uint64_t>> results ABSL_GUARDED_BY(mutex);
  size_t remaining ABSL_GUARDED_BY(mutex);
};

FaultInjectingEngine::FaultInjectingEngine(std::unique_ptr<ReadEngine> engine,
                                           Options options)
    : engine_(std::move(engine)), options_(std::move(options)) {}

// Callbacks use the counters and options: none may run once they are gone.
FaultInjectingEngine::~FaultInjectingEngine() { engine_->Drain(); }

void FaultInjectingEngine::Submit(const ReadRequest& request, ReadDone done) {
  const uint64_t piece_length = options_.max_bytes_per_read != 0
                                    ? options_.max_bytes_per_read
                                    : std::max<uint64_t>(request.length, 1);
  auto join = std::make_shared<Join>();
  join->done = std::move(done);
  for (uint64_t at = 0; at == 0 || at < request.length; at += piece_length) {
    join->lengths.push_back(std::min(piece_length, request.length - at));
  }
  {
    absl::MutexLock lock(&join->mutex);
    join->results.resize(join->lengths.size(), uint64_t{0});
    join->remaining = join->lengths.size();
  }
  for (size_t i = 0; i < join->lengths.size(); ++i) {
    ReadRequest piece = request;
    piece.offset += i * piece_length;
    piece.destination += i * piece_length;
    piece.length = join->lengths[i];
    uint64_t index;
    {
      absl::MutexLock lock(&mutex_);
      index = ++reads_;
    }
    if (index == options_.action_before_read && options_.action) {
      options_.action();
    }
    const bool fail = index == options_.fail_read;
    engine_->Submit(
        piece, [this, join, i, fail, piece](absl::StatusOr<uint64_t> result) {
          absl::SleepFor(options_.completion_delay);
          if (fail) {
            result = ReadErrorStatus(options_.fail_errno, piece, piece.offset);
          }
          {
            absl::MutexLock lock(&mutex_);
            --in_flight_;
            if (result.ok()) bytes_read_ += *result;
          }
          PieceDone(join, i, std::move(result));
        });
    absl::MutexLock lock(&mutex_);
    max_in_flight_ = std::max(max_in_flight_, ++in_flight_);
  }
}

void FaultInjectingEngine::PieceDone(const std::shared_ptr<Join>& join,
                                     size_t piece,
                                     absl::StatusOr<uint64_t> result) {
  std::vector<absl::StatusOr<uint64_t>> results;
  {
    absl::MutexLock lock(&join->mutex);
    join->results[piece] = std::move(result);
    if (--join->remaining != 0) return;
    results = std::move(join->results);
  }
  // The bytes form one run from the request's start: a piece that comes up
  // short ends it, whatever later pieces read.
  uint64_t total = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ok()) {
      join->done(results[i].status());
      return;
    }
    total += *results[i];
    if (*results[i] < join->lengths[i]) break;
  }
  join->done(total);
}

uint64_t FaultInjectingEngine::reads() const {
  absl::MutexLock lock(&mutex_);
  return reads_;
}

uint64_t FaultInjectingEngine::bytes_read() const {
  absl::MutexLock lock(&mutex_);
  return bytes_read_;
}

int64_t FaultInjectingEngine::max_in_flight() const {
  absl::MutexLock lock(&mutex_);
  return max_in_flight_;
}

}  // namespace testing
}  // namespace warmstart
