// warmstartctl: the operator's tool for warmstartd.
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/printable.h"
#include "common/version.h"
#include "tools/warmstartctl/bench_command.h"
#include "tools/warmstartctl/command_line.h"
#include "tools/warmstartctl/daemon_commands.h"
#include "tools/warmstartctl/exit_codes.h"
#include "tools/warmstartctl/inspect_command.h"
#include "tools/warmstartctl/models_commands.h"

namespace warmstart {
namespace ctl {
namespace {

struct Command {
  const char* name;
  int (*run)(const CommandLine&);
  std::set<std::string> switches;
  std::set<std::string> value_flags;
  const char* synopsis;  // "load NAME PATH"
  const char* summary;   // One line for the list of commands.
  const char* details;   // What `COMMAND --help` adds: its flags.
  bool needs_daemon;
};

constexpr char kSocketHelp[] =
    "      --socket PATH        the daemon's socket (default "
    "$WARMSTART_SOCKET,\n"
    "                           else /run/warmstart/warmstart.sock)\n";

const std::vector<Command>& Commands() {
  static const auto* const commands = new std::vector<Command>{
      {"inspect",
       RunInspect,
       {"--json", "--hash", "--verify", "--full-metadata"},
       {"--key-hex", "--key-file", "--password", "--password-file", "--socket"},
       "inspect PATH...",
       "list a checkpoint's tensors (file, *.index.json or folder)",
       R"(PATH: a weight file (safetensors, tensorizer .tensors, GGUF), a
*.index.json shard index, or a folder of them; or a URL of one (https://,
http://, s3://bucket/key, or an s3:// prefix ending in '/'), read with
ranged GETs (S3: AWS_ENDPOINT_URL, AWS_REGION, AWS_S3_ADDRESSING_STYLE,
credentials from the environment or ~/.aws/credentials, AWS_CA_BUNDLE).
Reads headers only.
      --json               one JSON object: {"files": [...]}
      --hash               add each tensor's sha256 (of its stored bytes; of
                           the plaintext when encrypted; of zeros for a meta
                           tensor)
      --verify             check the checksums the file stores (exit 7 on a
                           mismatch)
      --full-metadata      every element of GGUF metadata arrays
      --key-hex HEX | --key-file F | --password P | --password-file F
                           the key of encrypted tensorizer files
)",
       false},
      {"bench",
       RunBenchCommand,
       {"--json", "--no-peers"},
       {"--backend", "--io", "--runs", "--staging-mib", "--remote-concurrency",
        "--socket", "--peer-python", "--peer-script"},
       "bench PATH...",
       "time loads of a checkpoint, cold and warm, against baselines",
       R"(Measures against the O_DIRECT-read and page-cache-to-shared-memory
baselines in the same run. URLs (as inspect takes them) are measured in
one mode, "remote", against a plain parallel ranged download of the same
objects with the same client in the same run. For one local .safetensors
file, the installed peers (fio cold; Run:ai's streamer, default and
buffered, and safetensors cold and warm) load the same file in every run,
after the daemon, through peers.py; the ones missing are named.
      --peer-script PATH   peers.py (default daemon/bench/peers.py)
      --peer-python PATH   the Python that has the peers (default
                           $WARMSTART_VENV/bin/python3, else python3)
      --no-peers           measure no peer
      --remote-concurrency N  parallel ranged GETs for URLs (default 8)
      --backend host|cuda  (default host)
      --io uring|pread     (default uring)
      --runs N             runs per mode (default 5)
      --staging-mib N      staging pool size (default 256)
      --json               machine-readable output
)",
       false},
      {"info",
       RunInfo,
       {"--json"},
       {"--socket"},
       "info",
       "the daemon's version, protocol, backend and devices",
       R"(      --json               one JSON object
)",
       true},
      {"wait-ready",
       RunWaitReady,
       {"--json"},
       {"--socket", "--timeout"},
       "wait-ready",
       "wait until the daemon serves; for startup probes",
       R"(Retries while the socket does not exist yet. Exit 0 once ready, 6 on
timeout, 5 at once when the daemon failed to become ready (a required
preload failed), with its reason.
      --timeout S          give up after S seconds (default 60)
      --json               {"state": "ready", "socket": ...}
)",
       true},
      {"load",
       RunLoad,
       {"--json", "--no-wait"},
       {"--socket", "--device", "--timeout", "--layout"},
       "load NAME PATH",
       "load a checkpoint as NAME and wait until it is ready",
       R"(PATH: a weight file, a *.index.json shard index or a folder, beneath
the daemon's model roots. Shows progress on stderr: a bar with bytes,
rate and ETA on a terminal, a line a second otherwise.
      --no-wait            return once the load has started
      --device UUID        load onto this device ("host" or "GPU-..."); may
                           be repeated (default every device)
      --layout L           packed (tensors back to back; any checkpoint and
                           device) or file_image (the file's exact bytes,
                           which workers open as the file, e.g. llama.cpp;
                           one plaintext file, host memory only). Default:
                           file_image for one GGUF file on host memory,
                           else packed
      --timeout S          stop waiting after S seconds (exit 6; the load
                           goes on)
      --json               the model's status, as `status --json` gives it
)",
       true},
      {"watch",
       RunWatch,
       {"--json"},
       {"--socket", "--timeout"},
       "watch NAME",
       "follow a model's load until it is ready or failed",
       R"(Exit 0 once ready; a failed load exits as `load` would (2, 5, 7).
      --timeout S          stop watching after S seconds (exit 6)
      --json               one JSON object per update, one a line
)",
       true},
      {"ls",
       RunList,
       {"--json"},
       {"--socket"},
       "ls",
       "the models: NAME STATE SIZE LEASES DEVICES PATH",
       R"(      --json               {"models": [...]}, each as `status --json`
)",
       true},
      {"status",
       RunStatus,
       {"--json"},
       {"--socket"},
       "status NAME",
       "one model's state, progress, leases and devices",
       R"(      --json               one JSON object: name, path, state (loading,
                           ready, failed, unloading), error, bytes_loaded,
                           bytes_total, bytes_per_second, leases, pinned,
                           devices, tensor_count, resident_bytes,
                           load_seconds
)",
       true},
      {"unload",
       RunUnload,
       {"--json", "--force"},
       {"--socket"},
       "unload NAME",
       "free a model (refused, exit 5, while it is leased)",
       R"(      --force              free it once its last lease is released
      --json               the model's status
)",
       true},
      {"stats",
       RunStats,
       {"--json"},
       {"--socket"},
       "stats",
       "models, leases, sessions, device memory and metrics",
       R"(      --json               one JSON object: models, leases, sessions,
                           devices [{uuid, resident_bytes, budget_bytes,
                           free_bytes, retained_bytes}],
                           metrics {name: value}
)",
       true},
  };
  return *commands;
}

const Command* FindCommand(const std::string& name) {
  for (const Command& command : Commands()) {
    if (name == command.name) return &command;
  }
  return nullptr;
}

std::string Usage() {
  std::string text =
      "usage: warmstartctl [--socket PATH] COMMAND [ARGS] [--json]\n"
      "       warmstartctl COMMAND --help    (a command's flags)\n";
  for (bool daemon : {false, true}) {
    absl::StrAppend(&text, daemon
                               ? "\ncommands (talk to a running warmstartd):\n"
                               : "\ncommands (no daemon needed):\n");
    for (const Command& command : Commands()) {
      if (command.needs_daemon != daemon) continue;
      absl::StrAppend(&text, absl::StrFormat("  %-16s %s\n", command.synopsis,
                                             command.summary));
    }
  }
  absl::StrAppend(
      &text, "\nglobal flags:\n", kSocketHelp,
      "      --json               machine-readable output\n"
      "      --version            print the version and exit\n"
      "      --help               print this help and exit\n"
      "\nexit status: 0 fine, 1 usage, 2 malformed input, 3 daemon "
      "unavailable,\n4 not found, 5 refused, 6 timeout, 7 checksum mismatch, 8 "
      "I/O error\n");
  return text;
}

std::string CommandHelp(const Command& command) {
  return absl::StrCat("usage: warmstartctl ", command.synopsis, " [FLAGS]\n\n",
                      command.summary, ".\n\n", command.details,
                      command.needs_daemon ? kSocketHelp : "");
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "warmstartctl: %s (see --help)\n",
               Printable(message).c_str());
  return kExitUsage;
}

int Run(int argc, char** argv) {
  std::set<std::string> value_flags;
  for (const Command& command : Commands()) {
    value_flags.insert(command.value_flags.begin(), command.value_flags.end());
  }
  value_flags.erase("--device");
  auto parsed = ParseCommandLine(argc, argv, value_flags,
                                 /*repeatable_flags=*/{"--device"});
  if (!parsed.ok()) return UsageError(std::string(parsed.status().message()));
  const CommandLine& line = *parsed;
  if (line.Has("--version")) {
    std::printf("warmstartctl %s (protocol %d.%d)\n", kVersion, kProtocolMajor,
                kProtocolMinor);
    return kExitOk;
  }
  // "help", "--help", "help COMMAND", "COMMAND --help".
  if (line.command == "help" || line.Has("--help")) {
    std::string topic = line.command;
    if (topic == "help") {
      topic = line.arguments.empty() ? "" : line.arguments[0];
    }
    if (topic.empty()) {
      std::fputs(Usage().c_str(), stdout);
      return kExitOk;
    }
    const Command* command = FindCommand(topic);
    if (command == nullptr) {
      return UsageError("unknown command \"" + topic + "\"");
    }
    std::fputs(CommandHelp(*command).c_str(), stdout);
    return kExitOk;
  }
  if (line.command.empty()) return UsageError("no command given");
  const Command* command = FindCommand(line.command);
  if (command == nullptr) {
    return UsageError("unknown command \"" + line.command + "\"");
  }
  absl::Status flags =
      CheckFlags(line, command->switches, command->value_flags);
  if (!flags.ok()) return UsageError(std::string(flags.message()));
  return command->run(line);
}

}  // namespace
}  // namespace ctl
}  // namespace warmstart

int main(int argc, char** argv) { return warmstart::ctl::Run(argc, argv); }
