// read_bench: the read engines' throughput on one file, against a plain
// sequential pread loop into one reused buffer measured in the same run.
//
//   bazel run -c opt //daemon/io:read_bench -- --file=/tmp/1GiB.bin
//
// Cold rows read with O_DIRECT after dropping the file's cached pages
// (posix_fadvise DONTNEED); warm rows read through a page cache that holds
// the whole file. Each engine reads whole chunks into a pool of
// `queue_depth` pre-touched, page-aligned chunks (registered with io_uring),
// the way the loader reads into staging slabs. Prints the median of --runs.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "daemon/io/read_engine.h"
#include "daemon/io/read_file.h"

ABSL_FLAG(std::string, file, "", "the file to read (required)");
ABSL_FLAG(int, runs, 5, "runs per row; the median is printed");
ABSL_FLAG(int, chunk_mib, 4, "bytes per read, in MiB");
ABSL_FLAG(int, queue_depth, 16, "reads in flight per engine");
ABSL_FLAG(int, pread_threads, 4, "threads of the pread engine");

namespace warmstart {
namespace {

struct Free {
  void operator()(char* p) const { std::free(p); }
};
using AlignedMemory = std::unique_ptr<char, Free>;

AlignedMemory AllocateTouched(size_t size) {
  AlignedMemory memory(
      static_cast<char*>(std::aligned_alloc(kDirectAlignment, size)));
  // Touched once here, so that page faults on fresh memory are not timed.
  std::memset(memory.get(), 0, size);
  return memory;
}

absl::Status DropCache(const ReadFile& file) {
  const int rc = ::posix_fadvise(file.fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  if (rc != 0) return ErrnoToStatus(rc, "posix_fadvise DONTNEED");
  return absl::OkStatus();
}

// Seconds one pass takes; fails unless it read the whole file.
using Pass = std::function<absl::StatusOr<double>()>;

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

absl::StatusOr<double> PreadLoop(const ReadFile& file, char* buffer,
                                 uint64_t chunk) {
  const auto start = std::chrono::steady_clock::now();
  uint64_t total = 0;
  for (;;) {
    const ssize_t got = ::pread(file.fd.get(), buffer, chunk, total);
    if (got < 0) return ErrnoToStatus(errno, "pread " + file.path);
    if (got == 0) break;
    total += got;
  }
  if (total != file.size) return absl::DataLossError("short pread loop");
  return Seconds(start);
}

absl::StatusOr<double> EnginePass(ReadEngine& engine, const ReadFile& file,
                                  char* pool, uint64_t chunk, int slots) {
  absl::Mutex mutex;
  std::vector<int> free_slots;
  for (int i = 0; i < slots; ++i) free_slots.push_back(i);
  uint64_t total = 0;
  absl::Status error;
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t offset = 0; offset < file.size; offset += chunk) {
    int slot;
    {
      mutex.LockWhen(absl::Condition(
          +[](std::vector<int>* v) { return !v->empty(); }, &free_slots));
      slot = free_slots.back();
      free_slots.pop_back();
      mutex.Unlock();
    }
    engine.Submit(ReadRequest{file.fd.get(), offset, chunk, pool + slot * chunk,
                              file.path},
                  [&, slot](absl::StatusOr<uint64_t> bytes) {
                    absl::MutexLock lock(&mutex);
                    if (bytes.ok()) {
                      total += *bytes;
                    } else {
                      error = bytes.status();
                    }
                    free_slots.push_back(slot);
                  });
  }
  engine.Drain();
  const double seconds = Seconds(start);
  WS_RETURN_IF_ERROR(error);
  if (total != file.size) return absl::DataLossError("short engine pass");
  return seconds;
}

absl::StatusOr<double> MedianSeconds(
    const Pass& pass, int runs, const std::function<absl::Status()>& before) {
  std::vector<double> seconds;
  for (int i = 0; i < runs; ++i) {
    WS_RETURN_IF_ERROR(before());
    WS_ASSIGN_OR_RETURN(double s, pass());
    seconds.push_back(s);
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

absl::Status Run() {
  const std::string path = absl::GetFlag(FLAGS_file);
  const int runs = absl::GetFlag(FLAGS_runs);
  const uint64_t chunk = uint64_t(absl::GetFlag(FLAGS_chunk_mib)) << 20;
  const int depth = absl::GetFlag(FLAGS_queue_depth);
  if (path.empty() || runs < 1 || chunk == 0 || depth < 1) {
    return absl::InvalidArgumentError(
        "--file is required; --runs, --chunk_mib and --queue_depth must be "
        "positive");
  }
  AlignedMemory pool = AllocateTouched(chunk * depth);
  for (const bool cold : {true, false}) {
    WS_ASSIGN_OR_RETURN(ReadFile file, OpenReadFile(path, cold));
    if (cold && !file.direct) {
      return absl::FailedPreconditionError(path + " refuses O_DIRECT");
    }
    if (cold) {
      std::printf(
          "%s: %.2f GiB, %llu MiB reads, queue depth %d, median of "
          "%d runs\n",
          path.c_str(), static_cast<double>(file.size) / (1 << 30),
          static_cast<unsigned long long>(chunk >> 20), depth, runs);
    }
    const auto before = [&]() -> absl::Status {
      if (cold) return DropCache(file);
      return absl::OkStatus();
    };
    if (!cold) {
      // Fills the page cache for the warm rows.
      WS_RETURN_IF_ERROR(PreadLoop(file, pool.get(), chunk).status());
    }
    const char* mode = cold ? "O_DIRECT, cold" : "buffered, warm";
    const double gb = static_cast<double>(file.size) / 1e9;
    WS_ASSIGN_OR_RETURN(
        const double baseline,
        MedianSeconds([&] { return PreadLoop(file, pool.get(), chunk); }, runs,
                      before));
    std::printf("%-16s %-22s %6.2f GB/s  1.00x\n", mode,
                "pread loop (baseline)", gb / baseline);
    for (const auto kind :
         {ReadEngineOptions::Kind::kIoUring, ReadEngineOptions::Kind::kPread}) {
      ReadEngineOptions options;
      options.kind = kind;
      options.queue_depth = depth;
      options.pread_threads = absl::GetFlag(FLAGS_pread_threads);
      absl::StatusOr<std::unique_ptr<ReadEngine>> created =
          CreateReadEngine(options);
      if (!created.ok()) {
        std::printf("%-16s skipped: %s\n", mode,
                    created.status().ToString().c_str());
        continue;
      }
      std::unique_ptr<ReadEngine> engine = std::move(*created);
      const iovec registered = {pool.get(), chunk * depth};
      WS_RETURN_IF_ERROR(engine->RegisterBuffers({&registered, 1}));
      WS_ASSIGN_OR_RETURN(const double seconds,
                          MedianSeconds(
                              [&] {
                                return EnginePass(*engine, file, pool.get(),
                                                  chunk, depth);
                              },
                              runs, before));
      const std::string name = absl::StrCat(engine->name(), " engine");
      std::printf("%-16s %-22s %6.2f GB/s  %.2fx\n", mode, name.c_str(),
                  gb / seconds, baseline / seconds);
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace warmstart

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Reads a file with each read engine and prints GB/s against a plain "
      "pread loop.");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = warmstart::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "read_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
