#include "daemon/bench/bench.h"

#include <algorithm>
#include <fstream>
#include <string>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/bench/page_cache.h"
#include "daemon/device/host_device.h"

namespace warmstart {
namespace {

using ::testing::DoubleEq;
using ::testing::Gt;
using ::testing::HasSubstr;
using ::testing::Lt;

TEST(MedianTest, OddAndEvenCounts) {
  EXPECT_THAT(Median({3, 1, 2}), DoubleEq(2));
  EXPECT_THAT(Median({4, 1, 3, 2}), DoubleEq(2.5));
}

TEST(PageCacheTest, EvictAndWarmChangeResidency) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  testing::WriteTestSafetensors(path, 1, 8 << 20);
  ASSERT_OK(EvictFromPageCache(path));
  ASSERT_OK_AND_ASSIGN(double cold, ResidentFraction(path));
  EXPECT_THAT(cold, Lt(0.05));
  ASSERT_OK(WarmPageCache(path));
  ASSERT_OK_AND_ASSIGN(double warm, ResidentFraction(path));
  EXPECT_THAT(warm, Gt(0.95));
  EXPECT_THAT(ResidentFraction(dir.Join("missing")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
}

TEST(RunBenchTest, MeasuresBothModesAgainstTheirBaselines) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  testing::WriteTestSafetensors(path, 1, 16 << 20);
  HostDevice device(HostDeviceOptions{});
  BenchOptions options;
  options.paths = {path};
  options.runs = 2;
  options.staging_bytes = 16 << 20;
  options.slab_bytes = 4 << 20;
  int lines = 0;
  options.log = [&lines](const std::string&) { ++lines; };
  ASSERT_OK_AND_ASSIGN(BenchResult result, RunBench(options, &device));
  EXPECT_EQ(result.files, 1u);
  EXPECT_GT(result.file_bytes, 16u << 20);
  EXPECT_EQ(lines, 4);
  ASSERT_EQ(result.results.size(), 2u);
  EXPECT_EQ(result.results[0].mode, "cold");
  EXPECT_EQ(result.results[0].baseline, "odirect_read");
  EXPECT_EQ(result.results[1].mode, "warm");
  EXPECT_EQ(result.results[1].baseline, "pagecache_to_fresh_shm");
  // Cold is also held to O_DIRECT reads at depth, in the same runs.
  EXPECT_EQ(result.results[0].second_baseline, "odirect_many_reads");
  ASSERT_EQ(result.results[0].second_ratios.size(), 2u);
  EXPECT_GT(result.results[0].second_baseline_gbps_median, 0);
  EXPECT_THAT(result.results[0].second_ratio_median,
              DoubleEq(Median(result.results[0].second_ratios)));
  EXPECT_TRUE(result.results[1].second_baseline.empty());
  for (const ModeResult& mode : result.results) {
    ASSERT_EQ(mode.ratios.size(), 2u);
    EXPECT_GT(mode.gbps_median, 0);
    EXPECT_GT(mode.baseline_gbps_median, 0);
    EXPECT_THAT(mode.ratio_median, DoubleEq(Median(mode.ratios)));
    // Loading 16 MiB takes some CPU (copies at least), in every run.
    ASSERT_EQ(mode.cpu_seconds_per_gb.size(), 2u);
    EXPECT_GT(*std::min_element(mode.cpu_seconds_per_gb.begin(),
                                mode.cpu_seconds_per_gb.end()),
              0);
    EXPECT_THAT(mode.cpu_seconds_per_gb_median,
                DoubleEq(Median(mode.cpu_seconds_per_gb)));
  }
  EXPECT_GT(result.peak_rss_outside_arena, 0u);
  // Every load of both modes was compared with the file.
  EXPECT_EQ(result.bytes_verified, 4u * (16u << 20));
}

TEST(RunBenchTest, PeersAlternateWithTheLoadsAndAreHeldToThem) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  testing::WriteTestSafetensors(path, 1, 8 << 20);
  HostDevice device(HostDeviceOptions{});
  BenchOptions options;
  options.paths = {path};
  options.runs = 3;
  options.staging_bytes = 16 << 20;
  options.slab_bytes = 4 << 20;
  options.cold_peers = {"fio", "runai"};
  options.warm_peers = {"runai"};
  std::vector<std::string> events;
  double next_gbps = 0;
  options.measure_peer = [&](const std::string& peer,
                             bool cold) -> absl::StatusOr<double> {
    events.push_back(peer + (cold ? " cold" : " warm"));
    return next_gbps += 0.5;  // Each call its own figure.
  };
  options.log = [&](const std::string& line) {
    if (line.find("peer") == std::string::npos) events.push_back("load");
  };
  ASSERT_OK_AND_ASSIGN(BenchResult result, RunBench(options, &device));
  const std::vector<std::string> cold_run = {"load", "fio cold", "runai cold"};
  const std::vector<std::string> warm_run = {"load", "runai warm"};
  std::vector<std::string> expected;
  for (int run = 0; run < 3; ++run) {
    expected.insert(expected.end(), cold_run.begin(), cold_run.end());
  }
  for (int run = 0; run < 3; ++run) {
    expected.insert(expected.end(), warm_run.begin(), warm_run.end());
  }
  EXPECT_EQ(events, expected);
  ASSERT_EQ(result.results.size(), 2u);
  for (const ModeResult& mode : result.results) {
    ASSERT_EQ(mode.peers.size(), mode.mode == "cold" ? 2u : 1u);
    for (const ModeResult::Peer& peer : mode.peers) {
      ASSERT_EQ(peer.gbps.size(), 3u);
      for (int run = 0; run < 3; ++run) {
        EXPECT_THAT(peer.ratios[run],
                    DoubleEq(mode.load_gbps[run] / peer.gbps[run]));
      }
      EXPECT_THAT(peer.gbps_median, DoubleEq(Median(peer.gbps)));
      EXPECT_THAT(peer.ratio_median, DoubleEq(Median(peer.ratios)));
    }
  }
  EXPECT_EQ(result.results[0].peers[0].name, "fio");
  EXPECT_EQ(result.results[1].peers[0].name, "runai");
}

TEST(RunBenchTest, APeerThatFailsFailsTheBenchmark) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  testing::WriteTestSafetensors(path, 1, 1 << 20);
  HostDevice device(HostDeviceOptions{});
  BenchOptions options;
  options.paths = {path};
  options.runs = 1;
  options.staging_bytes = 16 << 20;
  options.slab_bytes = 4 << 20;
  options.cold_peers = {"runai"};
  options.measure_peer = [](const std::string&,
                            bool) -> absl::StatusOr<double> {
    return absl::DataLossError("runai: its bytes did not match");
  };
  EXPECT_THAT(RunBench(options, &device),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("runai")));
}

TEST(RunBenchTest, MissingCheckpointIsAnError) {
  HostDevice device(HostDeviceOptions{});
  BenchOptions options;
  options.paths = {"/nonexistent/model.safetensors"};
  EXPECT_THAT(RunBench(options, &device),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nonexistent")));
}

}  // namespace
}  // namespace warmstart
