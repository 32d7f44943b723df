// Starts the real warmstartd and warmstartctl binaries.
#include <signal.h>
#include <sys/stat.h>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "nlohmann/json.hpp"
#include "tests/doubles/subprocess.h"

namespace warmstart {
namespace testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string& Daemon() {
  static const std::string path = BinaryPath("daemon/warmstartd");
  return path;
}
const std::string& Ctl() {
  static const std::string path = BinaryPath("tools/warmstartctl/warmstartctl");
  return path;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

TEST(DaemonCliTest, VersionAndHelpExitZero) {
  RunResult version = RunProcess({Daemon(), "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_THAT(version.out, StartsWith("warmstartd 0."));
  RunResult help = RunProcess({Daemon(), "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--socket PATH"));
  RunResult ctl_version = RunProcess({Ctl(), "--version"});
  EXPECT_EQ(ctl_version.exit_code, 0);
  EXPECT_THAT(ctl_version.out, StartsWith("warmstartctl 0."));
}

TEST(DaemonCliTest, BadFlagsAreUsageErrors) {
  RunResult backend =
      RunProcess({Daemon(), "--backend=tpu", "--socket=/tmp/x.sock"});
  EXPECT_EQ(backend.exit_code, 1);
  EXPECT_THAT(backend.err, HasSubstr("expected auto, host or cuda"));
  RunResult ctl = RunProcess({Ctl(), "frobnicate"});
  EXPECT_EQ(ctl.exit_code, 1);
  EXPECT_THAT(ctl.err, HasSubstr("unknown command \"frobnicate\""));
}

TEST(DaemonCliTest, CudaBackendWithoutGpuIsRefusedClearly) {
  ShortTempDir dir;
  RunResult result = RunProcess(
      {Daemon(), "--backend=cuda", "--socket=" + dir.Join("d.sock")});
  if (result.exit_code == 0) GTEST_SKIP() << "a GPU is present";
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("backend cuda: no"));
}

TEST(DaemonCliTest, ServesAnswersAndStopsCleanlyOnSigterm) {
  ShortTempDir dir;
  const std::string socket = dir.Join("d.sock");
  ChildProcess daemon({Daemon(), "--socket=" + socket, "--backend=host"},
                      dir.path());
  RunResult ready =
      RunProcess({Ctl(), "wait-ready", "--timeout", "30", "--socket", socket});
  ASSERT_EQ(ready.exit_code, 0) << ready.err << daemon.Stderr();

  RunResult info = RunProcess({Ctl(), "--socket", socket, "info", "--json"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  auto json = nlohmann::json::parse(info.out, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << info.out;
  EXPECT_EQ(json["backend"], "host");
  EXPECT_EQ(json["protocol"], "1.0");
  EXPECT_EQ(json["pid"], daemon.pid());

  struct stat st;
  ASSERT_EQ(::stat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);

  EXPECT_EQ(daemon.Stop(SIGTERM, 10000), 0) << daemon.Stderr();
  EXPECT_FALSE(Exists(socket));
  EXPECT_THAT(daemon.Stderr(), HasSubstr("stopped"));
}

TEST(DaemonCliTest, SecondDaemonOnTheSameSocketIsRefused) {
  ShortTempDir dir;
  const std::string socket = dir.Join("d.sock");
  ChildProcess first({Daemon(), "--socket=" + socket, "--backend=host"},
                     dir.path());
  ASSERT_EQ(RunProcess({Ctl(), "wait-ready", "--socket", socket}).exit_code, 0);
  RunResult second =
      RunProcess({Daemon(), "--socket=" + socket, "--backend=host"});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_THAT(second.err, HasSubstr("another server is listening"));
  EXPECT_EQ(first.Stop(SIGINT, 10000), 0);
}

TEST(DaemonCliTest, MissingDaemonIsExitThreeAndWaitReadyTimesOut) {
  ShortTempDir dir;
  RunResult info =
      RunProcess({Ctl(), "info", "--socket", dir.Join("none.sock")});
  EXPECT_EQ(info.exit_code, 3);
  EXPECT_THAT(info.err, HasSubstr("daemon unavailable"));
  RunResult wait = RunProcess({Ctl(), "wait-ready", "--timeout", "0.3",
                               "--socket", dir.Join("none.sock")});
  EXPECT_EQ(wait.exit_code, 6);
  EXPECT_THAT(wait.err, HasSubstr("not ready after 0.3 s"));
}

TEST(DaemonCliTest, WaitReadyWaitsForADaemonThatStartsLater) {
  ShortTempDir dir;
  const std::string socket = dir.Join("d.sock");
  ChildProcess waiter(
      {Ctl(), "wait-ready", "--timeout", "30", "--socket", socket}, dir.path());
  ::usleep(300 * 1000);
  ShortTempDir daemon_logs;
  ChildProcess daemon({Daemon(), "--socket=" + socket, "--backend=host"},
                      daemon_logs.path());
  // The waiter exits by itself once the daemon serves; Stop(0) only waits.
  EXPECT_EQ(waiter.Stop(0, 30000), 0);
  EXPECT_EQ(daemon.Stop(SIGTERM, 10000), 0);
}

TEST(BenchCliTest, HostBenchReportsBothModesAsJson) {
  const std::string fixture =
      FixturePath("safetensors/candle_whisper_mel_filters.safetensors");
  RunResult bench =
      RunProcess({Ctl(), "bench", fixture, "--runs", "1", "--json"});
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  auto json = nlohmann::json::parse(bench.out, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << bench.out;
  EXPECT_EQ(json["runs"], 1);
  EXPECT_EQ(json["file_bytes"], 64400);
  ASSERT_EQ(json["results"].size(), 2u);
  EXPECT_EQ(json["results"][0]["mode"], "cold");
  EXPECT_EQ(json["results"][0]["baseline"], "odirect_read");
  EXPECT_EQ(json["results"][1]["mode"], "warm");
  EXPECT_EQ(json["results"][1]["baseline"], "pagecache_to_fresh_shm");
  EXPECT_GT(json["results"][1]["ratio_median"].get<double>(), 0);
}

TEST(BenchCliTest, CudaBenchOnTheSimulatedDriverAddsTheCopyPeak) {
  const std::string fixture =
      FixturePath("safetensors/candle_whisper_mel_filters.safetensors");
  ::setenv("WARMSTART_LIBCUDA",
           BinaryPath("tests/doubles/libcuda_sim.so").c_str(), 1);
  RunResult bench = RunProcess(
      {Ctl(), "bench", fixture, "--backend", "cuda", "--runs", "1", "--json"});
  ::unsetenv("WARMSTART_LIBCUDA");
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  auto json = nlohmann::json::parse(bench.out, nullptr, false);
  ASSERT_EQ(json["results"].size(), 3u) << bench.out;
  EXPECT_EQ(json["results"][2]["mode"], "h2d_peak");
  EXPECT_EQ(json["results"][2]["backend"], "cuda");
  EXPECT_TRUE(json["results"][2]["baseline"].is_null());
  EXPECT_GT(json["results"][2]["gbps_median"].get<double>(), 0);
}

TEST(BenchCliTest, CudaWithoutADriverIsUnavailable) {
  ::setenv("WARMSTART_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
  RunResult bench = RunProcess(
      {Ctl(), "bench", FixturePath("safetensors/golden_rs_f32.safetensors"),
       "--backend", "cuda"});
  ::unsetenv("WARMSTART_LIBCUDA");
  EXPECT_EQ(bench.exit_code, 3);
  EXPECT_THAT(bench.err, HasSubstr("no CUDA driver"));
  EXPECT_EQ(bench.out, "");
}

}  // namespace
}  // namespace testing
}  // namespace warmstart
