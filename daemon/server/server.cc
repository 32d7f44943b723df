#include "daemon/server/server.h"

#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/protocol.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/device/cuda_device.h"
#include "daemon/device/host_device.h"
#include "daemon/formats/key_source.h"
#include "daemon/server/listener_probe.h"
#include "daemon/service/unix_socket.h"
#include "grpcpp/health_check_service_interface.h"

namespace warmstart {
namespace {

constexpr absl::Duration kReadinessPoll = absl::Milliseconds(250);
// How often the listeners are probed over new connections, how long a probe
// may take, and how many failed rounds in a row end the process.
constexpr absl::Duration kProbeInterval = absl::Seconds(5);
constexpr absl::Duration kProbeTimeout = absl::Seconds(10);
constexpr int kProbeFailuresToExit = 3;
// The exit status of a daemon whose listener could not be kept alive.
constexpr int kExitListenerLost = 3;

// The opener when no model root is configured: nothing may be loaded.
class NoRootsOpener : public FileOpener {
 public:
  absl::StatusOr<ScopedFd> Open(const std::string& path, int) const override {
    return absl::PermissionDeniedError(
        absl::StrCat(path,
                     ": no model roots are configured (--model_root or "
                     "model_roots in --config)"));
  }
};

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::StatusOr<std::shared_ptr<KeyProvider>> KeysFor(
    const v1::Preload& preload) {
  switch (preload.key().source_case()) {
    case v1::KeySource::kKeyFile: {
      WS_ASSIGN_OR_RETURN(KeyMaterial key,
                          KeyFromFile(preload.key().key_file()));
      return std::make_shared<KeyProvider>(std::move(key));
    }
    case v1::KeySource::kKeyEnv: {
      WS_ASSIGN_OR_RETURN(KeyMaterial key,
                          KeyFromEnvironment(preload.key().key_env()));
      return std::make_shared<KeyProvider>(std::move(key));
    }
    case v1::KeySource::kPasswordFile: {
      WS_ASSIGN_OR_RETURN(Password password,
                          PasswordFromFile(preload.key().password_file()));
      return std::make_shared<KeyProvider>(std::move(password));
    }
    case v1::KeySource::SOURCE_NOT_SET:
      break;
  }
  return std::shared_ptr<KeyProvider>();
}

StagingPoolOptions StagingPoolOptionsOf(const v1::DaemonConfig& config) {
  StagingPoolOptions options;
  options.total_bytes = config.staging_bytes();
  options.slab_bytes = config.slab_bytes();
  options.release_after = config.staging_release_seconds() == 0
                              ? absl::InfiniteDuration()
                              : absl::Seconds(config.staging_release_seconds());
  return options;
}

// A GPU's budget: the least of the configured one (0: none) and what the
// driver reports free now, before any model: other processes' memory is not
// the daemon's to fill. (Each load also re-checks what is free when it
// reserves.)
uint64_t GpuBudget(const Device& device, uint64_t configured) {
  const DeviceMemory memory = device.Memory();
  uint64_t budget = configured;
  if (memory.free_bytes.has_value() &&
      (budget == 0 || *memory.free_bytes < budget)) {
    budget = *memory.free_bytes;
  }
  Logger("daemon")->info(
      "{}: budget {} bytes (configured {}; {})", device.uuid(), budget,
      configured == 0 ? std::string("none") : absl::StrCat(configured),
      memory.free_bytes.has_value() ? memory.source
                                    : std::string("free memory unknown"));
  return budget;
}

// The daemon's clock, which every component that reads the time is given.
absl::Time DaemonNow() { return absl::Now(); }

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const v1::DaemonConfig& config) {
  std::unique_ptr<Server> server(new Server());
  server->config_ = config;
  // Before anything opens descriptors: the caps below follow from it.
  WS_ASSIGN_OR_RETURN(const DescriptorLimit limit, RaiseDescriptorLimit());
  const v1::ClientLimits& configured = config.client_limits();
  PeerLimitOverrides overrides;
  overrides.max_grpc_connections_per_process =
      configured.max_grpc_connections_per_process();
  overrides.max_grpc_connections_per_uid =
      configured.max_grpc_connections_per_uid();
  overrides.max_leases_per_process = configured.max_leases_per_process();
  overrides.max_leases_per_uid = configured.max_leases_per_uid();
  server->descriptors_ = BudgetFor(limit.soft, overrides);
  Logger("daemon")->info("{}", DescribeBudget(limit, server->descriptors_));
  v1::ServerInfo info;
  info.set_version(kVersion);
  info.set_protocol_major(kProtocolMajor);
  info.set_protocol_minor(kProtocolMinor);
  info.set_pid(static_cast<uint32_t>(::getpid()));
  info.set_handle_socket_name(
      Basename(config.listen().unix_socket() + kHandleSocketSuffix));
  WS_RETURN_IF_ERROR(server->SetUpTargets(config, info));
  if (config.staging_release_seconds() > 0) {
    // A pool is released between release_after and 1.25 x release_after
    // after its last load: checking more often costs wake-ups for nothing.
    const absl::Duration period =
        std::clamp(absl::Seconds(config.staging_release_seconds()) / 4,
                   absl::Milliseconds(100), absl::Seconds(5));
    Server* raw = server.get();
    server->staging_release_thread_ =
        std::thread([raw, period] { raw->ReleaseQuietStagingPools(period); });
  }

  if (config.model_roots().empty()) {
    server->opener_ = std::make_unique<NoRootsOpener>();
  } else {
    WS_ASSIGN_OR_RETURN(
        server->opener_,
        BeneathRootsOpener::Create(std::vector<std::string>(
            config.model_roots().begin(), config.model_roots().end())));
  }
  RemoteOptions remote;
  remote.allowed_prefixes.assign(config.remote_sources().begin(),
                                 config.remote_sources().end());
  remote.concurrency = config.remote_concurrency();
  remote.ca_bundle = config.remote_ca_bundle();
  remote.now = &DaemonNow;
  remote.metrics = &server->metrics_;
  WS_ASSIGN_OR_RETURN(server->remote_,
                      RemoteSources::Create(std::move(remote)));
  RegistryOptions options;
  options.load.remote = server->remote_.get();
  for (Target& target : server->targets_) {
    options.targets.push_back(
        {target.device.get(), target.loader.get(), target.budget_bytes});
  }
  options.opener = server->opener_.get();
  // The daemon's metrics and clock (tests of the registry pass their own).
  options.metrics = &server->metrics_;
  options.now = &DaemonNow;
  server->registry_ = std::make_unique<Registry>(std::move(options));
  WS_RETURN_IF_ERROR(server->Listen(config, info));
  return server;
}

absl::Status Server::SetUpTargets(const v1::DaemonConfig& config,
                                  v1::ServerInfo& info) {
  auto log = Logger("daemon");
  std::vector<CudaDeviceInfo> gpus;
  std::string cuda_status;
  absl::StatusOr<std::unique_ptr<CudaDriver>> driver = CudaDriver::Load();
  absl::Status usable = driver.status();
  if (driver.ok()) {
    auto devices = (*driver)->Devices();
    usable = devices.status();
    if (devices.ok()) gpus = *std::move(devices);
    if (usable.ok() && gpus.empty()) {
      usable = absl::UnavailableError("the CUDA driver sees no GPU");
    }
    driver_ = *std::move(driver);
  }
  info.set_cuda_status(usable.ok() ? "ok" : std::string(usable.message()));
  const bool use_cuda =
      config.backend() == v1::BACKEND_CHOICE_CUDA ||
      (config.backend() == v1::BACKEND_CHOICE_AUTO && usable.ok());
  if (config.backend() == v1::BACKEND_CHOICE_CUDA && !usable.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("backend cuda: ", usable.message()));
  }
  if (!use_cuda && config.backend() == v1::BACKEND_CHOICE_AUTO) {
    log->warn("using the host backend: {}", usable.message());
  }
  info.set_backend(use_cuda ? v1::BACKEND_CUDA : v1::BACKEND_HOST);

  auto budget_of = [&config](const std::string& uuid) -> uint64_t {
    for (const v1::DeviceBudget& budget : config.budgets()) {
      if (budget.device() == uuid) return budget.bytes();
    }
    return 0;
  };
  std::vector<std::unique_ptr<Device>> devices;
  if (use_cuda) {
    for (const CudaDeviceInfo& gpu : gpus) {
      WS_ASSIGN_OR_RETURN(
          std::unique_ptr<CudaDevice> device,
          CudaDevice::Create(driver_.get(), gpu.ordinal,
                             CudaDeviceOptions{.metrics = &metrics_}));
      devices.push_back(std::move(device));
      v1::Device* described = info.add_devices();
      described->set_uuid(gpu.uuid);
      described->set_name(gpu.name);
      described->set_total_bytes(gpu.total_bytes);
    }
  } else {
    auto host =
        std::make_unique<HostDevice>(HostDeviceOptions{.metrics = &metrics_});
    // Which pages arenas get decides load speed and a worker's first touch
    // of every page; say it once, with the setting that decided it.
    Logger("device")->info("host arenas: {}",
                           host->PagesForNextAllocation().reason);
    devices.push_back(std::move(host));
    info.add_devices()->set_uuid("host");
  }

  ReadEngineOptions engine_options;
  engine_options.metrics = &metrics_;
  switch (config.io_engine()) {
    case v1::IO_ENGINE_URING:
      engine_options.kind = ReadEngineOptions::Kind::kIoUring;
      break;
    case v1::IO_ENGINE_PREAD:
      engine_options.kind = ReadEngineOptions::Kind::kPread;
      break;
    default:
      engine_options.kind = ReadEngineOptions::Kind::kAuto;
      break;
  }
  for (std::unique_ptr<Device>& device : devices) {
    Target target;
    target.budget_bytes = budget_of(device->uuid());
    if (use_cuda) {
      target.budget_bytes = GpuBudget(*device, target.budget_bytes);
    }
    target.device = std::move(device);
    WS_ASSIGN_OR_RETURN(target.engine, CreateReadEngine(engine_options));
    WS_ASSIGN_OR_RETURN(
        target.pool,
        StagingPool::Create(StagingPoolOptionsOf(config), target.device.get(),
                            target.engine.get()));
    // Resident from the start, as before the pool could be released: a pin
    // that fails is a start-up error, and the first loads (often many
    // clients at once right after start) do not pay for touching and
    // pinning it. Released once quiet (ReleaseQuietStagingPools), made
    // resident again by the next load.
    WS_RETURN_IF_ERROR(target.pool->MakeResident().status());
    target.loader = std::make_unique<Loader>(
        target.engine.get(), target.pool.get(), target.device.get());
    targets_.push_back(std::move(target));
  }
  for (const v1::DeviceBudget& budget : config.budgets()) {
    const bool known = std::any_of(
        targets_.begin(), targets_.end(),
        [&](const Target& t) { return t.device->uuid() == budget.device(); });
    if (!known) {
      log->warn("budgets: no device {} on this machine; its budget is unused",
                budget.device());
    }
  }
  return absl::OkStatus();
}

absl::Status Server::Listen(const v1::DaemonConfig& config,
                            const v1::ServerInfo& info) {
  const v1::Listen& listen = config.listen();
  const std::string& socket = listen.unix_socket();
  const std::string handle_socket = socket + kHandleSocketSuffix;
  WS_RETURN_IF_ERROR(PrepareSocketPath(socket));
  WS_RETURN_IF_ERROR(PrepareSocketPath(handle_socket));
  Registry* registry = registry_.get();
  WS_ASSIGN_OR_RETURN(
      sessions_, SessionServer::Start(
                     handle_socket,
                     [registry](const std::string& id) {
                       const int released = registry->ReleaseSession(id);
                       if (released > 0) {
                         Logger("sessions")
                             ->info(
                                 "session {} closed: released its {} lease(s)",
                                 id, released);
                       }
                     },
                     descriptors_.sessions, &metrics_));
  WS_RETURN_IF_ERROR(ApplySocketPermissions(handle_socket, listen.socket_mode(),
                                            listen.socket_owner(),
                                            listen.socket_group()));

  WarmstartServiceOptions service_options;
  service_options.metrics = &metrics_;
  service_options.now = &DaemonNow;
  service_ = std::make_unique<WarmstartService>(info, registry, sessions_.get(),
                                                service_options);
  service_->BindSessionsToPeers(&connection_peers_);
  AuthorizationPolicy policy;
  policy.control_uids.insert(config.authorization().control_uids().begin(),
                             config.authorization().control_uids().end());
  policy.control_gids.insert(config.authorization().control_gids().begin(),
                             config.authorization().control_gids().end());
  policy.tcp_control = config.authorization().tcp_control();
  policy.admin_uids.insert(config.authorization().admin_uids().begin(),
                           config.authorization().admin_uids().end());
  policy.admin_gids.insert(config.authorization().admin_gids().begin(),
                           config.authorization().admin_gids().end());
  service_->SetAuthorization(std::move(policy));
  service_->SetLeaseLimits(
      {descriptors_.max_leases_per_process, descriptors_.max_leases_per_uid});
  service_->SetReadiness(v1::Readiness::STARTING, "loading preloads");
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // The unix socket is accepted by grpc_acceptor_ (started below), not by
  // gRPC's listener, which dies for good on EMFILE.
  int tcp_port = 0;
  if (!listen.tcp_address().empty()) {
    builder.AddListeningPort(listen.tcp_address(),
                             grpc::InsecureServerCredentials(), &tcp_port);
  }
  builder.RegisterService(service_.get());
  // Leases of models with 100k+ tensors are several megabytes: sending is
  // unlimited (gRPC's default too, said here so that it stays so). What the
  // daemon receives keeps gRPC's 4 MB limit: every request is small, and a
  // client must not make the daemon buffer more.
  builder.SetMaxSendMessageSize(-1);
  grpc_server_ = builder.BuildAndStart();
  if (grpc_server_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot start the gRPC server",
                     listen.tcp_address().empty()
                         ? ""
                         : absl::StrCat(" on ", listen.tcp_address())));
  }
  WS_RETURN_IF_ERROR(StartUnixAcceptor());
  if (!listen.tcp_address().empty() && tcp_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen.tcp_address()));
  }
  if (!listen.tcp_address().empty()) {
    const size_t colon = listen.tcp_address().rfind(':');
    tcp_probe_address_ =
        absl::StrCat(listen.tcp_address().substr(0, colon), ":", tcp_port);
  }
  grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  WS_RETURN_IF_ERROR(ApplySocketPermissions(socket, listen.socket_mode(),
                                            listen.socket_owner(),
                                            listen.socket_group()));
  if (!listen.metrics_address().empty()) {
    WS_ASSIGN_OR_RETURN(
        metrics_endpoint_,
        MetricsEndpoint::Start(listen.metrics_address(),
                               [this] { return metrics_.PrometheusText(); }));
  }
  probe_thread_ = std::thread([this] { RunListenerProbe(); });
  Logger("daemon")->info(
      "warmstartd {} serving on unix:{}{}{} (backend {}, handle socket {}, "
      "pid {})",
      kVersion, socket,
      listen.tcp_address().empty() ? "" : " and " + listen.tcp_address(),
      metrics_endpoint_ == nullptr
          ? ""
          : absl::StrCat(", metrics on http://", listen.metrics_address(),
                         "/metrics"),
      info.backend() == v1::BACKEND_CUDA ? "cuda" : "host", handle_socket,
      ::getpid());
  return absl::OkStatus();
}

void Server::ApplyPreloads(const v1::DaemonConfig& config) {
  StopReadinessThread();
  auto log = Logger("daemon");
  std::vector<std::string> required;
  std::vector<std::string> failed;
  std::vector<std::string> pinned;
  for (const v1::Preload& preload : config.preloads()) {
    absl::StatusOr<std::shared_ptr<KeyProvider>> keys = KeysFor(preload);
    absl::Status started = keys.status();
    if (keys.ok()) {
      ModelRequest request;
      request.name = preload.name();
      request.path = preload.path();
      request.devices.assign(preload.devices().begin(),
                             preload.devices().end());
      request.pinned = !preload.evictable();
      request.layout = preload.layout();
      request.keys = *std::move(keys);
      started = registry_->Load(request).status();
    }
    if (absl::IsAlreadyExists(started)) {
      // On SIGHUP: the files changed on disk since the model was loaded.
      // The loaded copy stays in service until someone unloads it.
      absl::StatusOr<v1::ModelStatus> current = registry_->Get(preload.name());
      if (current.ok() && current->state() == v1::READY) {
        log->warn("preload {}: {}; serving the copy loaded before",
                  preload.name(), started.message());
        started = absl::OkStatus();
      }
    }
    if (!started.ok()) {
      const std::string why =
          absl::StrCat("preload ", preload.name(), " (", preload.path(),
                       "): ", started.message());
      PreloadFailures()->Add();
      if (preload.optional()) {
        log->warn("{} (optional: serving without it)", why);
      } else {
        log->error("{}", why);
        failed.push_back(why);
      }
      continue;
    }
    if (!preload.evictable()) pinned.push_back(preload.name());
    if (!preload.optional()) required.push_back(preload.name());
  }
  // Models pinned by the previous preload list but not this one become
  // evictable; they stay loaded until something needs the room.
  for (const std::string& name : pinned_preloads_) {
    if (std::find(pinned.begin(), pinned.end(), name) == pinned.end()) {
      (void)registry_->SetPinned(name, false);
    }
  }
  pinned_preloads_ = pinned;
  stop_readiness_ = false;
  readiness_thread_ = std::thread(
      [this, required = std::move(required), failed = std::move(failed)] {
        TrackReadiness(required, failed);
      });
}

void Server::TrackReadiness(std::vector<std::string> required,
                            std::vector<std::string> failed_early) {
  if (!failed_early.empty()) {
    SetReady(v1::Readiness::FAILED, absl::StrJoin(failed_early, "; "));
    return;
  }
  // A daemon that is serving (SIGHUP added preloads) stays SERVING while
  // the new ones load.
  if (!required.empty() &&
      service_->readiness().state() != v1::Readiness::READY) {
    SetReady(v1::Readiness::STARTING,
             absl::StrCat("loading ", required.size(), " required preload(s)"));
  }
  for (const std::string& name : required) {
    while (true) {
      if (stop_readiness_) return;
      absl::StatusOr<v1::ModelStatus> status =
          registry_->WaitLoaded(name, DaemonNow() + kReadinessPoll);
      if (!status.ok()) {
        SetReady(v1::Readiness::FAILED,
                 absl::StrCat("required preload ", name, ": ",
                              status.status().message()));
        return;
      }
      if (status->state() == v1::LOADING) continue;
      if (status->state() != v1::READY) {
        PreloadFailures()->Add();
        SetReady(v1::Readiness::FAILED,
                 absl::StrCat("required preload ", name,
                              " failed: ", status->error()));
        return;
      }
      break;
    }
  }
  SetReady(v1::Readiness::READY,
           required.empty() ? "no required preloads"
                            : absl::StrCat(required.size(),
                                           " required preload(s) resident"));
}

void Server::SetReady(v1::Readiness::State state, const std::string& message) {
  auto log = Logger("daemon");
  service_->SetReadiness(state, message);
  UpdateHealth();
  switch (state) {
    case v1::Readiness::READY:
      log->info("ready: {}", message);
      sd_notifyf(0, "READY=1\nSTATUS=ready: %s", message.c_str());
      break;
    case v1::Readiness::FAILED:
      log->error("not ready: {}", message);
      sd_notifyf(0, "STATUS=failed: %s", message.c_str());
      break;
    default:
      sd_notifyf(0, "STATUS=%s", message.c_str());
      break;
  }
}

void Server::ReleaseQuietStagingPools(absl::Duration period) {
  while (!staging_release_stop_.WaitForNotificationWithTimeout(period)) {
    for (Target& target : targets_) {
      if (target.pool->ReleaseIfQuiet()) {
        Logger("daemon")->info(
            "staging pool of {} returned to the system after {} s idle",
            target.device->uuid(), config_.staging_release_seconds());
      }
    }
  }
}

void Server::StopStagingReleaseThread() {
  if (!staging_release_thread_.joinable()) return;
  staging_release_stop_.Notify();
  staging_release_thread_.join();
}

void Server::UpdateHealth() {
  absl::MutexLock lock(&health_mutex_);
  grpc_server_->GetHealthCheckService()->SetServingStatus(
      listeners_healthy_ &&
      service_->readiness().state() == v1::Readiness::READY);
}

void Server::RunListenerProbe() {
  while (true) {
    {
      absl::MutexLock lock(&probe_mutex_);
      probe_mutex_.AwaitWithTimeout(absl::Condition(&stop_probe_),
                                    kProbeInterval);
      if (stop_probe_) return;
    }
    ProbeListenersOnce();
  }
}

absl::Status Server::StartUnixAcceptor() {
  SessionServer* sessions = sessions_.get();
  const uint64_t reserved = descriptors_.reserved;
  const size_t max_sessions = descriptors_.sessions.max_sessions;
  WS_ASSIGN_OR_RETURN(
      grpc_acceptor_,
      GrpcAcceptor::Start(
          config_.listen().unix_socket(), grpc_server_.get(),
          [=]() -> uint64_t {
            // The daemon's own reserve, and room for every session
            // not yet open: gRPC connections never take what
            // sessions are promised.
            const size_t open = sessions->session_count();
            return reserved + (open < max_sessions ? max_sessions - open : 0);
          },
          &connection_peers_,
          ConnectionLimits{descriptors_.max_grpc_connections,
                           descriptors_.max_grpc_connections_per_process,
                           descriptors_.max_grpc_connections_per_uid},
          &metrics_));
  return absl::OkStatus();
}

absl::Status Server::RearmUnixListener() {
  const v1::Listen& listen = config_.listen();
  grpc_acceptor_.reset();
  WS_RETURN_IF_ERROR(PrepareSocketPath(listen.unix_socket()));
  WS_RETURN_IF_ERROR(StartUnixAcceptor());
  return ApplySocketPermissions(listen.unix_socket(), listen.socket_mode(),
                                listen.socket_owner(), listen.socket_group());
}

void Server::ProbeListenersOnce() {
  auto log = Logger("daemon");
  const std::string& socket = config_.listen().unix_socket();
  std::vector<std::string> failures;
  ProbeResult unix_probe = ProbeUnixListener(socket, kProbeTimeout);
  if (unix_probe.listener_gone) {
    log->error("the unix listener takes no new connection ({}); re-arming it",
               unix_probe.status.message());
    if (absl::Status rearmed = RearmUnixListener(); !rearmed.ok()) {
      log->error(
          "cannot re-arm the unix listener on {}: {}; exiting (status {}) so "
          "that the supervisor restarts the daemon",
          socket, rearmed.message(), kExitListenerLost);
      log->flush();
      ::_exit(kExitListenerLost);
    }
    unix_probe = ProbeUnixListener(socket, kProbeTimeout);
    if (unix_probe.status.ok()) {
      log->warn("the unix listener on {} is re-armed and answers", socket);
    }
  }
  if (!unix_probe.status.ok()) {
    failures.push_back(std::string(unix_probe.status.message()));
  }
  if (!tcp_probe_address_.empty()) {
    const ProbeResult tcp = ProbeTcpListener(tcp_probe_address_, kProbeTimeout);
    if (!tcp.status.ok()) failures.push_back(std::string(tcp.status.message()));
  }
  bool changed = false;
  {
    absl::MutexLock lock(&health_mutex_);
    changed = listeners_healthy_ != failures.empty();
    listeners_healthy_ = failures.empty();
  }
  if (changed) UpdateHealth();
  if (failures.empty()) {
    if (failed_probe_rounds_ > 0) log->info("the listeners answer again");
    if (!probe_answered_) {
      // Once: says the probe runs and passes (later rounds are silent).
      log->info("the listeners answer new connections (probed every {})",
                absl::FormatDuration(kProbeInterval));
      probe_answered_ = true;
    }
    failed_probe_rounds_ = 0;
    return;
  }
  ++failed_probe_rounds_;
  log->error("health NOT_SERVING: a new client cannot be served: {}",
             absl::StrJoin(failures, "; "));
  if (failed_probe_rounds_ >= kProbeFailuresToExit) {
    log->error(
        "the listeners failed {} probes in a row; exiting (status {}) so that "
        "the supervisor restarts the daemon",
        failed_probe_rounds_, kExitListenerLost);
    log->flush();
    ::_exit(kExitListenerLost);
  }
}

void Server::StopListenerProbe() {
  {
    absl::MutexLock lock(&probe_mutex_);
    stop_probe_ = true;
  }
  if (probe_thread_.joinable()) probe_thread_.join();
}

void Server::StopReadinessThread() {
  stop_readiness_ = true;
  if (readiness_thread_.joinable()) readiness_thread_.join();
}

int Server::Shutdown() {
  auto log = Logger("daemon");
  StopReadinessThread();
  StopListenerProbe();
  SetReady(v1::Readiness::STOPPING, "shutting down");
  sd_notify(0, "STOPPING=1");
  registry_->StopLeasing();
  const absl::Duration grace = absl::Seconds(config_.shutdown_grace_seconds());
  const int held = registry_->Stats().leases;
  if (held > 0) {
    log->info("waiting up to {} s for {} lease(s) to be released",
              config_.shutdown_grace_seconds(), held);
  }
  const int left = registry_->WaitUntilUnleased(DaemonNow() + grace);
  if (left > 0) {
    log->warn("{} lease(s) still held after {} s; releasing everything", left,
              config_.shutdown_grace_seconds());
  }
  // No new connections: the acceptor must be gone before the server is.
  grpc_acceptor_.reset();
  // In-flight calls (a WatchModel stream, say) get a second to finish.
  grpc_server_->Shutdown(std::chrono::system_clock::now() +
                         std::chrono::seconds(1));
  grpc_server_->Wait();
  return left;
}

Server::~Server() {
  StopReadinessThread();
  StopStagingReleaseThread();
  StopListenerProbe();
  grpc_acceptor_.reset();
  if (grpc_server_ != nullptr) {
    grpc_server_->Shutdown(std::chrono::system_clock::now());
    grpc_server_->Wait();
    // Only a socket this server bound: a failed start may have found
    // another daemon's.
    ::unlink(config_.listen().unix_socket().c_str());
  }
  metrics_endpoint_.reset();
  sessions_.reset();
  service_.reset();
  registry_.reset();
  // Pools unregister from their devices before the devices go.
  for (Target& target : targets_) {
    target.loader.reset();
    target.pool.reset();
    target.engine.reset();
    target.device.reset();
  }
}

}  // namespace warmstart
