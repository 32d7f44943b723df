#include "tools/warmstartctl/models_commands.h"

#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/client.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "nlohmann/json.hpp"
#include "tests/doubles/fake_daemon.h"
#include "tools/warmstartctl/daemon_commands.h"
#include "tools/warmstartctl/exit_codes.h"

namespace warmstart {
namespace ctl {
namespace {

using ::testing::ElementsAre;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;
using ::testing::StartsWith;
using ::warmstart::testing::FakeBehavior;
using ::warmstart::testing::FakeDaemon;
using ::warmstart::testing::FakeModel;
using ::warmstart::testing::ShortTempDir;

constexpr uint64_t kMiB = 1024 * 1024;

v1::ModelStatus MakeStatus(const std::string& name, v1::ModelState state,
                           uint64_t loaded, uint64_t total) {
  v1::ModelStatus status;
  status.set_name(name);
  status.set_path("/models/" + name);
  status.set_state(state);
  status.set_bytes_loaded(loaded);
  status.set_bytes_total(total);
  status.set_bytes_per_second(50.0 * kMiB);
  status.add_devices("host");
  return status;
}

struct Output {
  int code;
  std::string out;
  std::string err;
};

class ModelsCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeModel tiny;
    tiny.status = MakeStatus("tiny", v1::READY, 300 * kMiB, 300 * kMiB);
    tiny.status.set_tensor_count(7);
    tiny.status.set_load_seconds(1.5);
    tiny.status.set_leases(2);
    tiny.progress = {MakeStatus("tiny", v1::LOADING, 0, 300 * kMiB),
                     MakeStatus("tiny", v1::LOADING, 100 * kMiB, 300 * kMiB)};
    fake_.AddModel(tiny);
    FakeModel broken;
    broken.status = MakeStatus("broken", v1::FAILED, 10, 100);
    broken.status.set_error("read /models/broken: Input/output error");
    broken.status.set_error_code(static_cast<int>(absl::StatusCode::kDataLoss));
    fake_.AddModel(broken);
    ASSERT_OK(fake_.Start());
  }

  // Runs `command` on `args` (after the subcommand name) with --socket set
  // to the fake's, capturing what it prints.
  Output Run(int (*command)(const CommandLine&), std::vector<std::string> args,
             bool with_socket = true) {
    std::vector<std::string> words = {"warmstartctl", "cmd"};
    words.insert(words.end(), args.begin(), args.end());
    if (with_socket) {
      words.push_back("--socket");
      words.push_back(fake_.socket_path());
    }
    std::vector<const char*> argv;
    for (const std::string& word : words) argv.push_back(word.c_str());
    absl::StatusOr<CommandLine> line =
        ParseCommandLine(static_cast<int>(argv.size()), argv.data(),
                         {"--socket", "--timeout"}, {"--device"});
    EXPECT_OK(line.status());
    if (!line.ok()) return {-1, "", ""};
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    Output output;
    output.code = command(*line);
    output.out = ::testing::internal::GetCapturedStdout();
    output.err = ::testing::internal::GetCapturedStderr();
    return output;
  }

  ShortTempDir dir_;
  FakeDaemon fake_{dir_.path()};
};

TEST_F(ModelsCommandsTest, LoadWaitsShowingProgress) {
  Output load = Run(RunLoad, {"tiny", "/models/tiny", "--device", "host",
                              "--device", "GPU-1"});
  EXPECT_EQ(load.code, kExitOk) << load.err;
  EXPECT_EQ(load.out, "tiny ready: 7 tensors, 300.0 MiB in 1.50 s\n");
  EXPECT_THAT(load.err,
              StartsWith("loading tiny: 0.0 of 300.0 MiB (50.0 MiB/s)\n"));
  ASSERT_EQ(fake_.load_requests().size(), 1u);
  const v1::LoadModelRequest request = fake_.load_requests()[0];
  EXPECT_EQ(request.name(), "tiny");
  EXPECT_EQ(request.path(), "/models/tiny");
  EXPECT_THAT(request.devices(), ElementsAre("host", "GPU-1"));
}

TEST_F(ModelsCommandsTest, LoadNoWaitAndJson) {
  Output load = Run(RunLoad, {"tiny", "rel/dir", "--no-wait", "--json"});
  EXPECT_EQ(load.code, kExitOk) << load.err;
  auto json = nlohmann::json::parse(load.out);
  EXPECT_EQ(json["state"], "loading");
  EXPECT_EQ(json["bytes_total"], 300 * kMiB);
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  EXPECT_EQ(fake_.load_requests().back().path(), std::string(cwd) + "/rel/dir");

  Output waited = Run(RunLoad, {"tiny", "/models/tiny", "--json"});
  EXPECT_EQ(waited.code, kExitOk) << waited.err;
  EXPECT_EQ(nlohmann::json::parse(waited.out)["state"], "ready");
}

TEST_F(ModelsCommandsTest, LoadErrorsAreOneLineWithTheirExitCode) {
  Output failed = Run(RunLoad, {"broken", "/models/broken"});
  EXPECT_EQ(failed.code, kExitMalformed);
  EXPECT_EQ(failed.err,
            "warmstartctl: read /models/broken: Input/output error\n");

  FakeBehavior behavior;
  behavior.load_error = grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                                     "tiny is loaded from other files");
  fake_.set_behavior(behavior);
  Output taken = Run(RunLoad, {"tiny", "/models/other"});
  EXPECT_EQ(taken.code, kExitRefused);
  EXPECT_EQ(taken.err, "warmstartctl: tiny is loaded from other files\n");
  behavior.load_error = grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                                     "/etc is outside the model roots");
  fake_.set_behavior(behavior);
  EXPECT_EQ(Run(RunLoad, {"x", "/etc"}).code, kExitRefused);

  EXPECT_EQ(Run(RunLoad, {"tiny"}).code, kExitUsage);
  EXPECT_EQ(Run(RunLoad, {"tiny", "/m", "--timeout", "soon"}).code, kExitUsage);
}

TEST_F(ModelsCommandsTest, ListIsATable) {
  Output ls = Run(RunList, {});
  EXPECT_EQ(ls.code, kExitOk) << ls.err;
  EXPECT_EQ(ls.out,
            "NAME    STATE   SIZE       LEASES  DEVICES  PATH\n"
            "broken  failed  100 B      0       host     /models/broken\n"
            "tiny    ready   300.0 MiB  2       host     /models/tiny\n");
  Output json = Run(RunList, {"--json"});
  EXPECT_EQ(json.code, kExitOk);
  auto parsed = nlohmann::json::parse(json.out);
  ASSERT_EQ(parsed["models"].size(), 2u);
  EXPECT_EQ(parsed["models"][1]["name"], "tiny");
}

TEST_F(ModelsCommandsTest, StatusJsonAndText) {
  Output status = Run(RunStatus, {"tiny", "--json"});
  EXPECT_EQ(status.code, kExitOk) << status.err;
  auto json = nlohmann::json::parse(status.out);
  EXPECT_EQ(json["name"], "tiny");
  EXPECT_EQ(json["path"], "/models/tiny");
  EXPECT_EQ(json["state"], "ready");
  EXPECT_EQ(json["leases"], 2);
  EXPECT_EQ(json["bytes_loaded"], 300 * kMiB);
  EXPECT_EQ(json["bytes_total"], 300 * kMiB);
  EXPECT_EQ(json["error"], "");
  EXPECT_EQ(json["devices"], nlohmann::json::array({"host"}));

  Output broken = Run(RunStatus, {"broken", "--json"});
  EXPECT_EQ(nlohmann::json::parse(broken.out)["state"], "failed");
  Output text = Run(RunStatus, {"broken"});
  EXPECT_THAT(text.out, HasSubstr("broken: failed\n"));
  EXPECT_THAT(text.out, HasSubstr("error:    read /models/broken"));

  Output missing = Run(RunStatus, {"nope"});
  EXPECT_EQ(missing.code, kExitNotFound);
  EXPECT_EQ(missing.err, "warmstartctl: no model named nope\n");
}

TEST_F(ModelsCommandsTest, UnloadIsRefusedWhileLeased) {
  FakeBehavior behavior;
  behavior.unload_error =
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "tiny has 2 leases");
  fake_.set_behavior(behavior);
  Output refused = Run(RunUnload, {"tiny"});
  EXPECT_EQ(refused.code, kExitRefused);
  EXPECT_EQ(refused.err, "warmstartctl: tiny has 2 leases\n");
  fake_.set_behavior(FakeBehavior());
  Output unloaded = Run(RunUnload, {"tiny", "--force"});
  EXPECT_EQ(unloaded.code, kExitOk) << unloaded.err;
  EXPECT_EQ(unloaded.out, "tiny unloaded\n");
  EXPECT_TRUE(fake_.unload_requests().back().force());
  EXPECT_EQ(Run(RunUnload, {"tiny"}).code, kExitNotFound);
}

TEST_F(ModelsCommandsTest, UnloadJson) {
  Output unloaded = Run(RunUnload, {"tiny", "--json"});
  EXPECT_EQ(unloaded.code, kExitOk) << unloaded.err;
  auto json = nlohmann::json::parse(unloaded.out);
  EXPECT_EQ(json["name"], "tiny");
  EXPECT_TRUE(json["leases"].is_number_integer());
}

// The lines of `text`, without the empty one after the last newline.
std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

TEST_F(ModelsCommandsTest, WatchJsonIsOneObjectPerUpdate) {
  Output watch = Run(RunWatch, {"tiny", "--json"});
  EXPECT_EQ(watch.code, kExitOk) << watch.err;
  EXPECT_EQ(watch.err, "");
  const std::vector<std::string> lines = Lines(watch.out);
  ASSERT_THAT(lines, SizeIs(3));
  std::vector<std::string> states;
  for (const std::string& text : lines) {
    auto json = nlohmann::json::parse(text);
    for (const char* key : {"name", "state", "bytes_loaded", "bytes_total",
                            "bytes_per_second", "leases", "error"}) {
      EXPECT_TRUE(json.contains(key)) << key << " in " << text;
    }
    EXPECT_TRUE(json["leases"].is_number_integer());
    EXPECT_TRUE(json["bytes_loaded"].is_number_integer());
    states.push_back(json["state"]);
  }
  EXPECT_THAT(states, ElementsAre("loading", "loading", "ready"));
  auto last = nlohmann::json::parse(lines.back());
  EXPECT_EQ(last["bytes_loaded"], 300 * kMiB);
  EXPECT_EQ(last["leases"], 2);
  EXPECT_EQ(nlohmann::json::parse(lines[1])["bytes_loaded"], 100 * kMiB);
  EXPECT_EQ(nlohmann::json::parse(lines[1])["bytes_per_second"], 50.0 * kMiB);
}

TEST_F(ModelsCommandsTest, WatchHumanLines) {
  Output watch = Run(RunWatch, {"tiny"});
  EXPECT_EQ(watch.code, kExitOk) << watch.err;
  // The first report and every change of state at once; progress in
  // between at most once a second (the fake sends it all at once).
  EXPECT_THAT(watch.out,
              StartsWith("tiny: loading 0.0/300.0 MiB 50.0 MiB/s ETA 6s\n"));
  EXPECT_THAT(watch.out,
              EndsWith("tiny: ready, 300.0 MiB, 7 tensors, 2 leases (loaded "
                       "in 1.50 s)\n"));
  EXPECT_THAT(watch.out, Not(HasSubstr("\r")));
}

TEST_F(ModelsCommandsTest, WatchOfAFailedModelExitsWithItsError) {
  Output watch = Run(RunWatch, {"broken"});
  EXPECT_EQ(watch.code, kExitMalformed);
  EXPECT_EQ(watch.out,
            "broken: failed: read /models/broken: Input/output error\n");
  EXPECT_EQ(watch.err,
            "warmstartctl: read /models/broken: Input/output error\n");
  Output json = Run(RunWatch, {"broken", "--json"});
  EXPECT_EQ(json.code, kExitMalformed);
  auto last = nlohmann::json::parse(Lines(json.out).back());
  EXPECT_EQ(last["state"], "failed");
  EXPECT_EQ(last["error"], "read /models/broken: Input/output error");
}

TEST_F(ModelsCommandsTest, WatchErrors) {
  Output missing = Run(RunWatch, {"nope"});
  EXPECT_EQ(missing.code, kExitNotFound);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err, "warmstartctl: no model named nope\n");
  EXPECT_EQ(Run(RunWatch, {}).code, kExitUsage);
  EXPECT_EQ(Run(RunWatch, {"a", "b"}).code, kExitUsage);
  Output bad = Run(RunWatch, {"tiny", "--timeout", "later"});
  EXPECT_EQ(bad.code, kExitUsage);
  EXPECT_EQ(bad.err,
            "warmstartctl: --timeout \"later\": expected a number of "
            "seconds\n");
}

TEST_F(ModelsCommandsTest, StatsJsonCountsModelsAndLeases) {
  fake_.AddModel(::warmstart::testing::PatternModel("pattern", 4096));
  client::ConnectOptions options;
  options.socket_path = fake_.socket_path();
  auto connected = client::Client::Connect(options);
  ASSERT_OK(connected.status());
  auto mapping = (*connected)->Acquire("pattern");
  ASSERT_OK(mapping.status());

  Output stats = Run(RunStats, {"--json"});
  EXPECT_EQ(stats.code, kExitOk) << stats.err;
  auto json = nlohmann::json::parse(stats.out);
  EXPECT_EQ(json["models"], 3);
  EXPECT_EQ(json["leases"], 1);
  EXPECT_EQ(json["sessions"], 1);
  EXPECT_TRUE(json["devices"].is_array());
  ASSERT_TRUE(json["metrics"].contains("fake_calls"));
  // Counts are integers, not 12.0.
  EXPECT_TRUE(json["metrics"]["fake_calls"].is_number_integer());
  EXPECT_GT(json["metrics"]["fake_calls"], 0);
}

TEST_F(ModelsCommandsTest, StatsText) {
  Output stats = Run(RunStats, {});
  EXPECT_EQ(stats.code, kExitOk) << stats.err;
  EXPECT_THAT(stats.out, StartsWith("models: 2  leases: 0  sessions: 0\n"));
  EXPECT_THAT(stats.out, HasSubstr("metrics:\n  fake_calls  "));
  EXPECT_EQ(Run(RunStats, {"extra"}).code, kExitUsage);
}

TEST_F(ModelsCommandsTest, NoDaemonIsExit3) {
  const std::string socket = dir_.Join("none.sock");
  const std::vector<
      std::pair<int (*)(const CommandLine&), std::vector<std::string>>>
      commands = {{RunList, {}},      {RunStatus, {"m"}},
                  {RunUnload, {"m"}}, {RunLoad, {"m", "/m"}},
                  {RunWatch, {"m"}},  {RunStats, {}},
                  {RunInfo, {}}};
  for (auto [command, args] : commands) {
    args.push_back("--socket");
    args.push_back(socket);
    Output output = Run(command, args, /*with_socket=*/false);
    EXPECT_EQ(output.code, kExitUnavailable);
    EXPECT_EQ(output.err, "warmstartctl: daemon unavailable at " + socket +
                              ": no such socket\n");
  }
}

TEST_F(ModelsCommandsTest, WaitReadyStopsAtOnceWhenTheDaemonFailed) {
  FakeBehavior behavior;
  behavior.readiness.set_state(v1::Readiness::FAILED);
  behavior.readiness.set_message("preload llama: /models/llama: not found");
  fake_.set_behavior(behavior);
  const absl::Time start = absl::Now();
  Output wait = Run(RunWaitReady, {"--timeout", "30"});
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(wait.code, kExitRefused);
  EXPECT_EQ(wait.err, "warmstartctl: daemon at " + fake_.socket_path() +
                          " failed to become ready: preload llama: "
                          "/models/llama: not found\n");
}

TEST_F(ModelsCommandsTest, InfoShowsReadiness) {
  FakeBehavior behavior;
  behavior.readiness.set_state(v1::Readiness::STARTING);
  fake_.set_behavior(behavior);
  Output info = Run(RunInfo, {"--json"});
  EXPECT_EQ(info.code, kExitOk) << info.err;
  EXPECT_EQ(nlohmann::json::parse(info.out)["readiness"]["state"], "starting");
}

}  // namespace
}  // namespace ctl
}  // namespace warmstart
