#include "daemon/bench/bench.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "daemon/bench/page_cache.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/io/read_file.h"
#include "daemon/io/read_memory.h"
#include "daemon/loader/loader.h"
#include "daemon/remote/remote_source.h"
#include "daemon/staging/staging_pool.h"

namespace warmstart {
namespace {

// VmRSS - RssShmem of this process, in bytes.
uint64_t RssOutsideSharedMemory() {
  std::FILE* status = std::fopen("/proc/self/status", "re");
  if (status == nullptr) return 0;
  char line[256];
  unsigned long long rss = 0, shmem = 0, value;
  while (std::fgets(line, sizeof(line), status) != nullptr) {
    if (std::sscanf(line, "VmRSS: %llu kB", &value) == 1) rss = value;
    if (std::sscanf(line, "RssShmem: %llu kB", &value) == 1) shmem = value;
  }
  std::fclose(status);
  return (rss > shmem ? rss - shmem : 0) * 1024;
}

// Samples RssOutsideSharedMemory every few milliseconds while it lives.
class RssSampler {
 public:
  explicit RssSampler(std::atomic<uint64_t>* peak) : peak_(peak) {
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        Update();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  ~RssSampler() {
    stop_ = true;
    thread_.join();
    Update();
  }

 private:
  void Update() {
    const uint64_t now = RssOutsideSharedMemory();
    uint64_t seen = peak_->load();
    while (now > seen && !peak_->compare_exchange_weak(seen, now)) {
    }
  }

  std::atomic<uint64_t>* peak_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// User + system CPU seconds of every thread of this process so far.
double ProcessCpuSeconds() {
  struct rusage usage;
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double GigabytesPerSecond(uint64_t bytes, absl::Duration elapsed) {
  return static_cast<double>(bytes) / absl::ToDoubleSeconds(elapsed) / 1e9;
}

// Sequential O_DIRECT reads of every file into one reused buffer, in the
// huge-page memory the staging pool uses (ReadMemory), faulted in first.
absl::StatusOr<absl::Duration> OdirectReadBaseline(
    const std::vector<std::string>& files) {
  constexpr uint64_t kBuffer = uint64_t{16} << 20;
  WS_ASSIGN_OR_RETURN(ReadMemory buffer, ReadMemory::Map(kBuffer));
  buffer.Populate(0, kBuffer);
  const absl::Time start = absl::Now();
  for (const std::string& path : files) {
    WS_ASSIGN_OR_RETURN(ReadFile file,
                        OpenReadFile(path, /*want_direct=*/true));
    for (uint64_t offset = 0; offset < file.size;) {
      const ssize_t n = ::pread(file.fd.get(), buffer.data(), kBuffer,
                                static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoToStatus(errno, "baseline read " + path);
      if (n == 0) break;
      offset += static_cast<uint64_t>(n);
    }
  }
  return absl::Now() - start;
}

// O_DIRECT reads of every file, 8 MiB each, 16 at once through
// `engine` into the staging pool's slabs (registered with the engine, in
// huge pages where the system allows): the disk at depth, as fio measures
// it with several streams, into the same memory the loader reads into.
absl::StatusOr<absl::Duration> OdirectManyReadsBaseline(
    const std::vector<std::string>& files, ReadEngine* engine,
    StagingPool* pool) {
  // 8 MiB reads, or a slab each where slabs are smaller (tests).
  const uint64_t read_bytes = std::min(uint64_t{8} << 20, pool->slab_bytes());
  const int per_slab = static_cast<int>(pool->slab_bytes() / read_bytes);
  const int in_flight = std::min(16, pool->slab_count() * per_slab);
  WS_ASSIGN_OR_RETURN(StagingPool::Residency residency, pool->MakeResident());
  std::vector<StagingPool::Slab> slabs;
  std::vector<char*> buffers;
  while (static_cast<int>(buffers.size()) < in_flight) {
    slabs.push_back(pool->Acquire());
    for (int i = 0;
         i < per_slab && static_cast<int>(buffers.size()) < in_flight; ++i) {
      buffers.push_back(slabs.back().data() + i * read_bytes);
    }
  }
  std::vector<ReadFile> opened;
  for (const std::string& path : files) {
    WS_ASSIGN_OR_RETURN(ReadFile file,
                        OpenReadFile(path, /*want_direct=*/true));
    opened.push_back(std::move(file));
  }
  absl::Mutex mutex;
  std::vector<int> free_buffers;
  for (int i = 0; i < in_flight; ++i) free_buffers.push_back(i);
  absl::Status first_error;
  const absl::Time start = absl::Now();
  for (const ReadFile& file : opened) {
    for (uint64_t offset = 0; offset < file.size; offset += read_bytes) {
      int index;
      {
        absl::MutexLock lock(&mutex);
        mutex.Await(absl::Condition(
            +[](std::vector<int>* free) { return !free->empty(); },
            &free_buffers));
        index = free_buffers.back();
        free_buffers.pop_back();
      }
      // Past the end of the file an O_DIRECT read returns what there is.
      engine->Submit(ReadRequest{file.fd.get(), offset, read_bytes,
                                 buffers[index], file.path},
                     [&mutex, &free_buffers, &first_error,
                      index](absl::StatusOr<uint64_t> result) {
                       absl::MutexLock lock(&mutex);
                       if (!result.ok() && first_error.ok()) {
                         first_error = result.status();
                       }
                       free_buffers.push_back(index);
                     });
    }
  }
  engine->Drain();
  const absl::Duration elapsed = absl::Now() - start;
  absl::MutexLock lock(&mutex);
  WS_RETURN_IF_ERROR(first_error);
  return elapsed;
}

// Reads every cached file into one freshly created shared memory mapping of
// their total size.
absl::StatusOr<absl::Duration> PageCacheToFreshShmBaseline(
    const std::vector<std::string>& files, uint64_t total) {
  const absl::Time start = absl::Now();
  ScopedFd memfd(::memfd_create("warmstart-bench-baseline", MFD_CLOEXEC));
  if (!memfd.valid()) return ErrnoToStatus(errno, "memfd_create");
  if (::ftruncate(memfd.get(), static_cast<off_t>(total)) != 0) {
    return ErrnoToStatus(errno, "ftruncate baseline memory");
  }
  void* mapped = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED,
                        memfd.get(), 0);
  if (mapped == MAP_FAILED) return ErrnoToStatus(errno, "mmap baseline");
  char* const base = static_cast<char*>(mapped);
  char* out = base;
  absl::Status status;
  for (const std::string& path : files) {
    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      status = ErrnoToStatus(errno, "open " + path);
      break;
    }
    while (true) {
      // Bounded by the mapping, in case a file grew since it was measured.
      const uint64_t room = total - static_cast<uint64_t>(out - base);
      if (room == 0) break;
      const ssize_t n =
          ::read(fd.get(), out, std::min<uint64_t>(room, uint64_t{64} << 20));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = ErrnoToStatus(errno, "baseline read " + path);
        break;
      }
      if (n == 0) break;
      out += n;
    }
  }
  const absl::Duration elapsed = absl::Now() - start;
  ::munmap(mapped, total);
  if (!status.ok()) return status;
  return elapsed;
}

// Copies `total` bytes from the pool's pinned slabs into one device
// allocation, slab-sized copies in flight on every slab, and returns GB/s.
absl::StatusOr<double> HostToDevicePeak(Device* device, StagingPool* pool,
                                        uint64_t total) {
  WS_ASSIGN_OR_RETURN(std::unique_ptr<DeviceAllocation> target,
                      device->Allocate(total, "bench-h2d"));
  WS_ASSIGN_OR_RETURN(StagingPool::Residency residency, pool->MakeResident());
  auto errors = std::make_shared<absl::Status>();
  auto mutex = std::make_shared<absl::Mutex>();
  const absl::Time start = absl::Now();
  for (uint64_t offset = 0; offset < total; offset += pool->slab_bytes()) {
    auto slab = std::make_shared<StagingPool::Slab>(pool->Acquire());
    const uint64_t bytes = std::min(pool->slab_bytes(), total - offset);
    device->CopyFromHost(*target, offset, slab->data(), bytes,
                         [slab, errors, mutex](absl::Status status) mutable {
                           absl::MutexLock lock(mutex.get());
                           if (errors->ok()) *errors = std::move(status);
                           slab.reset();
                         });
  }
  WS_RETURN_IF_ERROR(device->Synchronize());
  const absl::Duration elapsed = absl::Now() - start;
  {
    absl::MutexLock lock(mutex.get());
    WS_RETURN_IF_ERROR(*errors);
  }
  return GigabytesPerSecond(total, elapsed);
}

// Compares every tensor of `model` (host memory) with its bytes in the
// files: DataLoss naming the first that differs. Plaintext tensors only
// (encrypted ones are stored as ciphertext); nothing to do for GPU memory.
absl::Status VerifyAgainstFiles(const Manifest& manifest, LoadedModel& model) {
  const char* const arena = model.arena->host_data();
  if (arena == nullptr) return absl::OkStatus();
  std::vector<char> buffer(uint64_t{8} << 20);
  size_t t = 0;
  for (const FileManifest& file : manifest.files) {
    ScopedFd fd(::open(file.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoToStatus(errno, "open " + file.path);
    for (const TensorEntry& tensor : file.tensors) {
      const LoadedTensor& loaded = model.tensors[t++];
      if (tensor.encryption.has_value() || tensor.stored_bytes == 0) continue;
      for (uint64_t done = 0; done < tensor.stored_bytes;) {
        const uint64_t want =
            std::min<uint64_t>(buffer.size(), tensor.stored_bytes - done);
        const ssize_t n = ::pread(fd.get(), buffer.data(), want,
                                  static_cast<off_t>(tensor.offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return ErrnoToStatus(n < 0 ? errno : EIO, "verify read");
        if (std::memcmp(buffer.data(), arena + loaded.offset + done, n) != 0) {
          return absl::DataLossError(absl::StrFormat(
              "%s: tensor %s differs from the file after loading", file.path,
              tensor.name));
        }
        done += static_cast<uint64_t>(n);
      }
    }
  }
  return absl::OkStatus();
}

// Runs each peer of the mode once, right after the daemon's load of run
// `run` (whose rate is `load`), so that peers and the daemon alternate.
absl::Status MeasurePeers(const BenchOptions& options, bool cold, double load,
                          int run, ModeResult& mode,
                          const std::function<void(const std::string&)>& log) {
  const std::vector<std::string>& peers =
      cold ? options.cold_peers : options.warm_peers;
  if (peers.empty()) return absl::OkStatus();
  if (!options.measure_peer) {
    return absl::InvalidArgumentError("bench: peers given without a runner");
  }
  if (mode.peers.empty()) {
    for (const std::string& name : peers) mode.peers.push_back({name});
  }
  for (ModeResult::Peer& peer : mode.peers) {
    WS_ASSIGN_OR_RETURN(double gbps, options.measure_peer(peer.name, cold));
    if (!(gbps > 0)) {
      return absl::InternalError(absl::StrFormat(
          "bench: peer %s reported %f GB/s %s", peer.name, gbps, mode.mode));
    }
    peer.gbps.push_back(gbps);
    peer.ratios.push_back(load / gbps);
    log(absl::StrFormat("%s run %d: peer %s %.3f GB/s, ratio %.3f", mode.mode,
                        run + 1, peer.name, gbps, load / gbps));
  }
  return absl::OkStatus();
}

}  // namespace

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle]
                                : (values[middle - 1] + values[middle]) / 2;
}

// Downloads every object of `manifest` (all remote) with `remote`, as a
// plain client would: windows of concurrency x 4 MiB, each read in parallel
// ranged GETs into one reused buffer.
absl::StatusOr<absl::Duration> ParallelRangedGetBaseline(
    const Manifest& manifest, const RemoteSources& remote) {
  const uint64_t window =
      uint64_t{remote.options().concurrency} * (uint64_t{4} << 20);
  std::unique_ptr<char[]> buffer(new char[window]);
  const absl::Time start = absl::Now();
  for (const FileManifest& file : manifest.files) {
    WS_ASSIGN_OR_RETURN(std::unique_ptr<RemoteObject> object,
                        remote.Open(file.path));
    for (uint64_t offset = 0; offset < object->size(); offset += window) {
      WS_RETURN_IF_ERROR(object->ReadAt(
          offset, std::min(window, object->size() - offset), buffer.get()));
    }
  }
  return absl::Now() - start;
}

absl::StatusOr<BenchResult> RunBench(const BenchOptions& options,
                                     Device* device) {
  // URLs are allowed with their siblings (a shard index names objects
  // beside it): the user named them.
  std::unique_ptr<RemoteSources> remote;
  RemoteOptions remote_options;
  remote_options.concurrency = options.remote_concurrency;
  for (const std::string& path : options.paths) {
    if (IsRemoteUrl(path)) {
      remote_options.allowed_prefixes.push_back(
          path.substr(0, path.rfind('/') + 1));
    }
  }
  if (!remote_options.allowed_prefixes.empty()) {
    if (remote_options.allowed_prefixes.size() != options.paths.size()) {
      return absl::InvalidArgumentError(
          "bench: give either local paths or URLs, not both (their modes "
          "differ)");
    }
    WS_ASSIGN_OR_RETURN(remote,
                        RemoteSources::Create(std::move(remote_options)));
  }
  ParseOptions parse_options;
  parse_options.remote = remote.get();
  Manifest manifest;
  for (const std::string& path : options.paths) {
    WS_ASSIGN_OR_RETURN(Manifest part, OpenCheckpoint(path, parse_options));
    for (FileManifest& file : part.files) {
      manifest.files.push_back(std::move(file));
    }
  }
  BenchResult result;
  result.runs = options.runs;
  result.staging_bytes = options.staging_bytes;
  std::vector<std::string> files;
  for (const FileManifest& file : manifest.files) {
    files.push_back(file.path);
    result.file_bytes += file.file_size;
  }
  result.files = files.size();

  // The engine is declared first so that it outlives the pool, which
  // registers its slabs with it (and unregisters them when it goes).
  ReadEngineOptions engine_options;
  engine_options.kind = options.io;
  WS_ASSIGN_OR_RETURN(std::unique_ptr<ReadEngine> engine,
                      CreateReadEngine(engine_options));
  result.io = std::string(engine->name());
  std::atomic<uint64_t> peak{0};
  WS_ASSIGN_OR_RETURN(
      std::unique_ptr<StagingPool> pool,
      StagingPool::Create({options.staging_bytes, options.slab_bytes}, device,
                          engine.get()));
  Loader loader(engine.get(), pool.get(), device);
  auto log = [&](const std::string& line) {
    if (options.log) options.log(line);
  };

  auto set_cache = [&](bool cold) -> absl::Status {
    for (const std::string& path : files) {
      WS_RETURN_IF_ERROR(cold ? EvictFromPageCache(path) : WarmPageCache(path));
      WS_ASSIGN_OR_RETURN(double resident, ResidentFraction(path));
      if (cold ? resident > 0.05 : resident < 0.95) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "%s: %.0f%% of its pages are cached after trying to make it %s",
            path, resident * 100, cold ? "cold" : "warm"));
      }
    }
    return absl::OkStatus();
  };

  if (remote != nullptr) {
    ModeResult mode;
    mode.mode = "remote";
    mode.baseline = "parallel_ranged_get";
    for (int run = 0; run < options.runs; ++run) {
      LoadOptions load_options;
      load_options.remote = remote.get();
      absl::Duration load_time;
      double cpu_seconds;
      {
        RssSampler sampler(&peak);
        const double cpu_start = ProcessCpuSeconds();
        const absl::Time start = absl::Now();
        WS_ASSIGN_OR_RETURN(LoadedModel model,
                            loader.Load(manifest, "bench", load_options));
        load_time = absl::Now() - start;
        cpu_seconds = ProcessCpuSeconds() - cpu_start;
      }
      mode.cpu_seconds_per_gb.push_back(cpu_seconds /
                                        (result.file_bytes / 1e9));
      WS_ASSIGN_OR_RETURN(absl::Duration baseline_time,
                          ParallelRangedGetBaseline(manifest, *remote));
      const double load = GigabytesPerSecond(result.file_bytes, load_time);
      const double baseline =
          GigabytesPerSecond(result.file_bytes, baseline_time);
      mode.load_gbps.push_back(load);
      mode.baseline_gbps.push_back(baseline);
      mode.ratios.push_back(load / baseline);
      log(absl::StrFormat(
          "remote run %d: load %.3f GB/s, %s %.3f GB/s, "
          "ratio %.3f",
          run + 1, load, mode.baseline, baseline, load / baseline));
    }
    mode.gbps_median = Median(mode.load_gbps);
    mode.baseline_gbps_median = Median(mode.baseline_gbps);
    mode.ratio_median = Median(mode.ratios);
    mode.cpu_seconds_per_gb_median = Median(mode.cpu_seconds_per_gb);
    result.results.push_back(std::move(mode));
  }
  for (const bool cold : {true, false}) {
    if (remote != nullptr) break;  // No local files to make cold or warm.
    ModeResult mode;
    mode.mode = cold ? "cold" : "warm";
    mode.baseline = cold ? "odirect_read" : "pagecache_to_fresh_shm";
    for (int run = 0; run < options.runs; ++run) {
      WS_RETURN_IF_ERROR(set_cache(cold));
      // The daemon's own choice: O_DIRECT, except for files the page
      // cache holds mostly (OpenFileForLoad), which the warm runs are.
      LoadOptions load_options;
      absl::Duration load_time;
      double cpu_seconds;
      {
        RssSampler sampler(&peak);
        const double cpu_start = ProcessCpuSeconds();
        const absl::Time start = absl::Now();
        WS_ASSIGN_OR_RETURN(LoadedModel model,
                            loader.Load(manifest, "bench", load_options));
        // Freeing the model is not part of loading it (the baselines do not
        // time their unmapping either), nor is checking it.
        load_time = absl::Now() - start;
        cpu_seconds = ProcessCpuSeconds() - cpu_start;
        WS_RETURN_IF_ERROR(VerifyAgainstFiles(manifest, model));
        if (!result.staging_huge_page_bytes.has_value()) {
          result.staging_huge_page_bytes = pool->HugePageBytes();
        }
        result.bytes_verified += model.tensor_bytes;
      }
      const double load = GigabytesPerSecond(result.file_bytes, load_time);
      mode.cpu_seconds_per_gb.push_back(cpu_seconds /
                                        (result.file_bytes / 1e9));
      WS_RETURN_IF_ERROR(set_cache(cold));
      absl::Duration baseline_time;
      if (cold) {
        WS_ASSIGN_OR_RETURN(baseline_time, OdirectReadBaseline(files));
      } else {
        WS_ASSIGN_OR_RETURN(baseline_time, PageCacheToFreshShmBaseline(
                                               files, result.file_bytes));
      }
      const double baseline =
          GigabytesPerSecond(result.file_bytes, baseline_time);
      mode.load_gbps.push_back(load);
      mode.baseline_gbps.push_back(baseline);
      mode.ratios.push_back(load / baseline);
      std::string second;
      if (cold) {
        WS_RETURN_IF_ERROR(set_cache(cold));
        mode.second_baseline = "odirect_many_reads";
        WS_ASSIGN_OR_RETURN(
            absl::Duration many_time,
            OdirectManyReadsBaseline(files, engine.get(), pool.get()));
        const double many = GigabytesPerSecond(result.file_bytes, many_time);
        mode.second_baseline_gbps.push_back(many);
        mode.second_ratios.push_back(load / many);
        second = absl::StrFormat(", %s %.3f GB/s, ratio %.3f",
                                 mode.second_baseline, many, load / many);
      }
      log(absl::StrFormat(
          "%s run %d: load %.3f GB/s (cpu %.3f s/GB), %s %.3f GB/s, ratio "
          "%.3f%s",
          mode.mode, run + 1, load, mode.cpu_seconds_per_gb.back(),
          mode.baseline, baseline, load / baseline, second));
      WS_RETURN_IF_ERROR(MeasurePeers(options, cold, load, run, mode, log));
    }
    mode.gbps_median = Median(mode.load_gbps);
    mode.baseline_gbps_median = Median(mode.baseline_gbps);
    mode.ratio_median = Median(mode.ratios);
    mode.cpu_seconds_per_gb_median = Median(mode.cpu_seconds_per_gb);
    if (!mode.second_ratios.empty()) {
      mode.second_baseline_gbps_median = Median(mode.second_baseline_gbps);
      mode.second_ratio_median = Median(mode.second_ratios);
    }
    for (ModeResult::Peer& peer : mode.peers) {
      peer.gbps_median = Median(peer.gbps);
      peer.ratio_median = Median(peer.ratios);
    }
    result.results.push_back(std::move(mode));
  }
  if (options.measure_h2d_peak) {
    ModeResult mode;
    mode.mode = "h2d_peak";
    const uint64_t total = std::min<uint64_t>(result.file_bytes, 4ull << 30);
    for (int run = 0; run < options.runs; ++run) {
      WS_ASSIGN_OR_RETURN(double gbps,
                          HostToDevicePeak(device, pool.get(), total));
      mode.load_gbps.push_back(gbps);
      log(absl::StrFormat("h2d_peak run %d: %.3f GB/s", run + 1, gbps));
    }
    mode.gbps_median = Median(mode.load_gbps);
    result.results.push_back(std::move(mode));
  }
  result.peak_rss_outside_arena = peak.load();
  return result;
}

}  // namespace warmstart
