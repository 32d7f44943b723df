#include "tools/warmstartctl/daemon_commands.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/printable.h"
#include "common/protocol.h"
#include "nlohmann/json.hpp"
#include "tools/warmstartctl/daemon_connection.h"
#include "tools/warmstartctl/exit_codes.h"
#include "tools/warmstartctl/progress.h"

namespace warmstart {
namespace ctl {
namespace {

using Json = nlohmann::ordered_json;

const char* ReadinessName(v1::Readiness::State state) {
  switch (state) {
    case v1::Readiness::STARTING:
      return "starting";
    case v1::Readiness::READY:
      return "ready";
    case v1::Readiness::FAILED:
      return "failed";
    case v1::Readiness::STOPPING:
      return "stopping";
    default:
      return "unknown";
  }
}

const char* BackendName(v1::Backend backend) {
  switch (backend) {
    case v1::BACKEND_HOST:
      return "host";
    case v1::BACKEND_CUDA:
      return "cuda";
    default:
      return "unknown";
  }
}

}  // namespace

int RunInfo(const CommandLine& line) {
  auto connected = ConnectToDaemon(line);
  if (!connected.ok()) {
    return FailDaemonCall(connected.status());
  }
  const v1::ServerInfo info = (*connected)->server_info();
  if (line.Has("--json")) {
    nlohmann::ordered_json out = {
        {"version", info.version()},
        {"protocol", std::to_string(info.protocol_major()) + "." +
                         std::to_string(info.protocol_minor())},
        {"backend", BackendName(info.backend())},
        {"cuda_status", info.cuda_status()},
        {"pid", info.pid()},
        {"readiness",
         {{"state", ReadinessName(info.readiness().state())},
          {"message", info.readiness().message()}}},
        {"devices", nlohmann::ordered_json::array()}};
    for (const v1::Device& device : info.devices()) {
      out["devices"].push_back({{"uuid", device.uuid()},
                                {"name", device.name()},
                                {"total_bytes", device.total_bytes()}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("warmstartd %s (protocol %u.%u), pid %u\n",
              info.version().c_str(), info.protocol_major(),
              info.protocol_minor(), info.pid());
  std::printf("backend: %s\n", BackendName(info.backend()));
  if (info.readiness().state() != v1::Readiness::STATE_UNSPECIFIED) {
    std::printf("readiness: %s%s%s\n", ReadinessName(info.readiness().state()),
                info.readiness().message().empty() ? "" : ": ",
                info.readiness().message().c_str());
  }
  if (info.backend() != v1::BACKEND_CUDA) {
    std::printf("cuda: %s\n", info.cuda_status().c_str());
  }
  for (const v1::Device& device : info.devices()) {
    std::printf("device: %s %s\n", device.uuid().c_str(),
                device.name().c_str());
  }
  return kExitOk;
}

int RunWaitReady(const CommandLine& line) {
  double seconds = 60;
  const std::string timeout_text = line.Value("--timeout", "60");
  if (!absl::SimpleAtod(timeout_text, &seconds) || seconds < 0) {
    return Fail(kExitUsage, "--timeout \"" + timeout_text +
                                "\": expected a number of seconds");
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(seconds);
  std::string last_error = "not tried";
  do {
    client::ConnectOptions options;
    options.socket_path = SocketPath(line, kDefaultSocketPath);
    options.timeout = std::max(absl::Milliseconds(100), deadline - absl::Now());
    options.wait_for_daemon = true;
    auto connected = client::Client::Connect(options);
    if (connected.ok()) {
      // A required preload failed: the daemon will never serve, so say why
      // now instead of waiting out the timeout.
      const v1::Readiness readiness = (*connected)->server_info().readiness();
      if (readiness.state() == v1::Readiness::FAILED) {
        const std::string why = readiness.message().empty()
                                    ? "(no reason given)"
                                    : readiness.message();
        return Fail(kExitRefused, "daemon at " + options.socket_path +
                                      " failed to become ready: " + why);
      }
      auto serving = (*connected)->IsServing(absl::Seconds(2));
      if (serving.ok() && *serving) {
        if (line.Has("--json")) {
          std::printf("%s\n", Json({{"state", "ready"},
                                    {"socket", options.socket_path}})
                                  .dump()
                                  .c_str());
        } else {
          std::printf("ready\n");
        }
        return kExitOk;
      }
      last_error = serving.ok() ? "daemon is not serving yet"
                                : std::string(serving.status().message());
    } else {
      last_error = std::string(connected.status().message());
      if (connected.status().code() == absl::StatusCode::kFailedPrecondition) {
        return Fail(kExitRefused, last_error);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (absl::Now() < deadline);
  return Fail(kExitTimeout,
              "not ready after " + timeout_text + " s: " + last_error);
}

namespace {

// A metric as JSON: integers (counts, bytes) as integers.
Json MetricJson(double value) {
  if (std::isfinite(value) && value == std::floor(value) &&
      std::fabs(value) < 9e15) {
    return static_cast<int64_t>(value);
  }
  return value;
}

std::string MetricText(double value) {
  if (std::isfinite(value) && value == std::floor(value) &&
      std::fabs(value) < 9e15) {
    return absl::StrFormat("%d", static_cast<int64_t>(value));
  }
  return absl::StrFormat("%.6g", value);
}

}  // namespace

int RunStats(const CommandLine& line) {
  if (!line.arguments.empty()) {
    return Fail(kExitUsage, "stats takes no arguments (see --help)");
  }
  auto connected = ConnectToDaemon(line);
  if (!connected.ok()) {
    return FailDaemonCall(connected.status());
  }
  absl::StatusOr<v1::Stats> stats = (*connected)->Stats();
  if (!stats.ok()) {
    return FailDaemonCall(stats.status());
  }
  // The proto map has no order; show it sorted by name.
  const std::map<std::string, double> metrics(stats->metrics().begin(),
                                              stats->metrics().end());
  if (line.Has("--json")) {
    Json out = {{"models", stats->models()},
                {"leases", stats->leases()},
                {"sessions", stats->sessions()},
                {"devices", Json::array()},
                {"metrics", Json::object()}};
    for (const v1::DeviceStats& device : stats->devices()) {
      out["devices"].push_back({{"uuid", device.uuid()},
                                {"resident_bytes", device.resident_bytes()},
                                {"budget_bytes", device.budget_bytes()},
                                {"free_bytes", device.free_bytes()},
                                {"retained_bytes", device.retained_bytes()}});
    }
    for (const auto& [name, value] : metrics) {
      out["metrics"][name] = MetricJson(value);
    }
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("models: %u  leases: %u  sessions: %u\n", stats->models(),
              stats->leases(), stats->sessions());
  for (const v1::DeviceStats& device : stats->devices()) {
    std::string budget = "no budget";
    if (device.budget_bytes() > 0) {
      budget = absl::StrFormat(
          "budget %s (%.0f%% used)", FormatBytes(device.budget_bytes()),
          100.0 * static_cast<double>(device.resident_bytes()) /
              static_cast<double>(device.budget_bytes()));
    }
    std::string extra;
    if (device.free_bytes() > 0) {
      extra += absl::StrCat(", ", FormatBytes(device.free_bytes()), " free");
    }
    if (device.retained_bytes() > 0) {
      extra += absl::StrCat(", ", FormatBytes(device.retained_bytes()),
                            " still mapped by clients after unload");
    }
    std::printf("device %s: %s resident, %s%s\n", device.uuid().c_str(),
                FormatBytes(device.resident_bytes()).c_str(), budget.c_str(),
                extra.c_str());
  }
  if (!metrics.empty()) {
    size_t width = 0;
    for (const auto& [name, value] : metrics) {
      width = std::max(width, name.size());
    }
    std::printf("metrics:\n");
    for (const auto& [name, value] : metrics) {
      std::printf("  %-*s  %s\n", static_cast<int>(width), name.c_str(),
                  MetricText(value).c_str());
    }
  }
  return kExitOk;
}

}  // namespace ctl
}  // namespace warmstart
