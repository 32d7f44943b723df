#include "client/client.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/connection.h"
#include "client/session.h"
#include "common/scoped_fd.h"
#include "common/utf8.h"
#include "grpcpp/grpcpp.h"
#include "proto/health.grpc.pb.h"

namespace warmstart {
namespace client {
namespace {

// gRPC's strings must be UTF-8: protobuf refuses to serialize anything else
// and the call failed with INTERNAL and no message. `what` names the field.
absl::Status CheckUtf8(absl::string_view what, const std::string& value) {
  const size_t bad = FindInvalidUtf8(value);
  if (bad == std::string::npos) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " \"", absl::CHexEscape(value.substr(0, 200)),
                   "\" is not valid UTF-8 (byte ", bad,
                   "); the daemon's API carries text: rename it"));
}

constexpr char kServiceConfig[] = R"({
  "methodConfig": [{
    "name": [
      {"service": "warmstart.v1.Warmstart", "method": "GetServerInfo"},
      {"service": "warmstart.v1.Warmstart", "method": "ListModels"},
      {"service": "warmstart.v1.Warmstart", "method": "GetStats"},
      {"service": "warmstart.v1.Warmstart", "method": "WatchModel"}
    ],
    "retryPolicy": {
      "maxAttempts": 3,
      "initialBackoff": "0.1s",
      "maxBackoff": "0.5s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
})";

absl::Status Unavailable(const std::string& socket_path,
                         absl::string_view why) {
  return absl::UnavailableError(
      absl::StrCat("daemon unavailable at ", socket_path, ": ", why));
}

// A model whose load failed, as a status: the daemon's code for the
// failure (error_code) and its message.
absl::Status ModelFailed(const v1::ModelStatus& model) {
  const int code = model.error_code();
  const absl::StatusCode status_code =
      code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
          ? static_cast<absl::StatusCode>(code)
          : absl::StatusCode::kUnknown;
  return absl::Status(
      status_code, model.error().empty()
                       ? absl::StrCat("model ", model.name(), " failed to load")
                       : model.error());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ConnectOptions& options) {
  const absl::Time deadline = absl::Now() + options.timeout;
  struct stat st;
  while (::stat(options.socket_path.c_str(), &st) != 0) {
    if (!options.wait_for_daemon || absl::Now() >= deadline) {
      return Unavailable(options.socket_path, "no such socket");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  grpc::ChannelArguments arguments;
  // Reconnect quickly after a daemon restart instead of backing off for
  // seconds.
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  // Calls that change nothing are retried when they fail on a connection
  // that died with the daemon (UNAVAILABLE before any answer), so the first
  // call after a daemon restart does not fail needlessly.
  arguments.SetServiceConfigJSON(kServiceConfig);
  // A lease carries the whole tensor table: a mixture-of-experts model with
  // 100k tensors answers with ~7 MB, over gRPC's default limit of 4 MB on
  // what a client receives. The daemon is trusted to size its answers; the
  // client takes any size (protobuf itself stops at 2 GiB).
  arguments.SetMaxReceiveMessageSize(-1);
  auto channel =
      grpc::CreateCustomChannel("unix:" + options.socket_path,
                                grpc::InsecureChannelCredentials(), arguments);
  auto connection = std::make_shared<internal::Connection>(
      options.socket_path, options.timeout, std::move(channel));

  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  context.set_wait_for_ready(options.wait_for_daemon);
  v1::ServerInfo info;
  grpc::Status status = connection->stub().GetServerInfo(
      &context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) {
    return Unavailable(options.socket_path, status.error_message());
  }
  if (absl::Status protocol = connection->CheckProtocol(info); !protocol.ok()) {
    return protocol;
  }
  connection->set_server_info(info);
  return std::unique_ptr<Client>(new Client(std::move(connection)));
}

Client::Client(std::shared_ptr<internal::Connection> connection)
    : connection_(std::move(connection)) {}

Client::~Client() = default;

v1::ServerInfo Client::server_info() const {
  return connection_->server_info();
}

absl::StatusOr<v1::ServerInfo> Client::ServerInfo(absl::Duration timeout) {
  const absl::Time deadline = timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : absl::Now() + timeout;
  return connection_->FetchServerInfo(deadline, /*wait_for_ready=*/false);
}

absl::StatusOr<bool> Client::IsServing(absl::Duration timeout) {
  auto health = grpc::health::v1::Health::NewStub(connection_->channel());
  grpc::ClientContext context;
  internal::Connection::Prepare(&context, timeout, nullptr);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health->Check(&context, request, &response);
  if (!status.ok()) {
    return Unavailable(connection_->socket_path(), status.error_message());
  }
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

absl::StatusOr<v1::ModelStatus> Client::Load(const std::string& name,
                                             const std::string& path,
                                             const LoadModelOptions& options,
                                             absl::Duration timeout) {
  if (absl::Status utf8 = CheckUtf8("model name", name); !utf8.ok()) {
    return utf8;
  }
  if (absl::Status utf8 = CheckUtf8("model path", path); !utf8.ok()) {
    return utf8;
  }
  v1::LoadModelRequest request;
  request.set_name(name);
  request.set_path(path);
  for (const std::string& device : options.devices) {
    request.add_devices(device);
  }
  request.set_no_wait(options.no_wait);
  request.set_layout(options.layout);
  grpc::ClientContext context;
  connection_->PrepareWithCurrentSession(&context, timeout);
  v1::ModelStatus model;
  grpc::Status status =
      connection_->stub().LoadModel(&context, request, &model);
  if (!status.ok()) return connection_->FromGrpc(status);
  if (model.state() == v1::FAILED) return ModelFailed(model);
  return model;
}

absl::Status Client::Watch(
    const std::string& name,
    const std::function<void(const v1::ModelStatus&)>& on_status,
    absl::Duration timeout) {
  v1::WatchModelRequest request;
  request.set_name(name);
  grpc::ClientContext context;
  connection_->PrepareWithCurrentSession(&context, timeout);
  std::unique_ptr<grpc::ClientReader<v1::ModelStatus>> reader =
      connection_->stub().WatchModel(&context, request);
  v1::ModelStatus model;
  bool seen = false;
  while (reader->Read(&model)) {
    seen = true;
    on_status(model);
    if (model.state() == v1::READY || model.state() == v1::FAILED) {
      // The daemon ends the stream here anyway; do not wait for it.
      context.TryCancel();
      reader->Finish();  // CANCELLED, by us.
      return model.state() == v1::READY ? absl::OkStatus() : ModelFailed(model);
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return connection_->FromGrpc(status);
  return absl::AbortedError(
      absl::StrCat("the watch of model ", name, " ended while it was ",
                   seen ? v1::ModelState_Name(model.state()) : "unreported",
                   " (it was unloaded, or the daemon is stopping)"));
}

absl::StatusOr<std::vector<v1::ModelStatus>> Client::List(
    absl::Duration timeout) {
  v1::ListModelsResponse response;
  grpc::Status status =
      connection_->CallReadOnly(timeout, [&](grpc::ClientContext* context) {
        return connection_->stub().ListModels(context, v1::ListModelsRequest(),
                                              &response);
      });
  if (!status.ok()) return connection_->FromGrpc(status);
  return std::vector<v1::ModelStatus>(response.models().begin(),
                                      response.models().end());
}

absl::StatusOr<v1::ModelStatus> Client::GetModel(const std::string& name,
                                                 absl::Duration timeout) {
  v1::ListModelsRequest request;
  request.set_name(name);
  v1::ListModelsResponse response;
  grpc::Status status =
      connection_->CallReadOnly(timeout, [&](grpc::ClientContext* context) {
        return connection_->stub().ListModels(context, request, &response);
      });
  if (!status.ok()) return connection_->FromGrpc(status);
  for (const v1::ModelStatus& model : response.models()) {
    if (model.name() == name) return model;
  }
  return absl::NotFoundError(absl::StrCat("no model named ", name));
}

absl::StatusOr<v1::ModelStatus> Client::Unload(const std::string& name,
                                               bool force,
                                               absl::Duration timeout) {
  grpc::ClientContext context;
  connection_->PrepareWithCurrentSession(&context, timeout);
  v1::UnloadModelRequest request;
  request.set_name(name);
  request.set_force(force);
  v1::ModelStatus model;
  grpc::Status status =
      connection_->stub().UnloadModel(&context, request, &model);
  if (!status.ok()) return connection_->FromGrpc(status);
  return model;
}

absl::StatusOr<v1::Stats> Client::Stats(absl::Duration timeout) {
  v1::Stats stats;
  grpc::Status status =
      connection_->CallReadOnly(timeout, [&](grpc::ClientContext* context) {
        return connection_->stub().GetStats(context, v1::GetStatsRequest(),
                                            &stats);
      });
  if (!status.ok()) return connection_->FromGrpc(status);
  return stats;
}

namespace {

// Leases whose acquire gave up after the daemon granted them: nobody else
// knows their ids, so release them now (best effort: a failure means the
// session is gone, and its leases with it).
void ReleaseOrphanedLeases(internal::Connection& connection,
                           internal::Session& session) {
  for (const std::string& lease_id : session.TakeOrphanedLeases()) {
    connection.ReleaseLease(session, lease_id).IgnoreError();
  }
}

}  // namespace

absl::StatusOr<ModelMapping> Client::Acquire(const std::string& name,
                                             absl::Duration timeout) {
  const absl::Time deadline = timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : absl::Now() + timeout;
  absl::MutexLock acquiring(&connection_->acquire_mu());
  absl::StatusOr<std::shared_ptr<internal::Session>> session =
      connection_->SessionForAcquire(deadline);
  if (!session.ok()) return session.status();
  ReleaseOrphanedLeases(*connection_, **session);

  v1::AcquireModelRequest request;
  request.set_name(name);
  // One packed table instead of a message per tensor (a daemon that
  // predates it sends Lease.tensors, which ModelMapping reads too).
  request.set_packed_tensor_table(true);
  grpc::ClientContext context;
  internal::Connection::Prepare(&context, deadline - absl::Now(),
                                session->get());
  LeaseOnArena reply = LeaseOnArena::Make();
  const v1::Lease& lease = *reply.lease;
  grpc::Status status =
      connection_->stub().AcquireModel(&context, request, reply.lease);
  if (!status.ok()) return connection_->FromGrpc(status);

  std::vector<ScopedFd> fds;
  if (lease.fd_transfer_id() != 0) {
    // The daemon sent the bundle before its reply, so it is already queued;
    // the wait only covers a daemon that broke that promise.
    absl::StatusOr<std::vector<ScopedFd>> received = (*session)->ReceiveFds(
        lease.fd_transfer_id(), absl::Now() + connection_->connect_timeout());
    if (!received.ok()) {
      connection_->ReleaseLease(**session, lease.lease_id()).IgnoreError();
      return absl::Status(received.status().code(),
                          absl::StrCat("acquire of model ", name, ": ",
                                       received.status().message()));
    }
    fds = std::move(*received);
  }
  ReleaseOrphanedLeases(*connection_, **session);
  return ModelMapping::Map(connection_, *std::move(session), std::move(reply),
                           std::move(fds));
}

}  // namespace client
}  // namespace warmstart
