// ReadEngine: reads byte ranges of open files into memory, asynchronously.
//
// Two implementations: io_uring (UringEngine) and a pread thread pool
// (PreadEngine). CreateReadEngine picks one at start; the loader sees only
// this interface.
//
//   WS_ASSIGN_OR_RETURN(std::unique_ptr<ReadEngine> engine,
//                    CreateReadEngine(ReadEngineOptions()));
//   WS_RETURN_IF_ERROR(engine->RegisterBuffers(slabs));
//   engine->Submit({fd, offset, length, slab, path},
//                  [](absl::StatusOr<uint64_t> bytes_read) { ... });
//   engine->Drain();
//
// Thread safety: Submit and Drain may be called from any number of threads.
// Callbacks run on engine threads and must be short: while one runs, the
// engine may deliver no other completion.
#ifndef WARMSTART_DAEMON_IO_READ_ENGINE_H_
#define WARMSTART_DAEMON_IO_READ_ENGINE_H_

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "daemon/base/metrics.h"

namespace warmstart {

struct ReadRequest {
  // Not owned; must stay open until `done` has run.
  int fd = -1;
  // File offset. For an O_DIRECT descriptor: a multiple of kDirectAlignment.
  uint64_t offset = 0;
  // Bytes wanted. For an O_DIRECT descriptor: a multiple of
  // kDirectAlignment; reading an aligned superset past the end of the file
  // is normal and completes with the bytes up to the end.
  uint64_t length = 0;
  // Where the bytes go; must stay valid and untouched until `done` has run.
  // For an O_DIRECT descriptor: kDirectAlignment-aligned.
  char* destination = nullptr;
  // For error messages.
  std::string file_name;
};

// Called exactly once per read, on an engine thread: the number of bytes
// read, equal to `length` unless the file ends first (then fewer, 0 when
// `offset` is at or past the end), or an error naming the file and offset.
using ReadDone = std::function<void(absl::StatusOr<uint64_t> bytes_read)>;

class ReadEngine {
 public:
  // Waits for every read in flight to complete and its callback to return.
  // REQUIRES: not called from a callback.
  virtual ~ReadEngine() = default;

  // "io_uring" or "pread".
  virtual absl::string_view name() const = 0;

  // Registers memory that reads will land in (io_uring fixed buffers: the
  // kernel pins and maps it once instead of on every read). A read whose
  // destination range lies inside one registered buffer uses it; others
  // still work. The kernel refusing the registration (the locked-memory
  // limit, 8 MiB for an unprivileged process, answers ENOMEM) is a degraded
  // mode, not an error: reads proceed unregistered, one warning is logged
  // per process and warmstart_io_buffer_registration_failed_total (in the
  // engine's ReadEngineOptions::metrics) counts it.
  // REQUIRES: no buffers registered (never, or UnregisterBuffers since) and
  // no read in flight; the buffers stay mapped until UnregisterBuffers or
  // the engine's end.
  virtual absl::Status RegisterBuffers(absl::Span<const iovec> buffers) = 0;

  // Drops the registration, so that the kernel unpins the memory and it can
  // be returned (the staging pool does so while idle). Waits for the reads
  // in flight first. No-op when nothing is registered.
  // REQUIRES: no Submit concurrently; not called from a callback.
  virtual void UnregisterBuffers() = 0;

  // Starts a read; `done` reports its outcome (see ReadDone). Short reads,
  // EINTR and EAGAIN are resubmitted for the remainder; errors become Status
  // through ErrnoToStatus (EIO -> DataLoss). Blocks while `queue_depth`
  // reads are in flight, which bounds the engine's memory and queue.
  // REQUIRES: not called from a callback (it could wait for itself).
  virtual void Submit(const ReadRequest& request, ReadDone done) = 0;

  // Blocks until every read submitted so far has completed and its callback
  // has returned (with other threads still submitting: until none is in
  // flight). REQUIRES: not called from a callback.
  virtual void Drain() = 0;
};

struct ReadEngineOptions {
  enum class Kind {
    // io_uring, or the pread pool when io_uring cannot be set up.
    kAuto,
    // io_uring or an error.
    kIoUring,
    kPread,
  };
  Kind kind = Kind::kAuto;
  // Reads in flight at most, 1 to kMaxQueueDepth.
  unsigned queue_depth = 64;
  // Threads of the pread pool, 1 to kMaxPreadThreads.
  unsigned pread_threads = 4;
  // Where the io_uring fallback and refused buffer registrations are
  // counted. Not owned; must outlive the engine. Null: not counted.
  Metrics* metrics = nullptr;
};

constexpr unsigned kMaxQueueDepth = 4096;
constexpr unsigned kMaxPreadThreads = 256;

// Creates the engine `options` ask for. With kAuto, an io_uring that cannot
// be set up gives the pread pool instead: one warning per process, and
// warmstart_io_uring_fallback_total (in options.metrics) counts it. The usual
// causes: EPERM from the default seccomp profiles of Docker and containerd or
// from the kernel.io_uring_disabled sysctl, ENOSYS from kernels without
// io_uring, ENOMEM when the locked-memory limit cannot hold the ring. Errors:
// InvalidArgument for options out of range; FailedPrecondition, naming the
// reason, when kIoUring was asked for and cannot be set up.
absl::StatusOr<std::unique_ptr<ReadEngine>> CreateReadEngine(
    const ReadEngineOptions& options);

// Linux moves at most this many bytes in one read call (MAX_RW_COUNT, a
// multiple of kDirectAlignment); engines split longer requests.
constexpr uint64_t kMaxBytesPerCall = 0x7ffff000;

// The status of a read that failed with `error_number` (a positive errno or
// io_uring's negated one) at file offset `offset`: ErrnoToStatus naming the
// file, the offset and the request. For engines.
absl::Status ReadErrorStatus(int error_number, const ReadRequest& request,
                             uint64_t offset);

// Whether a read that has delivered `done` bytes of `request` so far, the
// last call returning fewer than asked, has reached the end of the file. For
// a request aligned for O_DIRECT (offset, length and destination multiples
// of kDirectAlignment), a stop at an unaligned position can only be the end
// of the file, and asking again there would be refused (EINVAL) by
// filesystems on the older direct-I/O path; otherwise the caller reads on
// and a 0-byte answer tells.
bool ShortReadIsEndOfFile(const ReadRequest& request, uint64_t done);

// OK when a completed read delivered at least `needed` bytes; otherwise
// DataLoss naming the file and where it ended early (a file shorter than
// its header claims, or truncated while it was being read).
absl::Status CheckReadCovers(const ReadRequest& request, uint64_t bytes_read,
                             uint64_t needed);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_IO_READ_ENGINE_H_
