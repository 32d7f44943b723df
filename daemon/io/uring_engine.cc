#include "daemon/io/uring_engine.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/errno_status.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"

namespace warmstart {
namespace {

// A ring call that fails for any reason but a transient one means the ring
// or this code is broken; no read could be trusted after it.
[[noreturn]] void DieOnRingError(const char* call, int result) {
  WS_CHECK(false) << call << " failed: "
                  << ErrnoToStatus(result, "io_uring").ToString();
  std::abort();  // Unreached: tells the compiler that this never returns.
}

bool RingSupportsRead(io_uring* ring) {
  io_uring_probe* probe = io_uring_get_probe_ring(ring);
  if (probe == nullptr) return false;  // Linux < 5.6 has no probe either.
  const bool supported = io_uring_opcode_supported(probe, IORING_OP_READ);
  io_uring_free_probe(probe);
  return supported;
}

void NoteRegistrationFailed(const absl::Status& why, Metrics* metrics) {
  if (metrics != nullptr) {
    metrics
        ->GetCounter("warmstart_io_buffer_registration_failed_total",
                     "io_uring buffer registrations refused by the kernel; "
                     "reads then use unregistered buffers.")
        ->Add();
  }
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    Logger("io")->warn(
        "io_uring refused to register the read buffers ({}); reading into "
        "unregistered buffers, which costs a page walk per read (raise the "
        "locked-memory limit, RLIMIT_MEMLOCK, to avoid it; warned once; see "
        "warmstart_io_buffer_registration_failed_total)",
        why.ToString());
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<UringEngine>> UringEngine::Create(
    unsigned queue_depth, Metrics* metrics) {
  auto engine = absl::WrapUnique(new UringEngine(queue_depth, metrics));
  // One entry more than reads in flight, for the armed eventfd read; the
  // completion queue is twice as large, so it cannot overflow.
  const int rc = io_uring_queue_init(queue_depth + 1, &engine->ring_, 0);
  if (rc < 0) return ErrnoToStatus(rc, "io_uring_queue_init");
  engine->ring_ready_ = true;
  if (!RingSupportsRead(&engine->ring_)) {
    return absl::UnimplementedError(
        "io_uring lacks IORING_OP_READ (needs Linux 5.6 or later)");
  }
  const int fd = ::eventfd(0, EFD_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "eventfd");
  engine->wakeup_fd_.reset(fd);
  return engine;
}

UringEngine::~UringEngine() {
  StopThread();
  // Cancels the eventfd read still armed.
  if (ring_ready_) io_uring_queue_exit(&ring_);
}

void UringEngine::StopThread() {
  Drain();
  bool started;
  {
    absl::MutexLock lock(&mutex_);
    started = started_;
    stopping_ = started;
  }
  if (!started) return;
  Wake();
  thread_.join();
  absl::MutexLock lock(&mutex_);
  started_ = false;
  stopping_ = false;
}

absl::Status UringEngine::RegisterBuffers(absl::Span<const iovec> buffers) {
  StopThread();
  // Holding the lock keeps Submit out while the kernel pins the memory,
  // which can take seconds for gigabytes.
  absl::MutexLock lock(&mutex_);
  if (registration_done_) {
    return absl::FailedPreconditionError(
        "RegisterBuffers: buffers are registered already; "
        "UnregisterBuffers first");
  }
  registration_done_ = true;
  if (buffers.empty()) return absl::OkStatus();
  const int rc = io_uring_register_buffers(
      &ring_, buffers.data(), static_cast<unsigned>(buffers.size()));
  if (rc < 0) {
    NoteRegistrationFailed(
        ErrnoToStatus(rc, absl::StrCat("io_uring_register_buffers (",
                                       buffers.size(), " buffers)")),
        metrics_);
    return absl::OkStatus();
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    registered_.push_back({reinterpret_cast<uintptr_t>(buffers[i].iov_base),
                           buffers[i].iov_len, static_cast<int>(i)});
  }
  std::sort(
      registered_.begin(), registered_.end(),
      [](const Registered& a, const Registered& b) { return a.base < b.base; });
  return absl::OkStatus();
}

void UringEngine::UnregisterBuffers() {
  StopThread();
  absl::MutexLock lock(&mutex_);
  if (!registration_done_) return;
  registration_done_ = false;
  if (registered_.empty()) return;  // The kernel had refused them.
  registered_.clear();
  const int rc = io_uring_unregister_buffers(&ring_);
  if (rc < 0) DieOnRingError("io_uring_unregister_buffers", rc);
}

int UringEngine::FindRegisteredBuffer(const char* begin,
                                      uint64_t length) const {
  const uintptr_t address = reinterpret_cast<uintptr_t>(begin);
  auto after = std::upper_bound(
      registered_.begin(), registered_.end(), address,
      [](uintptr_t a, const Registered& r) { return a < r.base; });
  if (after == registered_.begin()) return -1;
  const Registered& candidate = *(after - 1);
  const uint64_t start = address - candidate.base;
  if (start > candidate.length || length > candidate.length - start) return -1;
  return candidate.index;
}

void UringEngine::Submit(const ReadRequest& request, ReadDone done) {
  auto read = std::make_unique<Read>();
  read->request = request;
  read->done = std::move(done);
  mutex_.LockWhen(absl::Condition(this, &UringEngine::HasRoom));
  read->buffer_index =
      FindRegisteredBuffer(request.destination, request.length);
  if (!started_) {
    started_ = true;
    thread_ = std::thread(&UringEngine::Run, this);
  }
  ++in_flight_;
  // The engine thread takes every pending read each time it wakes, so only
  // the first read after that needs to wake it again.
  const bool wake = pending_.empty();
  pending_.push_back(std::move(read));
  mutex_.Unlock();
  if (wake) Wake();
}

void UringEngine::Drain() {
  mutex_.LockWhen(absl::Condition(this, &UringEngine::Idle));
  mutex_.Unlock();
}

void UringEngine::Wake() {
  const uint64_t one = 1;
  // An eventfd write of 1 neither blocks nor fails short of 2^64 - 2
  // unread wakeups.
  ssize_t written;
  do {
    written = ::write(wakeup_fd_.get(), &one, sizeof(one));
  } while (written < 0 && errno == EINTR);
  if (written != sizeof(one)) DieOnRingError("eventfd write", errno);
}

void UringEngine::ArmWakeup() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) DieOnRingError("io_uring_get_sqe", EBUSY);
  io_uring_prep_read(sqe, wakeup_fd_.get(), &wakeup_value_,
                     sizeof(wakeup_value_), 0);
  io_uring_sqe_set_data(sqe, &wakeup_value_);
}

void UringEngine::Issue(Read* read) {
  // Reads in flight never exceed queue_depth_ and each holds at most one
  // SQE, so the submission queue always has room.
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) DieOnRingError("io_uring_get_sqe", EBUSY);
  const ReadRequest& r = read->request;
  const unsigned length = static_cast<unsigned>(
      std::min(r.length - read->bytes_done, kMaxBytesPerCall));
  char* destination = r.destination + read->bytes_done;
  const uint64_t offset = r.offset + read->bytes_done;
  if (read->buffer_index >= 0) {
    io_uring_prep_read_fixed(sqe, r.fd, destination, length, offset,
                             read->buffer_index);
  } else {
    io_uring_prep_read(sqe, r.fd, destination, length, offset);
  }
  io_uring_sqe_set_data(sqe, read);
}

void UringEngine::Run() {
  std::vector<std::unique_ptr<Read>> issuing;
  std::vector<std::pair<void*, int>> completions;
  for (;;) {
    {
      absl::MutexLock lock(&mutex_);
      // The destructor drains before it stops the thread, so nothing is in
      // flight here.
      if (stopping_) return;
      issuing.swap(pending_);
    }
    // A thread stopped before its eventfd read completed leaves it armed
    // (StopThread's wake-up completes it); the next thread reaps it.
    if (!wakeup_armed_) {
      ArmWakeup();
      wakeup_armed_ = true;
    }
    for (std::unique_ptr<Read>& read : issuing) Issue(read.release());
    issuing.clear();
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
      DieOnRingError("io_uring_submit_and_wait", rc);
    }
    // Collecting first frees the completion queue before any callback runs.
    io_uring_cqe* cqe;
    unsigned head;
    unsigned count = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      completions.emplace_back(io_uring_cqe_get_data(cqe), cqe->res);
      ++count;
    }
    io_uring_cq_advance(&ring_, count);
    for (const auto& [data, result] : completions) {
      if (data == &wakeup_value_) {
        wakeup_armed_ = false;  // Armed again at the top of the loop.
      } else {
        Complete(static_cast<Read*>(data), result);
      }
    }
    completions.clear();
  }
}

void UringEngine::Complete(Read* read, int result) {
  if (result == -EINTR || result == -EAGAIN) {
    Issue(read);
    return;
  }
  if (result < 0) {
    Finish(read, ReadErrorStatus(result, read->request,
                                 read->request.offset + read->bytes_done));
    return;
  }
  read->bytes_done += static_cast<uint64_t>(result);
  // 0 bytes: the file ends here. Fewer than asked: the kernel stopped short
  // (at the end of the file, or interrupted); the next read tells which.
  if (result == 0 || read->bytes_done == read->request.length ||
      ShortReadIsEndOfFile(read->request, read->bytes_done)) {
    Finish(read, read->bytes_done);
    return;
  }
  Issue(read);
}

void UringEngine::Finish(Read* read, absl::StatusOr<uint64_t> result) {
  read->done(std::move(result));
  // Deleted before it stops counting, so that whatever the callback captured
  // is gone once Drain returns.
  delete read;
  absl::MutexLock lock(&mutex_);
  --in_flight_;
}

}  // namespace warmstart
