#include "daemon/service/warmstart_service.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/utf8.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"

namespace warmstart {
namespace {

// How long a call without a deadline waits for a load in progress.
constexpr absl::Duration kDefaultWait = absl::Hours(24);
// Blocking waits wake this often to notice a cancelled call.
constexpr absl::Duration kCancelPoll = absl::Milliseconds(250);

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

v1::MemoryKind KindOf(ExportedMemory::Kind kind) {
  switch (kind) {
    case ExportedMemory::Kind::kHostMemfd:
      return v1::HOST_MEMFD;
    case ExportedMemory::Kind::kCudaVmmFd:
      return v1::CUDA_VMM_FD;
    case ExportedMemory::Kind::kCudaIpcHandle:
      return v1::CUDA_IPC_HANDLE;
  }
  return v1::MEMORY_KIND_UNSPECIFIED;
}

// INVALID_ARGUMENT naming `field` when `value` is not UTF-8. Request
// fields that carry text are bytes on the wire so that this, not the
// protobuf parser (INTERNAL, no message), refuses them; nothing that is not
// UTF-8 reaches a log line, a path or the registry.
absl::Status RequireUtf8(absl::string_view field, absl::string_view value) {
  const size_t bad = FindInvalidUtf8(value);
  if (bad == absl::string_view::npos) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " \"", absl::CHexEscape(value.substr(0, 200)),
                   "\" is not valid UTF-8 (byte ", bad, ")"));
}

}  // namespace

WarmstartService::WarmstartService(v1::ServerInfo info, Registry* registry,
                                   SessionServer* sessions,
                                   WarmstartServiceOptions options)
    : info_(std::move(info)),
      registry_(registry),
      sessions_(sessions),
      now_(std::move(options.now)),
      metrics_(GivenOrUnexported(options.metrics, unexported_metrics_)),
      refused_paths_(metrics_.GetCounter(
          "warmstart_refused_paths_total",
          "Loads refused because the path is outside the model roots")) {}

absl::Time WarmstartService::Now() const { return now_ ? now_() : absl::Now(); }

absl::Time WarmstartService::DeadlineOf(
    const grpc::ServerContext& context) const {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return Now() + kDefaultWait;
  }
  return std::min(absl::FromChrono(deadline), Now() + kDefaultWait);
}

void WarmstartService::SetReadiness(v1::Readiness::State state,
                                    const std::string& message) {
  absl::MutexLock lock(&mutex_);
  readiness_.set_state(state);
  readiness_.set_message(message);
}

v1::Readiness WarmstartService::readiness() const {
  absl::MutexLock lock(&mutex_);
  return readiness_;
}

absl::StatusOr<std::string> WarmstartService::SessionOf(
    const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kSessionMetadataKey);
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "no session: connect to the daemon's handle socket and send its "
        "session id as metadata \"warmstart-session\"");
  }
  std::string id(it->second.data(), it->second.size());
  if (absl::Status utf8 = RequireUtf8(
          absl::StrCat("metadata \"", kSessionMetadataKey, "\""), id);
      !utf8.ok()) {
    return utf8;
  }
  absl::StatusOr<SessionPeer> owner = sessions_->Find(id);
  if (!owner.ok()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "session \"", absl::CHexEscape(id.substr(0, 64)),
        "\" is unknown or closed; open a new one on the handle socket"));
  }
  if (peers_ != nullptr) {
    // A session id is not a bearer token: another process that learnt it
    // (from a log, /proc, a core dump) must not take or release leases
    // whose descriptors go to the session's owner.
    const std::optional<SessionPeer> caller = peers_->Find(context.peer());
    if (!caller.has_value()) {
      return absl::PermissionDeniedError(
          "sessions can be used only over the daemon's unix socket, by the "
          "process that opened them");
    }
    if (caller->pid != owner->pid || caller->uid != owner->uid) {
      Logger("service")->warn(
          "refused session {} of pid {} uid {} used by pid {} uid {}",
          absl::CHexEscape(id.substr(0, 64)), owner->pid, owner->uid,
          caller->pid, caller->uid);
      return absl::PermissionDeniedError(absl::StrCat(
          "session \"", absl::CHexEscape(id.substr(0, 64)),
          "\" belongs to pid ", owner->pid, " uid ", owner->uid,
          "; this call comes from pid ", caller->pid, " uid ", caller->uid));
    }
  }
  return id;
}

absl::StatusOr<v1::ModelStatus> WarmstartService::WaitLoaded(
    grpc::ServerContext& context, const std::string& name) {
  const absl::Time deadline = DeadlineOf(context);
  while (true) {
    const absl::Time until = std::min(deadline, Now() + kCancelPoll);
    absl::StatusOr<v1::ModelStatus> status = registry_->WaitLoaded(name, until);
    if (!status.ok() || status->state() != v1::LOADING) return status;
    if (context.IsCancelled()) {
      return absl::CancelledError("the call was cancelled; the load goes on");
    }
    if (Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "model ", name, " is still loading (", status->bytes_loaded(), " of ",
          status->bytes_total(), " bytes); the load goes on"));
    }
  }
}

grpc::Status WarmstartService::GetServerInfo(grpc::ServerContext*,
                                             const v1::GetServerInfoRequest*,
                                             v1::ServerInfo* response) {
  *response = info_;
  *response->mutable_readiness() = readiness();
  return grpc::Status::OK;
}

namespace {

// The supplementary groups of `pid` (from /proc), or none when it is gone.
std::vector<gid_t> GroupsOf(pid_t pid) {
  std::vector<gid_t> groups;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (!absl::StartsWith(line, "Groups:")) continue;
    for (absl::string_view field : absl::StrSplit(
             absl::string_view(line).substr(7), ' ', absl::SkipEmpty())) {
      gid_t gid;
      if (absl::SimpleAtoi(field, &gid)) groups.push_back(gid);
    }
  }
  return groups;
}

}  // namespace

absl::Status WarmstartService::AuthorizeControl(
    const grpc::ServerContext& context, absl::string_view what) const {
  if (peers_ == nullptr) return absl::OkStatus();
  const std::optional<SessionPeer> caller = peers_->Find(context.peer());
  if (!caller.has_value()) {
    if (policy_.tcp_control) return absl::OkStatus();
    return absl::PermissionDeniedError(
        absl::StrCat("callers over TCP may not ", what,
                     ": they have no credentials (use the unix socket, or set "
                     "authorization { tcp_control: true })"));
  }
  if (policy_.control_uids.empty() && policy_.control_gids.empty()) {
    return absl::OkStatus();
  }
  if (caller->uid == 0 || caller->uid == ::geteuid() ||
      policy_.control_uids.count(caller->uid) > 0 ||
      policy_.control_gids.count(caller->gid) > 0) {
    return absl::OkStatus();
  }
  for (gid_t gid : GroupsOf(caller->pid)) {
    if (policy_.control_gids.count(gid) > 0) return absl::OkStatus();
  }
  Logger("service")->warn("refused to let pid {} uid {} {}", caller->pid,
                          caller->uid, what);
  return absl::PermissionDeniedError(absl::StrCat(
      "uid ", caller->uid, " (pid ", caller->pid, ") may not ", what,
      ": not root, not the daemon's uid, and not in authorization's "
      "control_uids or control_gids"));
}

absl::Status MayForceUnload(const std::optional<SessionPeer>& caller,
                            const std::vector<gid_t>& groups,
                            const std::string& model,
                            std::optional<uid_t> loaded_by,
                            const AuthorizationPolicy& policy,
                            uid_t daemon_uid) {
  if (!caller.has_value()) {
    if (policy.tcp_control) return absl::OkStatus();
    return absl::PermissionDeniedError(
        "callers over TCP may not force-unload models: they have no "
        "credentials (use the unix socket, or set authorization { "
        "tcp_control: true })");
  }
  if (caller->uid == 0 || caller->uid == daemon_uid ||
      policy.admin_uids.count(caller->uid) > 0 ||
      policy.admin_gids.count(caller->gid) > 0 ||
      (loaded_by.has_value() && *loaded_by == caller->uid)) {
    return absl::OkStatus();
  }
  for (gid_t gid : groups) {
    if (policy.admin_gids.count(gid) > 0) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "uid ", caller->uid, " (pid ", caller->pid, ") may not force-unload ",
      absl::CHexEscape(model), ": only ",
      loaded_by.has_value()
          ? absl::StrCat("uid ", *loaded_by, ", who loaded it, ")
          : std::string(),
      "root, the daemon's uid and authorization's admin_uids or admin_gids "
      "may; unload it without --force once its leases are released"));
}

grpc::Status WarmstartService::LoadModel(grpc::ServerContext* context,
                                         const v1::LoadModelRequest* request,
                                         v1::ModelStatus* response) {
  absl::Status valid = RequireUtf8("LoadModelRequest.name", request->name());
  if (valid.ok()) valid = RequireUtf8("LoadModelRequest.path", request->path());
  for (const std::string& device : request->devices()) {
    if (valid.ok()) valid = RequireUtf8("LoadModelRequest.devices", device);
  }
  if (!valid.ok()) return ToGrpc(valid);
  if (absl::Status allowed = AuthorizeControl(*context, "load models");
      !allowed.ok()) {
    return ToGrpc(allowed);
  }
  ModelRequest model;
  model.name = request->name();
  model.path = request->path();
  model.devices.assign(request->devices().begin(), request->devices().end());
  model.layout = request->layout();
  if (peers_ != nullptr) {
    if (std::optional<SessionPeer> caller = peers_->Find(context->peer())) {
      model.requested_by_uid = caller->uid;
    }
  }
  absl::StatusOr<v1::ModelStatus> status = registry_->Load(model);
  if (!status.ok()) {
    if (absl::IsPermissionDenied(status.status())) {
      refused_paths_->Add();
      Logger("service")->warn("refused to load model {} from {}: {}",
                              absl::CHexEscape(model.name.substr(0, 128)),
                              absl::CHexEscape(model.path.substr(0, 4096)),
                              status.status().message());
    }
    return ToGrpc(status.status());
  }
  if (!request->no_wait()) status = WaitLoaded(*context, model.name);
  if (!status.ok()) return ToGrpc(status.status());
  if (status->state() == v1::FAILED) {
    return grpc::Status(static_cast<grpc::StatusCode>(status->error_code()),
                        status->error());
  }
  if (status->state() == v1::UNLOADING) {
    return grpc::Status(grpc::StatusCode::ABORTED,
                        absl::StrCat("model ", model.name,
                                     " was unloaded while it was loading"));
  }
  *response = *std::move(status);
  return grpc::Status::OK;
}

grpc::Status WarmstartService::WatchModel(
    grpc::ServerContext* context, const v1::WatchModelRequest* request,
    grpc::ServerWriter<v1::ModelStatus>* writer) {
  if (absl::Status valid =
          RequireUtf8("WatchModelRequest.name", request->name());
      !valid.ok()) {
    return ToGrpc(valid);
  }
  uint64_t version = 0;
  while (!context->IsCancelled()) {
    absl::StatusOr<v1::ModelStatus> status = registry_->WaitForChange(
        request->name(), &version, Now() + kCancelPoll);
    if (!status.ok()) return ToGrpc(status.status());
    if (!writer->Write(*status)) return grpc::Status::CANCELLED;
    if (status->state() == v1::READY || status->state() == v1::FAILED) {
      return grpc::Status::OK;
    }
  }
  return grpc::Status::CANCELLED;
}

grpc::Status WarmstartService::AcquireModel(
    grpc::ServerContext* context, const v1::AcquireModelRequest* request,
    v1::Lease* response) {
  if (absl::Status valid =
          RequireUtf8("AcquireModelRequest.name", request->name());
      !valid.ok()) {
    return ToGrpc(valid);
  }
  absl::StatusOr<std::string> session = SessionOf(*context);
  if (!session.ok()) return ToGrpc(session.status());
  // Wait for a load in progress here, where a cancelled call is noticed,
  // rather than inside the registry.
  absl::StatusOr<v1::ModelStatus> loaded =
      WaitLoaded(*context, request->name());
  if (!loaded.ok()) return ToGrpc(loaded.status());
  absl::StatusOr<LeaseGrant> grant;
  {
    absl::MutexLock lock(&acquire_mutex_);
    if (absl::Status fits = CheckLeaseLimits(*session); !fits.ok()) {
      Logger("service")->warn("refused a lease of {} to session {}: {}",
                              absl::CHexEscape(request->name().substr(0, 128)),
                              absl::CHexEscape(session->substr(0, 64)),
                              fits.message());
      return ToGrpc(fits);
    }
    grant = registry_->Acquire(request->name(), *session, Now(),
                               request->packed_tensor_table()
                                   ? TensorListing::kPackedTable
                                   : TensorListing::kTensors);
  }
  if (!grant.ok()) return ToGrpc(grant.status());

  response->set_lease_id(grant->lease_id);
  *response->mutable_model() = grant->model;
  std::vector<int> fds;
  for (const LeaseGrant::Memory& memory : grant->memory) {
    v1::Allocation* allocation = response->add_allocations();
    allocation->set_device_uuid(memory.device_uuid);
    allocation->set_kind(KindOf(memory.exported.kind));
    allocation->set_size(memory.exported.size);
    if (memory.exported.kind == ExportedMemory::Kind::kCudaIpcHandle) {
      allocation->set_ipc_handle(memory.exported.ipc_handle);
    } else {
      allocation->set_fd_index(static_cast<uint32_t>(fds.size()));
      fds.push_back(memory.exported.fd);
    }
  }
  if (request->packed_tensor_table()) {
    // Built once per model: one copy of its bytes, no message per tensor.
    response->set_tensor_table(*grant->tensor_table);
  }
  for (const LoadedTensor& tensor : grant->tensors) {
    v1::Tensor* out = response->add_tensors();
    out->set_name(tensor.name);
    out->set_dtype(tensor.dtype);
    for (uint64_t dim : tensor.shape) out->add_shape(dim);
    out->set_nbytes(tensor.nbytes);
    out->set_offset(tensor.offset);
    out->set_role(tensor.role);
  }
  response->set_metadata_json(grant->metadata_json);
  // The lease exists before the descriptors go out: if the session closes
  // now, either the send fails (and the lease is released here) or the
  // session's close releases it.
  absl::Status sent = absl::OkStatus();
  if (!fds.empty()) {
    const uint64_t transfer_id = sessions_->NextTransferId();
    sent = sessions_->SendFds(*session, transfer_id, grant->lease_id, fds);
    response->set_fd_transfer_id(transfer_id);
  } else if (!sessions_->Find(*session).ok()) {
    sent = absl::UnavailableError("the session's handle socket is closed");
  }
  // A caller that gave up will never learn the lease id. (One that gives up
  // after this check finds the bundle, with its lease id, on its next
  // acquire and releases it then.)
  if (sent.ok() && context->IsCancelled()) {
    sent = absl::CancelledError("the call was cancelled; lease released");
  }
  if (!sent.ok()) {
    (void)registry_->Release(grant->lease_id, *session);
    return ToGrpc(sent);
  }
  return grpc::Status::OK;
}

absl::Status WarmstartService::CheckLeaseLimits(
    const std::string& session) const {
  if (lease_limits_.max_per_process == 0 && lease_limits_.max_per_uid == 0) {
    return absl::OkStatus();
  }
  const std::map<std::string, SessionPeer> peers = sessions_->Peers();
  auto owner = peers.find(session);
  if (owner == peers.end()) return absl::OkStatus();  // Acquire refuses it.
  size_t same_process = 0;
  size_t same_uid = 0;
  for (const auto& [id, count] : registry_->LeasesBySession()) {
    auto peer = peers.find(id);
    if (peer == peers.end()) continue;
    if (peer->second.pid == owner->second.pid) same_process += count;
    if (peer->second.uid == owner->second.uid) same_uid += count;
  }
  if (lease_limits_.max_per_process > 0 &&
      same_process >= lease_limits_.max_per_process) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "pid ", owner->second.pid, " holds ", same_process,
        " leases, the most one process may hold (",
        lease_limits_.max_per_process,
        "; client_limits.max_leases_per_process); release some first"));
  }
  if (lease_limits_.max_per_uid > 0 && same_uid >= lease_limits_.max_per_uid) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "uid ", owner->second.uid, " holds ", same_uid,
        " leases, the most one user may hold (", lease_limits_.max_per_uid,
        "; client_limits.max_leases_per_uid); release some first"));
  }
  return absl::OkStatus();
}

grpc::Status WarmstartService::ReleaseModel(
    grpc::ServerContext* context, const v1::ReleaseModelRequest* request,
    v1::ReleaseModelResponse*) {
  if (absl::Status valid =
          RequireUtf8("ReleaseModelRequest.lease_id", request->lease_id());
      !valid.ok()) {
    return ToGrpc(valid);
  }
  absl::StatusOr<std::string> session = SessionOf(*context);
  if (!session.ok()) return ToGrpc(session.status());
  return ToGrpc(registry_->Release(request->lease_id(), *session));
}

grpc::Status WarmstartService::UnloadModel(
    grpc::ServerContext* context, const v1::UnloadModelRequest* request,
    v1::ModelStatus* response) {
  if (absl::Status valid =
          RequireUtf8("UnloadModelRequest.name", request->name());
      !valid.ok()) {
    return ToGrpc(valid);
  }
  if (absl::Status allowed = AuthorizeControl(*context, "unload models");
      !allowed.ok()) {
    return ToGrpc(allowed);
  }
  if (request->force() && peers_ != nullptr) {
    const std::optional<SessionPeer> caller = peers_->Find(context->peer());
    absl::Status allowed = MayForceUnload(
        caller,
        caller.has_value() ? GroupsOf(caller->pid) : std::vector<gid_t>(),
        request->name(), registry_->LoadedBy(request->name()), policy_,
        ::geteuid());
    if (!allowed.ok()) {
      Logger("service")->warn("refused a forced unload: {}", allowed.message());
      return ToGrpc(allowed);
    }
  }
  absl::StatusOr<v1::ModelStatus> status =
      registry_->Unload(request->name(), request->force());
  if (!status.ok()) return ToGrpc(status.status());
  *response = *std::move(status);
  return grpc::Status::OK;
}

grpc::Status WarmstartService::ListModels(grpc::ServerContext*,
                                          const v1::ListModelsRequest* request,
                                          v1::ListModelsResponse* response) {
  if (absl::Status valid =
          RequireUtf8("ListModelsRequest.name", request->name());
      !valid.ok()) {
    return ToGrpc(valid);
  }
  if (!request->name().empty()) {
    absl::StatusOr<v1::ModelStatus> status = registry_->Get(request->name());
    if (!status.ok()) return ToGrpc(status.status());
    *response->add_models() = *std::move(status);
    return grpc::Status::OK;
  }
  for (v1::ModelStatus& status : registry_->List()) {
    *response->add_models() = std::move(status);
  }
  return grpc::Status::OK;
}

grpc::Status WarmstartService::GetStats(grpc::ServerContext*,
                                        const v1::GetStatsRequest*,
                                        v1::Stats* response) {
  const RegistryStats stats = registry_->Stats();
  response->set_models(stats.models);
  response->set_leases(stats.leases);
  response->set_sessions(static_cast<uint32_t>(sessions_->session_count()));
  for (const RegistryStats::DeviceUse& use : stats.devices) {
    v1::DeviceStats* device = response->add_devices();
    device->set_uuid(use.uuid);
    device->set_resident_bytes(use.resident_bytes);
    device->set_budget_bytes(use.budget_bytes);
    device->set_free_bytes(use.free_bytes);
    device->set_retained_bytes(use.retained_bytes);
  }
  for (const auto& [name, value] : metrics_.Snapshot()) {
    (*response->mutable_metrics())[name] = value;
  }
  return grpc::Status::OK;
}

}  // namespace warmstart
