#include "tools/warmstartctl/bench_command.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/printable.h"
#include "daemon/base/metrics.h"
#include "daemon/bench/bench.h"
#include "daemon/bench/peer_tools.h"
#include "daemon/device/cuda_device.h"
#include "daemon/device/cuda_driver.h"
#include "daemon/device/host_device.h"
#include "nlohmann/json.hpp"
#include "tools/warmstartctl/exit_codes.h"

namespace warmstart {
namespace ctl {
namespace {

// Where peers.py and a Python with the peers are looked for when the flags
// do not say: the repository's script (bench runs from the checkout) and
// the test venv's Python, else python3 on PATH.
std::string DefaultPeerPython() {
  const char* venv = std::getenv("WARMSTART_VENV");
  if (venv != nullptr && *venv != '\0') {
    const std::string python = std::string(venv) + "/bin/python3";
    if (::access(python.c_str(), X_OK) == 0) return python;
  }
  return "python3";
}

// Sets the peers of `options` from what peers.py finds installed; returns
// why none run (empty when some do), and fills `missing`.
std::string SetUpPeers(const CommandLine& line, BenchOptions& options,
                       std::unique_ptr<PeerTools>& tools,
                       std::map<std::string, std::string>& missing) {
  if (line.Has("--no-peers")) return "--no-peers";
  const std::string script =
      line.Value("--peer-script", "daemon/bench/peers.py");
  if (::access(script.c_str(), R_OK) != 0) {
    return "no " + script + " (give --peer-script PATH to peers.py)";
  }
  if (options.paths.size() != 1 ||
      !absl::EndsWith(options.paths[0], ".safetensors") ||
      absl::StrContains(options.paths[0], "://")) {
    return "the peers read one local .safetensors file";
  }
  tools = std::make_unique<PeerTools>(
      line.Value("--peer-python", DefaultPeerPython()), script);
  absl::StatusOr<PeerTools::Availability> availability = tools->Available();
  if (!availability.ok()) {
    return std::string(availability.status().message());
  }
  missing = availability->missing;
  for (const std::string& tool : availability->available) {
    options.cold_peers.push_back(tool);
    // fio measures the disk: there is no warm figure to compare.
    if (tool != "fio") options.warm_peers.push_back(tool);
  }
  if (options.cold_peers.empty()) return "none installed";
  const std::string file = options.paths[0];
  PeerTools* runner = tools.get();
  options.measure_peer = [runner, file](const std::string& peer, bool cold) {
    return runner->Measure(peer, file, cold);
  };
  return "";
}

}  // namespace

int RunBenchCommand(const CommandLine& line) {
  if (line.arguments.empty()) return Fail(kExitUsage, "bench needs a PATH");
  BenchOptions options;
  options.paths = line.arguments;
  const std::string backend = line.Value("--backend", "host");
  const std::string io = line.Value("--io", "uring");
  if (io == "uring") {
    options.io = ReadEngineOptions::Kind::kIoUring;
  } else if (io == "pread") {
    options.io = ReadEngineOptions::Kind::kPread;
  } else {
    return Fail(kExitUsage, "--io \"" + io + "\": expected uring or pread");
  }
  if (!absl::SimpleAtoi(line.Value("--runs", "5"), &options.runs) ||
      options.runs < 1) {
    return Fail(kExitUsage, "--runs: expected a positive number");
  }
  if (!absl::SimpleAtoi(line.Value("--remote-concurrency", "8"),
                        &options.remote_concurrency) ||
      options.remote_concurrency < 1 || options.remote_concurrency > 256) {
    return Fail(kExitUsage,
                "--remote-concurrency: expected a number from 1 to 256");
  }
  uint64_t staging_mib = options.staging_bytes >> 20;
  if (!absl::SimpleAtoi(
          line.Value("--staging-mib", std::to_string(staging_mib)),
          &staging_mib) ||
      staging_mib < 16 || staging_mib > (uint64_t{1} << 20)) {
    return Fail(kExitUsage,
                "--staging-mib: expected a number from 16 to 1048576");
  }
  options.staging_bytes = staging_mib << 20;

  std::unique_ptr<CudaDriver> driver;  // Outlives the device.
  std::unique_ptr<Device> device;
  std::string host_pages, host_pages_reason;  // Empty for GPUs.
  // Counts the pages each arena actually got (a hugetlb prediction can
  // fall back when other processes took the reserved pages meanwhile).
  Metrics host_metrics;
  if (backend == "host") {
    auto host = std::make_unique<HostDevice>(
        HostDeviceOptions{.metrics = &host_metrics});
    const HostPageChoice pages = host->PagesForNextAllocation();
    host_pages = HostPageKindName(pages.kind);
    host_pages_reason = pages.reason;
    device = std::move(host);
  } else if (backend == "cuda") {
    auto loaded = CudaDriver::Load();
    if (!loaded.ok()) {
      return Fail(kExitUnavailable,
                  "--backend cuda: " + std::string(loaded.status().message()));
    }
    driver = std::move(*loaded);
    auto cuda = CudaDevice::Create(driver.get(), 0, CudaDeviceOptions{});
    if (!cuda.ok()) {
      return Fail(kExitUnavailable,
                  "--backend cuda: " + std::string(cuda.status().message()));
    }
    options.measure_h2d_peak = true;
    device = std::move(*cuda);
  } else {
    return Fail(kExitUsage,
                "--backend \"" + backend + "\": expected host or cuda");
  }
  std::unique_ptr<PeerTools> peer_tools;  // Outlives the run.
  std::map<std::string, std::string> peers_missing;
  const std::string no_peers =
      SetUpPeers(line, options, peer_tools, peers_missing);
  const bool json = line.Has("--json");
  options.log = [](const std::string& text) {
    std::fprintf(stderr, "%s\n", text.c_str());
  };
  auto result = RunBench(options, device.get());
  if (!result.ok()) {
    return Fail(ExitCodeFor(result.status()),
                std::string(result.status().message()));
  }
  // "hugetlb" -> arenas that got them, from warmstart_host_allocations_total.
  std::map<std::string, int> arena_pages;
  for (const auto& [series, value] : host_metrics.Snapshot()) {
    constexpr absl::string_view kPrefix =
        "warmstart_host_allocations_total{pages=\"";
    if (absl::StartsWith(series, kPrefix) && absl::EndsWith(series, "\"}")) {
      arena_pages[series.substr(kPrefix.size(),
                                series.size() - kPrefix.size() - 2)] =
          static_cast<int>(value);
    }
  }
  if (json) {
    nlohmann::ordered_json out = {
        {"file_bytes", result->file_bytes},
        {"runs", result->runs},
        {"peak_rss_outside_arena_bytes", result->peak_rss_outside_arena},
        {"staging_bytes", result->staging_bytes},
        {"staging_huge_page_bytes",
         result->staging_huge_page_bytes.has_value()
             ? nlohmann::ordered_json(*result->staging_huge_page_bytes)
             : nlohmann::ordered_json(nullptr)},
        {"bytes_verified", result->bytes_verified},
        {"host_pages", host_pages.empty() ? nlohmann::ordered_json(nullptr)
                                          : nlohmann::ordered_json(host_pages)},
        {"arena_pages", arena_pages},
        {"host_pages_reason", host_pages.empty()
                                  ? nlohmann::ordered_json(nullptr)
                                  : nlohmann::ordered_json(host_pages_reason)},
        {"peers_not_run", no_peers.empty() ? nlohmann::ordered_json(nullptr)
                                           : nlohmann::ordered_json(no_peers)},
        {"peers_missing", peers_missing},
        {"results", nlohmann::ordered_json::array()}};
    for (const ModeResult& mode : result->results) {
      nlohmann::ordered_json entry = {
          {"mode", mode.mode},      {"backend", backend},
          {"io", result->io},       {"gbps_median", mode.gbps_median},
          {"baseline", nullptr},    {"baseline_gbps_median", nullptr},
          {"ratio_median", nullptr}};
      // h2d_peak has no baseline: it is the ceiling itself.
      if (!mode.baseline.empty()) {
        entry["baseline"] = mode.baseline;
        entry["baseline_gbps_median"] = mode.baseline_gbps_median;
        entry["ratio_median"] = mode.ratio_median;
        entry["cpu_seconds_per_gb_median"] = mode.cpu_seconds_per_gb_median;
      }
      if (!mode.second_baseline.empty()) {
        entry["second_baseline"] = mode.second_baseline;
        entry["second_baseline_gbps_median"] = mode.second_baseline_gbps_median;
        entry["second_ratio_median"] = mode.second_ratio_median;
      }
      entry["peers"] = nlohmann::ordered_json::array();
      for (const ModeResult::Peer& peer : mode.peers) {
        entry["peers"].push_back({{"peer", peer.name},
                                  {"gbps_median", peer.gbps_median},
                                  {"ratio_median", peer.ratio_median}});
      }
      out["results"].push_back(std::move(entry));
    }
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("%.3f GB in %zu file(s), %d runs per mode, backend %s, io %s\n",
              result->file_bytes / 1e9, result->files, result->runs,
              backend.c_str(), result->io.c_str());
  if (!host_pages.empty()) {
    std::printf("host pages: %s (%s)\n", host_pages.c_str(),
                host_pages_reason.c_str());
  }
  if (!arena_pages.empty()) {
    std::string got;
    for (const auto& [pages, count] : arena_pages) {
      got += (got.empty() ? "" : ", ") + pages + " " + std::to_string(count);
    }
    std::printf("arenas got: %s (allocations by pages)\n", got.c_str());
  }
  if (result->staging_huge_page_bytes.has_value()) {
    std::printf(
        "staging pages: %.0f of %.0f MiB in 2 MiB pages (larger O_DIRECT "
        "requests; /sys/kernel/mm/transparent_hugepage/enabled always or "
        "madvise gives them)\n",
        *result->staging_huge_page_bytes / 1048576.0,
        result->staging_bytes / 1048576.0);
  }
  for (const ModeResult& mode : result->results) {
    if (mode.baseline.empty()) {
      std::printf("%-8s %.3f GB/s (median)\n", mode.mode.c_str(),
                  mode.gbps_median);
      continue;
    }
    std::printf(
        "%-8s load %.3f GB/s   %s %.3f GB/s   ratio %.3f   cpu %.3f s/GB "
        "(medians)\n",
        mode.mode.c_str(), mode.gbps_median, mode.baseline.c_str(),
        mode.baseline_gbps_median, mode.ratio_median,
        mode.cpu_seconds_per_gb_median);
    if (!mode.second_baseline.empty()) {
      std::printf("%-8s load %.3f GB/s   %s %.3f GB/s   ratio %.3f (medians)\n",
                  mode.mode.c_str(), mode.gbps_median,
                  mode.second_baseline.c_str(),
                  mode.second_baseline_gbps_median, mode.second_ratio_median);
    }
    for (const ModeResult::Peer& peer : mode.peers) {
      std::printf(
          "%-8s load %.3f GB/s   peer %s %.3f GB/s   ratio %.3f (medians)\n",
          mode.mode.c_str(), mode.gbps_median, peer.name.c_str(),
          peer.gbps_median, peer.ratio_median);
    }
  }
  if (!no_peers.empty()) std::printf("peers not run: %s\n", no_peers.c_str());
  for (const auto& [tool, why] : peers_missing) {
    std::printf("peer %s missing: %s\n", tool.c_str(), why.c_str());
  }
  std::printf("every load verified against the files: %.3f GB compared\n",
              result->bytes_verified / 1e9);
  std::printf(
      "peak resident memory outside the arena: %.1f MiB (staging pool %.0f "
      "MiB)\n",
      result->peak_rss_outside_arena / 1048576.0,
      result->staging_bytes / 1048576.0);
  return kExitOk;
}

}  // namespace ctl
}  // namespace warmstart
