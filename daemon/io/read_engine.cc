#include "daemon/io/read_engine.h"

#include <atomic>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/io/pread_engine.h"
#include "daemon/io/read_file.h"
#include "daemon/io/uring_engine.h"

namespace warmstart {
namespace {

void NoteUringFallback(const absl::Status& why, Metrics* metrics) {
  if (metrics != nullptr) {
    metrics
        ->GetCounter("warmstart_io_uring_fallback_total",
                     "Read engines created as a pread pool because io_uring "
                     "could not be set up.")
        ->Add();
  }
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    Logger("io")->warn(
        "io_uring is unavailable ({}); reading with a pread thread pool "
        "instead (where a seccomp profile blocks it, allowing io_uring_setup, "
        "io_uring_enter and io_uring_register enables it; warned once; see "
        "warmstart_io_uring_fallback_total)",
        why.ToString());
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReadEngine>> CreateReadEngine(
    const ReadEngineOptions& options) {
  if (options.queue_depth < 1 || options.queue_depth > kMaxQueueDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("read queue depth ", options.queue_depth,
                     ": expected 1 to ", kMaxQueueDepth));
  }
  if (options.pread_threads < 1 || options.pread_threads > kMaxPreadThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("pread threads ", options.pread_threads,
                     ": expected 1 to ", kMaxPreadThreads));
  }
  using Kind = ReadEngineOptions::Kind;
  if (options.kind != Kind::kPread) {
    absl::StatusOr<std::unique_ptr<UringEngine>> uring =
        UringEngine::Create(options.queue_depth, options.metrics);
    if (uring.ok()) return std::unique_ptr<ReadEngine>(std::move(*uring));
    if (options.kind == Kind::kIoUring) {
      return absl::FailedPreconditionError(
          absl::StrCat("the io_uring read engine was asked for but cannot be "
                       "set up: ",
                       uring.status().ToString()));
    }
    NoteUringFallback(uring.status(), options.metrics);
  }
  return std::unique_ptr<ReadEngine>(
      new PreadEngine(options.pread_threads, options.queue_depth));
}

absl::Status ReadErrorStatus(int error_number, const ReadRequest& request,
                             uint64_t offset) {
  return ErrnoToStatus(error_number,
                       absl::StrCat("read ", request.file_name, " at offset ",
                                    offset, " (request: ", request.length,
                                    " bytes at offset ", request.offset, ")"));
}

bool ShortReadIsEndOfFile(const ReadRequest& request, uint64_t done) {
  const bool aligned =
      request.offset % kDirectAlignment == 0 &&
      request.length % kDirectAlignment == 0 &&
      reinterpret_cast<uintptr_t>(request.destination) % kDirectAlignment == 0;
  return aligned && (request.offset + done) % kDirectAlignment != 0;
}

absl::Status CheckReadCovers(const ReadRequest& request, uint64_t bytes_read,
                             uint64_t needed) {
  if (bytes_read >= needed) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      request.file_name, " ends at offset ", request.offset + bytes_read,
      ", before the ", needed, " bytes wanted at offset ", request.offset,
      " (the file is shorter than its header says, or was truncated while "
      "being read)"));
}

}  // namespace warmstart
