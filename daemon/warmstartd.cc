// warmstartd: keeps model weights resident and hands them to inference
// workers over gRPC on a unix socket.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "daemon/base/logging.h"
#include "daemon/base/version.h"
#include "daemon/device/cuda_driver.h"
#include "daemon/service/info_service.h"
#include "daemon/service/unix_socket.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

ABSL_FLAG(std::string, socket, "/run/warmstart/warmstart.sock",
          "unix socket to serve gRPC on");
ABSL_FLAG(std::string, backend, "auto",
          "where weights live: auto (cuda when a GPU is usable, else host), "
          "host or cuda");
ABSL_FLAG(std::string, log_format, "text", "log lines as text or json");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn or error");

namespace warmstart {
namespace {

constexpr char kUsage[] = R"(usage: warmstartd [flags]

Keeps model weights resident in GPU memory (or host shared memory) and hands
them to inference workers over gRPC, so a restarted worker maps its weights in
milliseconds instead of reloading them.

flags:
  --socket PATH          unix socket to serve on
                         (default /run/warmstart/warmstart.sock)
  --backend MODE         auto | host | cuda (default auto: cuda when a GPU is
                         usable, else host shared memory)
  --log_format FORMAT    text | json (default text)
  --log_level LEVEL      trace | debug | info | warn | error (default info)
  --version              print the version and exit
  --help                 print this help and exit

Stop it with SIGTERM or SIGINT.
)";

struct BackendChoice {
  v1::Backend backend = v1::BACKEND_HOST;
  // Kept for the process's lifetime: unloading libcuda after cuInit is not
  // safe.
  std::unique_ptr<CudaDriver> driver;
  std::string cuda_status;
  std::vector<CudaDeviceInfo> gpus;
};

absl::StatusOr<BackendChoice> ChooseBackend(const std::string& requested) {
  if (requested != "auto" && requested != "host" && requested != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--backend \"", requested, "\": expected auto, host or cuda"));
  }
  BackendChoice choice;
  absl::StatusOr<std::vector<CudaDeviceInfo>> gpus =
      absl::UnavailableError("not probed");
  auto driver = CudaDriver::Load();
  if (driver.ok()) {
    gpus = (*driver)->Devices();
    choice.driver = std::move(*driver);
  } else {
    gpus = driver.status();
  }
  if (gpus.ok() && gpus->empty()) {
    gpus = absl::UnavailableError("the CUDA driver sees no GPU");
  }
  if (gpus.ok()) {
    choice.gpus = *gpus;
    choice.cuda_status = "ok";
  } else {
    choice.cuda_status = std::string(gpus.status().message());
  }
  if (requested == "cuda" && !gpus.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--backend cuda: ", gpus.status().message()));
  }
  choice.backend =
      (requested == "host" || !gpus.ok()) ? v1::BACKEND_HOST : v1::BACKEND_CUDA;
  return choice;
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

  // Stop signals are taken synchronously by sigwait at the end. Block them
  // before anything starts a thread (the CUDA driver does, in cuInit; gRPC
  // does) so that no other thread receives one and dies of it.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  LogFormat format;
  absl::Status status =
      ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format);
  if (status.ok()) status = InitLogging(format, absl::GetFlag(FLAGS_log_level));
  if (!status.ok()) {
    std::fprintf(stderr, "warmstartd: %s\n",
                 std::string(status.message()).c_str());
    return 1;
  }
  auto log = Logger("daemon");

  auto backend = ChooseBackend(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) {
    log->error("{}", backend.status().message());
    return 1;
  }
  v1::ServerInfo info;
  info.set_version(kVersion);
  info.set_protocol_major(kProtocolMajor);
  info.set_protocol_minor(kProtocolMinor);
  info.set_backend(backend->backend);
  info.set_cuda_status(backend->cuda_status);
  info.set_pid(static_cast<uint32_t>(::getpid()));
  if (backend->backend == v1::BACKEND_CUDA) {
    for (const CudaDeviceInfo& gpu : backend->gpus) {
      v1::Device* device = info.add_devices();
      device->set_uuid(gpu.uuid);
      device->set_name(gpu.name);
      device->set_total_bytes(gpu.total_bytes);
    }
  } else {
    info.add_devices()->set_uuid("host");
    if (absl::GetFlag(FLAGS_backend) == "auto") {
      log->warn("using the host backend: {}", backend->cuda_status);
    }
  }

  const std::string socket_path = absl::GetFlag(FLAGS_socket);
  status = PrepareSocketPath(socket_path);
  if (!status.ok()) {
    log->error("{}", status.message());
    return 1;
  }

  grpc::EnableDefaultHealthCheckService(true);
  WarmstartService service(info);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path,
                           grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    log->error("cannot listen on unix socket {}", socket_path);
    return 1;
  }
  if (::chmod(socket_path.c_str(), 0660) != 0) {
    log->warn("chmod 0660 {}: {}", socket_path, std::strerror(errno));
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  log->info("warmstartd {} serving on unix:{} (backend {}, pid {})", kVersion,
            socket_path, backend->backend == v1::BACKEND_CUDA ? "cuda" : "host",
            ::getpid());

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  log->info("received {}, shutting down", strsignal(signal_number));
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  ::unlink(socket_path.c_str());
  log->info("stopped");
  return 0;
}

}  // namespace
}  // namespace warmstart

int main(int argc, char** argv) { return warmstart::Run(argc, argv); }
