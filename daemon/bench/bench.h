// The load benchmark behind `warmstartctl bench`: loads a checkpoint again
// and again, cold (file pages evicted) and warm (pages cached), and measures
// in the same run, alternating with the loads, the baseline each mode is
// held to:
//   cold: a sequential O_DIRECT read of the same files into one reused
//         aligned buffer ("odirect_read"): what the disk gives;
//         Also, as a second baseline, "odirect_many_reads": the same files
//         read O_DIRECT through the io_uring engine with 16 reads of 8 MiB
//         in flight at once, what the disk gives at depth (the figure to
//         compare with fio's many streams);
//   warm: reading the cached files into freshly created shared memory of
//         the same size ("pagecache_to_fresh_shm"): what the page cache and
//         fresh-page faults give.
// Checkpoints named by URL (remote sources) have one mode instead:
//   remote: loads through the remote source (ranged GETs into the staging
//         slabs), held to a plain parallel download of the same objects
//         with the same client and connections, in the same run
//         ("parallel_ranged_get": windows of concurrency x 4 MiB read in
//         `concurrency` parallel ranged GETs into one reused buffer; no
//         parsing, staging or copy).
// Peers (other loaders: fio, Run:ai's streamer, safetensors; measure_peer
// runs them) load the same file in the same runs, after the daemon's load
// and its baselines, each held to the daemon the same way (ratio: load /
// peer).
// GB/s are 10^9 bytes per second of file bytes; a mode's ratio is the median
// of the per-run ratios load / baseline.
#ifndef WARMSTART_DAEMON_BENCH_BENCH_H_
#define WARMSTART_DAEMON_BENCH_BENCH_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/device/device.h"
#include "daemon/io/read_engine.h"

namespace warmstart {

struct BenchOptions {
  std::vector<std::string> paths;  // As `inspect` takes them.
  ReadEngineOptions::Kind io = ReadEngineOptions::Kind::kIoUring;
  int runs = 5;
  uint64_t staging_bytes = uint64_t{256} << 20;
  uint64_t slab_bytes = uint64_t{16} << 20;
  // Also measure the peak pinned host-to-device copy rate through the
  // device (mode "h2d_peak", GPUs only: for host memory it is a memcpy).
  bool measure_h2d_peak = false;
  // Parallel ranged GETs for URLs (connections).
  unsigned remote_concurrency = 8;
  // Peers measured in every cold run, and in every warm run, by
  // measure_peer(peer, cold), which returns GB/s (and sets the page cache
  // itself). An error fails the benchmark. Local checkpoints only.
  std::vector<std::string> cold_peers;
  std::vector<std::string> warm_peers;
  std::function<absl::StatusOr<double>(const std::string& peer, bool cold)>
      measure_peer;
  // Receives one line per measurement, as it happens (progress on stderr).
  std::function<void(const std::string&)> log;
};

struct ModeResult {
  std::string mode;  // "cold", "warm", "remote" or "h2d_peak".
  // "odirect_read", "pagecache_to_fresh_shm" or "parallel_ranged_get";
  // empty for h2d_peak, which
  // is itself the ceiling a GPU load is held to.
  std::string baseline;
  std::vector<double> load_gbps;
  std::vector<double> baseline_gbps;
  std::vector<double> ratios;
  double gbps_median = 0;
  double baseline_gbps_median = 0;
  double ratio_median = 0;
  // A second baseline measured in the same runs ("odirect_many_reads" for
  // cold); empty when there is none.
  std::string second_baseline;
  std::vector<double> second_baseline_gbps;
  std::vector<double> second_ratios;
  double second_baseline_gbps_median = 0;
  double second_ratio_median = 0;
  // Each peer of the mode, in BenchOptions' order.
  struct Peer {
    std::string name;
    std::vector<double> gbps;
    std::vector<double> ratios;  // load / peer, run by run.
    double gbps_median = 0;
    double ratio_median = 0;
  };
  std::vector<Peer> peers;
  // CPU time (user + system, every thread of the process: the loader's,
  // the read engine's, the page reservation's) spent in each load, per GB
  // of file bytes; empty for h2d_peak.
  std::vector<double> cpu_seconds_per_gb;
  double cpu_seconds_per_gb_median = 0;
};

struct BenchResult {
  uint64_t file_bytes = 0;
  size_t files = 0;
  int runs = 0;
  std::string io;  // The engine that ran: "io_uring" or "pread".
  std::vector<ModeResult> results;
  // The most resident memory the process held outside shared memory (the
  // arena) while loading: VmRSS - RssShmem, sampled every few ms.
  uint64_t peak_rss_outside_arena = 0;
  uint64_t staging_bytes = 0;
  // Bytes of the staging pool in transparent huge pages after the first
  // load (nullopt when /proc/self/smaps cannot be read): 2 MiB pages make
  // larger O_DIRECT requests (daemon/io/read_memory.h).
  std::optional<uint64_t> staging_huge_page_bytes;
  // Tensor bytes of every load compared with the files after it (untimed);
  // a difference fails the benchmark with DataLoss.
  uint64_t bytes_verified = 0;
};

// Runs the benchmark, loading onto `device` (which must outlive the call).
// Errors: those of opening and loading the checkpoint; FailedPrecondition
// when the page cache cannot be emptied for a cold run (checked with
// mincore) or filled for a warm one.
absl::StatusOr<BenchResult> RunBench(const BenchOptions& options,
                                     Device* device);

// The median of `values` (the mean of the middle two for an even count).
// REQUIRES: !values.empty().
double Median(std::vector<double> values);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BENCH_BENCH_H_
