// warmstartctl: the operator's tool for warmstartd.
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include "daemon/base/version.h"
#include "daemon/ctl/bench_command.h"
#include "daemon/ctl/command_line.h"
#include "daemon/ctl/daemon_commands.h"
#include "daemon/ctl/inspect_command.h"
#include "daemon/ctl/models_commands.h"

namespace warmstart {
namespace ctl {
namespace {

constexpr char kUsage[] =
    R"(usage: warmstartctl [--socket PATH] COMMAND [ARGS] [--json]

commands (no daemon needed):
  inspect PATH...          list the tensors of a checkpoint: a weight file
                           (safetensors, tensorizer .tensors, GGUF), a
                           *.index.json shard index, or a folder
      --json               one JSON object: {"files": [...]}
      --hash               add each tensor's sha256 (of its stored bytes; of
                           the plaintext when encrypted; of zeros for a meta
                           tensor)
      --verify             check the checksums the file stores (exit 7 on a
                           mismatch)
      --full-metadata      every element of GGUF metadata arrays
      --key-hex HEX | --key-file F | --password P | --password-file F
                           the key of encrypted tensorizer files

  bench PATH...            load a checkpoint repeatedly, cold and warm, against
                           the O_DIRECT-read and page-cache-to-shared-memory
                           baselines measured in the same run
      --backend host|cuda  (default host)
      --io uring|pread     (default uring)
      --runs N             runs per mode (default 5)
      --staging-mib N      staging pool size (default 256)

commands (talk to a running warmstartd):
  info                     the daemon's version, protocol, backend and devices
  wait-ready [--timeout S] wait until the daemon serves (default 60 s); for
                           startup probes (exit 5 at once if it failed to
                           become ready)
  load NAME PATH           load a checkpoint (a weight file, a *.index.json
                           shard index or a folder, beneath the daemon's
                           model roots) as NAME and wait until it is ready,
                           showing progress on stderr
      --no-wait            return once the load has started
      --device UUID        load onto this device ("host" or "GPU-..."); may
                           be repeated (default every device)
      --timeout S          stop waiting after S seconds (exit 6; the load
                           goes on)
  ls                       the models: NAME STATE SIZE LEASES DEVICES PATH
  status NAME              one model's state, progress, leases and devices
  unload NAME              free a model (refused while it is leased)
      --force              free it once its last lease is released

global flags:
  --socket PATH            the daemon's socket
                           (default /run/warmstart/warmstart.sock)
  --json                   machine-readable output
  --version                print the version and exit
  --help                   print this help and exit

exit status: 0 fine, 1 usage, 2 malformed input, 3 daemon unavailable,
4 not found, 5 refused, 6 timeout, 7 checksum mismatch
)";

int Run(int argc, char** argv) {
  auto parsed = ParseCommandLine(
      argc, argv,
      {"--socket", "--timeout", "--key-hex", "--key-file", "--password",
       "--password-file", "--backend", "--io", "--runs", "--staging-mib"},
      /*repeatable_flags=*/{"--device"});
  if (!parsed.ok()) {
    std::fprintf(stderr, "warmstartctl: %s (see --help)\n",
                 std::string(parsed.status().message()).c_str());
    return kExitUsage;
  }
  const CommandLine& line = *parsed;
  if (line.Has("--version")) {
    std::printf("warmstartctl %s (protocol %d.%d)\n", kVersion, kProtocolMajor,
                kProtocolMinor);
    return kExitOk;
  }
  if (line.Has("--help") || line.command == "help") {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  struct Command {
    int (*run)(const CommandLine&);
    std::set<std::string> switches;
    std::set<std::string> value_flags;
  };
  const std::map<std::string, Command> commands = {
      {"inspect",
       {RunInspect,
        {"--json", "--hash", "--verify", "--full-metadata"},
        {"--key-hex", "--key-file", "--password", "--password-file",
         "--socket"}}},
      {"bench",
       {RunBenchCommand,
        {"--json"},
        {"--backend", "--io", "--runs", "--staging-mib", "--socket"}}},
      {"info", {RunInfo, {"--json"}, {"--socket"}}},
      {"wait-ready", {RunWaitReady, {}, {"--socket", "--timeout"}}},
      {"load",
       {RunLoad,
        {"--json", "--no-wait"},
        {"--socket", "--device", "--timeout"}}},
      {"ls", {RunList, {"--json"}, {"--socket"}}},
      {"status", {RunStatus, {"--json"}, {"--socket"}}},
      {"unload", {RunUnload, {"--json", "--force"}, {"--socket"}}},
  };
  if (auto command = commands.find(line.command); command != commands.end()) {
    absl::Status flags =
        CheckFlags(line, command->second.switches, command->second.value_flags);
    if (!flags.ok()) {
      std::fprintf(stderr, "warmstartctl: %s (see --help)\n",
                   std::string(flags.message()).c_str());
      return kExitUsage;
    }
    return command->second.run(line);
  }
  std::fprintf(stderr, "warmstartctl: %s (see --help)\n",
               line.command.empty()
                   ? "no command given"
                   : ("unknown command \"" + line.command + "\"").c_str());
  return kExitUsage;
}

}  // namespace
}  // namespace ctl
}  // namespace warmstart

int main(int argc, char** argv) { return warmstart::ctl::Run(argc, argv); }
