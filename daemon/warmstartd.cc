// warmstartd: keeps model weights resident and hands them to inference
// workers over gRPC on a unix socket.
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "common/version.h"
#include "daemon/base/logging.h"
#include "daemon/base/watchdog.h"
#include "daemon/config/config.h"
#include "daemon/server/server.h"

ABSL_FLAG(std::string, config, "", "DaemonConfig textproto file");
ABSL_FLAG(std::string, socket, "", "unix socket to serve gRPC on");
ABSL_FLAG(std::vector<std::string>, model_root, {},
          "directory models may be loaded from (repeatable)");
ABSL_FLAG(std::vector<std::string>, preload, {},
          "NAME=PATH to load at start (repeatable)");
ABSL_FLAG(std::vector<std::string>, remote_source, {},
          "URL prefix remote models may be loaded from (repeatable)");
ABSL_FLAG(std::string, backend, "", "auto, host or cuda");
ABSL_FLAG(std::string, log_format, "", "text or json");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn or error");

namespace warmstart {
namespace {

// What a graceful stop may take beyond shutdown_grace_seconds: the second
// in-flight calls get, cancelling loads, freeing memory. A stop that runs
// past it is stuck (a handler in a system call that does not return) and
// would otherwise never end; exiting lets the supervisor restart the daemon.
constexpr absl::Duration kShutdownMargin = absl::Seconds(20);

// glibc's malloc arenas the daemon may use. By default glibc gives threads
// up to 8 arenas per core, and each keeps what it freed: a lease reply for
// a model of many tensors (8 MB on the wire for 120,000, more as objects,
// built and freed on whichever gRPC thread serves the call) then stays
// resident once per arena that built one. With 120,000 tensors the daemon
// kept 1,557 and 1,620 bytes a tensor in 2 of 4 runs of
// daemon_hardening_test (bound 1,536); with two arenas every run (10)
// stayed under it. The load path (reads, copies) allocates per slab, not
// per byte, so it hardly contends for them. MALLOC_ARENA_MAX in the environment
// still wins.
constexpr int kMallocArenas = 2;

void LimitMallocArenas() {
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) {
    mallopt(M_ARENA_MAX, kMallocArenas);
  }
}

constexpr char kUsage[] = R"(usage: warmstartd [flags]

Keeps model weights resident in GPU memory (or host shared memory) and hands
them to inference workers over gRPC, so a restarted worker maps its weights in
milliseconds instead of reloading them.

flags (they override the --config file):
  --config FILE          DaemonConfig textproto (see deploy/)
  --socket PATH          unix socket to serve on
                         (default /run/warmstart/warmstart.sock; the handle
                         socket is PATH.handles)
  --model_root DIR       directory models may be loaded from; repeat it or
                         give a comma-separated list
  --preload NAME=PATH    a required model to load at start; repeatable
                         (PATH may be a URL beneath a --remote_source)
  --remote_source PREFIX a URL prefix (https://host/dir, http://..., or
                         s3://bucket/prefix) models may be loaded from;
                         repeatable; no remote source is allowed without it
  --backend MODE         auto | host | cuda (default auto: cuda when a GPU is
                         usable, else host shared memory)
  --log_format FORMAT    text | json (default text)
  --log_level LEVEL      trace | debug | info | warn | error (default info)
  --version              print the version and exit
  --help                 print this help and exit

signals: SIGTERM/SIGINT stop gracefully (no new leases; waits up to
shutdown_grace_seconds for leases to be released; a stop still unfinished
20 s after that exits with status 1); SIGHUP re-reads the preload list of
--config.
)";

// Every value of a repeatable flag, in order: Abseil keeps only the last
// occurrence, and operators expect `--model_root a --model_root b` to mean
// both.
std::vector<std::string> RepeatedFlag(int argc, char** argv,
                                      const std::string& name) {
  std::vector<std::string> values;
  const std::string dashed = "--" + name;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if ((arg == dashed || arg == "-" + name) && i + 1 < argc) {
      values.push_back(argv[++i]);
    } else if (absl::StartsWith(arg, dashed + "=")) {
      values.push_back(arg.substr(dashed.size() + 1));
    } else if (absl::StartsWith(arg, "-" + name + "=")) {
      values.push_back(arg.substr(name.size() + 2));
    }
  }
  return values;
}

int Run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 ||
        std::strcmp(argv[i], "-h") == 0) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (std::strcmp(argv[i], "--version") == 0) {
      std::printf("warmstartd %s (protocol %d.%d)\n", kVersion, kProtocolMajor,
                  kProtocolMinor);
      return 0;
    }
  }
  absl::ParseCommandLine(argc, argv);
  LimitMallocArenas();  // Before any thread starts.

  // Stop and reload signals are taken synchronously by sigwait below. Block
  // them before anything starts a thread (the CUDA driver does, in cuInit;
  // gRPC does) so that no other thread receives one and dies of it.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ConfigFlags flags;
  flags.config = absl::GetFlag(FLAGS_config);
  flags.socket = absl::GetFlag(FLAGS_socket);
  flags.model_roots = RepeatedFlag(argc, argv, "model_root");
  flags.preloads = RepeatedFlag(argc, argv, "preload");
  flags.remote_sources = RepeatedFlag(argc, argv, "remote_source");
  flags.backend = absl::GetFlag(FLAGS_backend);
  flags.log_format = absl::GetFlag(FLAGS_log_format);
  absl::StatusOr<v1::DaemonConfig> config = BuildConfig(flags);
  if (!config.ok()) {
    std::fprintf(stderr, "warmstartd: %s\n",
                 std::string(config.status().message()).c_str());
    return 1;
  }
  absl::Status status = InitLogging(config->log_format() == v1::LOG_FORMAT_JSON
                                        ? LogFormat::kJson
                                        : LogFormat::kText,
                                    absl::GetFlag(FLAGS_log_level));
  if (!status.ok()) {
    std::fprintf(stderr, "warmstartd: %s\n",
                 std::string(status.message()).c_str());
    return 1;
  }
  auto log = Logger("daemon");
  log->info("configuration: {}", EchoConfig(*config));

  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(*config);
  if (!server.ok()) {
    log->error("{}", server.status().message());
    return 1;
  }
  (*server)->ApplyPreloads(*config);

  while (true) {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    if (signal_number != SIGHUP) {
      log->info("received {}, shutting down", strsignal(signal_number));
      break;
    }
    if (flags.config.empty()) {
      log->info("received SIGHUP; no --config file to re-read");
      continue;
    }
    absl::StatusOr<v1::DaemonConfig> reloaded = BuildConfig(flags);
    if (!reloaded.ok()) {
      log->error("SIGHUP: keeping the current preloads: {}",
                 reloaded.status().message());
      continue;
    }
    log->info("SIGHUP: re-reading the preload list of {}", flags.config);
    (*server)->ApplyPreloads(*reloaded);
  }
  const absl::Duration bound =
      absl::Seconds(config->shutdown_grace_seconds()) + kShutdownMargin;
  Watchdog watchdog(bound, [log, bound] {
    log->error(
        "shutdown did not finish within {} s (shutdown_grace_seconds plus "
        "{} s); exiting without it",
        absl::ToInt64Seconds(bound), absl::ToInt64Seconds(kShutdownMargin));
    log->flush();
    // Nothing else can be trusted to return; the memory goes with the
    // process, clients' mappings stay valid.
    ::_exit(1);
  });
  (*server)->Shutdown();
  server->reset();
  watchdog.Disarm();
  log->info("stopped");
  return 0;
}

}  // namespace
}  // namespace warmstart

int main(int argc, char** argv) { return warmstart::Run(argc, argv); }
