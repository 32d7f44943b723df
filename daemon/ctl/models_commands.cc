#include "daemon/ctl/models_commands.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace ctl {
namespace {

using Json = nlohmann::ordered_json;

constexpr double kMiB = 1024.0 * 1024.0;

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "warmstartctl: %s\n", message.c_str());
  return code;
}

int Fail(const absl::Status& status) {
  return Fail(ExitCodeForDaemonCall(status), std::string(status.message()));
}

absl::StatusOr<std::unique_ptr<client::Client>> Connect(
    const CommandLine& line) {
  client::ConnectOptions options;
  options.socket_path = line.Value("--socket", client::kDefaultSocket);
  return client::Client::Connect(options);
}

const char* StateName(v1::ModelState state) {
  switch (state) {
    case v1::LOADING:
      return "loading";
    case v1::READY:
      return "ready";
    case v1::FAILED:
      return "failed";
    case v1::UNLOADING:
      return "unloading";
    default:
      return "unknown";
  }
}

// "512 B", "1.5 KiB", "12.0 MiB", "3.25 GiB".
std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrFormat("%d B", bytes);
  if (bytes < 1024 * 1024) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  if (bytes < 1024ull * 1024 * 1024) {
    return absl::StrFormat("%.1f MiB", bytes / kMiB);
  }
  return absl::StrFormat("%.2f GiB", bytes / (kMiB * 1024));
}

Json ModelJson(const v1::ModelStatus& model) {
  Json devices = Json::array();
  for (const std::string& device : model.devices()) devices.push_back(device);
  return Json{{"name", model.name()},
              {"path", model.path()},
              {"state", StateName(model.state())},
              {"error", model.error()},
              {"bytes_loaded", model.bytes_loaded()},
              {"bytes_total", model.bytes_total()},
              {"bytes_per_second", model.bytes_per_second()},
              {"leases", model.leases()},
              {"pinned", model.pinned()},
              {"devices", devices},
              {"tensor_count", model.tensor_count()},
              {"resident_bytes", model.resident_bytes()},
              {"load_seconds", model.load_seconds()}};
}

void PrintJson(const Json& json) { std::printf("%s\n", json.dump(2).c_str()); }

std::string Devices(const v1::ModelStatus& model) {
  if (model.devices().empty()) return "-";
  return absl::StrJoin(model.devices(), ",");
}

std::string ProgressLine(const v1::ModelStatus& model) {
  return absl::StrFormat("loading %s: %.1f of %.1f MiB (%.1f MiB/s)",
                         model.name(), model.bytes_loaded() / kMiB,
                         model.bytes_total() / kMiB,
                         model.bytes_per_second() / kMiB);
}

// The daemon wants an absolute path; take a relative one as the user means
// it, against the current directory.
std::string Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[4096];
  if (::getcwd(cwd, sizeof(cwd)) == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

}  // namespace

int RunLoad(const CommandLine& line) {
  if (line.arguments.size() != 2) {
    return Fail(kExitUsage, "load takes NAME PATH (see --help)");
  }
  const std::string& name = line.arguments[0];
  const std::string path = Absolute(line.arguments[1]);
  absl::Duration timeout = absl::InfiniteDuration();
  if (line.values.count("--timeout")) {
    double seconds;
    const std::string text = line.Value("--timeout", "");
    if (!absl::SimpleAtod(text, &seconds) || seconds < 0) {
      return Fail(kExitUsage,
                  "--timeout \"" + text + "\": expected a number of seconds");
    }
    timeout = absl::Seconds(seconds);
  }
  const absl::Time deadline = absl::Now() + timeout;
  auto connected = Connect(line);
  if (!connected.ok()) return Fail(connected.status());
  client::Client& daemon = **connected;

  client::LoadModelOptions options;
  options.devices = line.Values("--device");
  // Always start without waiting and then watch, so progress shows.
  options.no_wait = true;
  absl::StatusOr<v1::ModelStatus> started =
      daemon.Load(name, path, options, timeout);
  if (!started.ok()) return Fail(started.status());
  v1::ModelStatus last = *started;
  if (line.Has("--no-wait")) {
    if (line.Has("--json")) {
      PrintJson(ModelJson(last));
    } else {
      std::printf("%s %s: %.1f of %.1f MiB\n", name.c_str(),
                  StateName(last.state()), last.bytes_loaded() / kMiB,
                  last.bytes_total() / kMiB);
    }
    return kExitOk;
  }
  if (last.state() != v1::READY) {
    absl::Time last_print = absl::InfinitePast();
    absl::Status watched = daemon.Watch(
        name,
        [&](const v1::ModelStatus& model) {
          last = model;
          if (model.state() != v1::LOADING) return;
          const absl::Time now = absl::Now();
          if (now - last_print < absl::Seconds(1)) return;
          last_print = now;
          std::fprintf(stderr, "%s\n", ProgressLine(model).c_str());
        },
        deadline - absl::Now());
    if (!watched.ok()) {
      if (watched.code() == absl::StatusCode::kDeadlineExceeded) {
        return Fail(kExitTimeout,
                    absl::StrFormat("model %s is not ready after %s (the load "
                                    "goes on)",
                                    name, absl::FormatDuration(timeout)));
      }
      return Fail(watched);
    }
  }
  if (line.Has("--json")) {
    PrintJson(ModelJson(last));
  } else {
    std::printf("%s ready: %u tensors, %.1f MiB in %.2f s\n", name.c_str(),
                last.tensor_count(), last.bytes_total() / kMiB,
                last.load_seconds());
  }
  return kExitOk;
}

int RunList(const CommandLine& line) {
  if (!line.arguments.empty()) {
    return Fail(kExitUsage, "ls takes no arguments (see --help)");
  }
  auto connected = Connect(line);
  if (!connected.ok()) return Fail(connected.status());
  absl::StatusOr<std::vector<v1::ModelStatus>> models = (*connected)->List();
  if (!models.ok()) return Fail(models.status());
  if (line.Has("--json")) {
    Json out = {{"models", Json::array()}};
    for (const v1::ModelStatus& model : *models) {
      out["models"].push_back(ModelJson(model));
    }
    PrintJson(out);
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STATE", "SIZE", "LEASES", "DEVICES", "PATH"}};
  for (const v1::ModelStatus& model : *models) {
    rows.push_back({model.name(), StateName(model.state()),
                    HumanBytes(model.bytes_total()),
                    std::to_string(model.leases()), Devices(model),
                    model.path()});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string text;
    for (size_t i = 0; i < row.size(); ++i) {
      text += row[i];
      // The last column is not padded.
      if (i + 1 < row.size()) {
        text += std::string(widths[i] - row[i].size() + 2, ' ');
      }
    }
    std::printf("%s\n", text.c_str());
  }
  return kExitOk;
}

int RunStatus(const CommandLine& line) {
  if (line.arguments.size() != 1) {
    return Fail(kExitUsage, "status takes NAME (see --help)");
  }
  auto connected = Connect(line);
  if (!connected.ok()) return Fail(connected.status());
  absl::StatusOr<v1::ModelStatus> model =
      (*connected)->GetModel(line.arguments[0]);
  if (!model.ok()) return Fail(model.status());
  if (line.Has("--json")) {
    PrintJson(ModelJson(*model));
    return kExitOk;
  }
  std::printf("%s: %s\n", model->name().c_str(), StateName(model->state()));
  std::printf("  path:     %s\n", model->path().c_str());
  std::printf("  loaded:   %.1f of %.1f MiB\n", model->bytes_loaded() / kMiB,
              model->bytes_total() / kMiB);
  if (model->state() == v1::LOADING) {
    std::printf("  rate:     %.1f MiB/s\n", model->bytes_per_second() / kMiB);
  }
  if (model->state() == v1::READY || model->state() == v1::UNLOADING) {
    std::printf("  tensors:  %u\n", model->tensor_count());
    std::printf("  resident: %s per device\n",
                HumanBytes(model->resident_bytes()).c_str());
    std::printf("  loaded in %.2f s\n", model->load_seconds());
  }
  std::printf("  leases:   %u\n", model->leases());
  std::printf("  devices:  %s\n", Devices(*model).c_str());
  if (model->pinned()) std::printf("  pinned (a preload; never evicted)\n");
  if (!model->error().empty()) {
    std::printf("  error:    %s\n", model->error().c_str());
  }
  return kExitOk;
}

int RunUnload(const CommandLine& line) {
  if (line.arguments.size() != 1) {
    return Fail(kExitUsage, "unload takes NAME (see --help)");
  }
  const std::string& name = line.arguments[0];
  const bool force = line.Has("--force");
  auto connected = Connect(line);
  if (!connected.ok()) return Fail(connected.status());
  absl::StatusOr<v1::ModelStatus> model = (*connected)->Unload(name, force);
  if (!model.ok()) return Fail(model.status());
  if (line.Has("--json")) {
    PrintJson(ModelJson(*model));
  } else if (model->state() == v1::UNLOADING && model->leases() > 0) {
    std::printf("%s unloading: freed when its %u leases are released\n",
                name.c_str(), model->leases());
  } else {
    std::printf("%s unloaded\n", name.c_str());
  }
  return kExitOk;
}

}  // namespace ctl
}  // namespace warmstart
