#include "tools/warmstartctl/models_commands.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/model_json.h"
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
using client::LayoutName;
using client::ModelJson;
using client::StateName;

constexpr double kMiB = 1024.0 * 1024.0;

// "512 B", "1.5 KiB", "12.0 MiB", "3.25 GiB".
std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrFormat("%d B", bytes);
  if (bytes < 1024 * 1024) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  if (bytes < 1024ull * 1024 * 1024) {
    return absl::StrFormat("%.1f MiB", bytes / kMiB);
  }
  return absl::StrFormat("%.2f GiB", bytes / (kMiB * 1024));
}

void PrintJson(const Json& json) { std::printf("%s\n", json.dump(2).c_str()); }

std::string Devices(const v1::ModelStatus& model) {
  if (model.devices().empty()) return "-";
  return absl::StrJoin(model.devices(), ",");
}

Progress ProgressOf(const v1::ModelStatus& model) {
  Progress progress;
  progress.name = model.name();
  progress.bytes_loaded = model.bytes_loaded();
  progress.bytes_total = model.bytes_total();
  progress.bytes_per_second = model.bytes_per_second();
  return progress;
}

// The width of the terminal on `fd`; 0 when it is not one.
int TerminalColumns(int fd) {
  struct winsize size = {};
  if (::ioctl(fd, TIOCGWINSZ, &size) != 0) return 0;
  return size.ws_col;
}

// Parses --timeout (seconds; absent: no limit) into `timeout`; false, with
// the error printed, when it is not a number.
bool ParseTimeout(const CommandLine& line, absl::Duration* timeout) {
  *timeout = absl::InfiniteDuration();
  if (line.values.count("--timeout") == 0) return true;
  double seconds;
  const std::string text = line.Value("--timeout", "");
  if (!absl::SimpleAtod(text, &seconds) || seconds < 0) {
    Fail(kExitUsage,
         "--timeout \"" + text + "\": expected a number of seconds");
    return false;
  }
  *timeout = absl::Seconds(seconds);
  return true;
}

// One line of `watch`: "tiny: loading 100.0/300.0 MiB 50.0 MiB/s ETA 4s",
// "tiny: ready, 300.0 MiB, 7 tensors, 2 leases (loaded in 1.50 s)",
// "tiny: failed: ...".
std::string WatchLine(const v1::ModelStatus& model) {
  switch (model.state()) {
    case v1::LOADING: {
      const Progress progress = ProgressOf(model);
      return absl::StrFormat(
          "%s: loading %s %s ETA %s", model.name(),
          FormatBytePair(progress.bytes_loaded, progress.bytes_total),
          FormatRate(progress.bytes_per_second),
          FormatEta(EtaSeconds(progress)));
    }
    case v1::READY:
      return absl::StrFormat(
          "%s: ready, %s, %u tensors, %u leases (loaded in %.2f s)",
          model.name(), FormatBytes(model.bytes_total()), model.tensor_count(),
          model.leases(), model.load_seconds());
    case v1::FAILED:
      return absl::StrFormat("%s: failed: %s", model.name(), model.error());
    default:
      return absl::StrFormat("%s: %s, %u leases", model.name(),
                             StateName(model.state()), model.leases());
  }
}

// The daemon wants an absolute path; take a relative one as the user means
// it, against the current directory. URLs (remote sources) go as written.
std::string Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  if (absl::StartsWith(path, "http://") || absl::StartsWith(path, "https://") ||
      absl::StartsWith(path, "s3://")) {
    return path;
  }
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
  absl::Duration timeout;
  if (!ParseTimeout(line, &timeout)) return kExitUsage;
  const absl::Time deadline = absl::Now() + timeout;
  auto connected = ConnectToDaemon(line);
  if (!connected.ok()) return FailDaemonCall(connected.status());
  client::Client& daemon = **connected;

  client::LoadModelOptions options;
  options.devices = line.Values("--device");
  const std::string layout = line.Value("--layout", "");
  if (layout == "packed") {
    options.layout = v1::PACKED;
  } else if (layout == "file_image") {
    options.layout = v1::FILE_IMAGE;
  } else if (!layout.empty()) {
    return Fail(kExitUsage,
                absl::StrCat("--layout \"", absl::CHexEscape(layout),
                             "\": expected packed or file_image"));
  }
  // Always start without waiting and then watch, so progress shows.
  options.no_wait = true;
  absl::StatusOr<v1::ModelStatus> started =
      daemon.Load(name, path, options, timeout);
  if (!started.ok()) return FailDaemonCall(started.status());
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
    // A bar redrawn in place on a terminal, plain lines in a log.
    ProgressDisplay display(stderr, ::isatty(STDERR_FILENO) == 1,
                            TerminalColumns(STDERR_FILENO));
    absl::Status watched = daemon.Watch(
        name,
        [&](const v1::ModelStatus& model) {
          last = model;
          if (model.state() == v1::LOADING) {
            display.Update(ProgressOf(model), absl::Now());
          }
        },
        deadline - absl::Now());
    if (watched.ok()) {
      Progress done = ProgressOf(last);
      done.bytes_loaded = std::max(done.bytes_loaded, done.bytes_total);
      display.Finish(&done);
    } else {
      display.Finish();
      if (watched.code() == absl::StatusCode::kDeadlineExceeded) {
        return Fail(kExitTimeout,
                    absl::StrFormat("model %s is not ready after %s (the load "
                                    "goes on)",
                                    name, absl::FormatDuration(timeout)));
      }
      return FailDaemonCall(watched);
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

int RunWatch(const CommandLine& line) {
  if (line.arguments.size() != 1) {
    return Fail(kExitUsage, "watch takes NAME (see --help)");
  }
  const std::string& name = line.arguments[0];
  absl::Duration timeout;
  if (!ParseTimeout(line, &timeout)) return kExitUsage;
  const absl::Time deadline = absl::Now() + timeout;
  auto connected = ConnectToDaemon(line);
  if (!connected.ok()) return FailDaemonCall(connected.status());
  const bool json = line.Has("--json");
  // Human output on a terminal redraws a bar while the model loads.
  const bool terminal = !json && ::isatty(STDOUT_FILENO) == 1;
  ProgressDisplay display(stdout, terminal, TerminalColumns(STDOUT_FILENO));
  v1::ModelStatus last;
  bool seen = false;
  absl::Time last_line = absl::InfinitePast();
  absl::Status watched =
      (*connected)
          ->Watch(
              name,
              [&](const v1::ModelStatus& model) {
                const bool changed = !seen || model.state() != last.state();
                seen = true;
                last = model;
                if (json) {
                  std::printf("%s\n", ModelJson(model).dump().c_str());
                  std::fflush(stdout);
                  return;
                }
                const absl::Time now = absl::Now();
                if (terminal) {
                  if (model.state() == v1::LOADING) {
                    display.Update(ProgressOf(model), now);
                    return;
                  }
                  Progress done = ProgressOf(model);
                  done.bytes_loaded =
                      std::max(done.bytes_loaded, done.bytes_total);
                  display.Finish(model.state() == v1::READY ? &done : nullptr);
                }
                // Every change of state; progress about once a second.
                if (!changed && now - last_line < absl::Seconds(1)) return;
                last_line = now;
                std::printf("%s\n", WatchLine(model).c_str());
                std::fflush(stdout);
              },
              deadline - absl::Now());
  if (watched.ok()) return kExitOk;
  display.Finish();
  if (watched.code() == absl::StatusCode::kDeadlineExceeded) {
    return Fail(kExitTimeout,
                absl::StrFormat("model %s is still %s after %s", name,
                                seen ? StateName(last.state()) : "unreported",
                                absl::FormatDuration(timeout)));
  }
  return FailDaemonCall(watched);
}

int RunList(const CommandLine& line) {
  if (!line.arguments.empty()) {
    return Fail(kExitUsage, "ls takes no arguments (see --help)");
  }
  auto connected = ConnectToDaemon(line);
  if (!connected.ok()) return FailDaemonCall(connected.status());
  absl::StatusOr<std::vector<v1::ModelStatus>> models = (*connected)->List();
  if (!models.ok()) return FailDaemonCall(models.status());
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
                    Printable(model.path())});
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
  auto connected = ConnectToDaemon(line);
  if (!connected.ok()) return FailDaemonCall(connected.status());
  absl::StatusOr<v1::ModelStatus> model =
      (*connected)->GetModel(line.arguments[0]);
  if (!model.ok()) return FailDaemonCall(model.status());
  if (line.Has("--json")) {
    PrintJson(ModelJson(*model));
    return kExitOk;
  }
  std::printf("%s: %s\n", model->name().c_str(), StateName(model->state()));
  std::printf("  path:     %s\n", Printable(model->path()).c_str());
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
  std::printf("  layout:   %s\n", LayoutName(model->layout()));
  if (model->pinned()) std::printf("  pinned (a preload; never evicted)\n");
  if (!model->error().empty()) {
    std::printf("  error:    %s\n", Printable(model->error()).c_str());
  }
  return kExitOk;
}

int RunUnload(const CommandLine& line) {
  if (line.arguments.size() != 1) {
    return Fail(kExitUsage, "unload takes NAME (see --help)");
  }
  const std::string& name = line.arguments[0];
  const bool force = line.Has("--force");
  auto connected = ConnectToDaemon(line);
  if (!connected.ok()) return FailDaemonCall(connected.status());
  absl::StatusOr<v1::ModelStatus> model = (*connected)->Unload(name, force);
  if (!model.ok()) return FailDaemonCall(model.status());
  if (line.Has("--json")) {
    PrintJson(ModelJson(*model));
  } else if (model->state() == v1::UNLOADING && model->leases() > 0) {
    std::printf(
        "%s unloaded; its memory is freed when its %u leases are released\n",
        name.c_str(), model->leases());
  } else {
    std::printf("%s unloaded\n", name.c_str());
  }
  return kExitOk;
}

}  // namespace ctl
}  // namespace warmstart
