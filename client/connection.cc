#include "client/connection.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"

namespace warmstart {
namespace client {
namespace internal {
namespace {

// Between attempts to reach a daemon that is restarting.
constexpr absl::Duration kReconnectPause = absl::Milliseconds(50);

// How long a read-only call waits for a daemon coming back after a
// restart: a daemon that starts takes a few hundred milliseconds to listen
// again, and a daemon that is simply gone costs the caller this much more.
constexpr absl::Duration kReconnectWait = absl::Seconds(1);

// The directory part of `path`, as dirname(3) would give it.
std::string Dirname(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

Connection::Connection(std::string socket_path, absl::Duration connect_timeout,
                       std::shared_ptr<grpc::Channel> channel)
    : socket_path_(std::move(socket_path)),
      connect_timeout_(connect_timeout),
      channel_(std::move(channel)),
      stub_(v1::Warmstart::NewStub(channel_)) {}

absl::Status Connection::FromGrpc(const grpc::Status& status) const {
  if (status.ok()) return absl::OkStatus();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::UnavailableError(absl::StrCat(
        "daemon unavailable at ", socket_path_, ": ", status.error_message()));
  }
  // gRPC's codes are the canonical ones absl uses, number for number.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

void Connection::Prepare(grpc::ClientContext* context, absl::Duration timeout,
                         const Session* session) {
  if (timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  if (session != nullptr) {
    context->AddMetadata(kSessionMetadataKey, session->id());
  }
}

void Connection::PrepareWithCurrentSession(grpc::ClientContext* context,
                                           absl::Duration timeout) {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    session = session_;
  }
  if (session != nullptr && session->Closed()) session = nullptr;
  Prepare(context, timeout, session.get());
}

grpc::Status Connection::CallReadOnly(
    absl::Duration timeout,
    const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  const absl::Time deadline = timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : absl::Now() + timeout;
  grpc::Status status;
  {
    grpc::ClientContext context;
    PrepareWithCurrentSession(&context, timeout);
    status = call(&context);
  }
  // gRPC's own retries (kServiceConfig) cover a connection that died
  // unnoticed, but not a daemon that is still starting when they run out:
  // the channel then waits out its reconnect backoff before trying again.
  struct stat st;
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE ||
      ::stat(socket_path_.c_str(), &st) != 0) {
    return status;
  }
  grpc::experimental::ChannelResetConnectionBackoff(channel_.get());
  const absl::Time wait_until =
      std::min(deadline, absl::Now() + kReconnectWait);
  if (!channel_->WaitForConnected(absl::ToChronoTime(wait_until))) {
    return status;
  }
  grpc::ClientContext context;
  PrepareWithCurrentSession(&context, deadline == absl::InfiniteFuture()
                                          ? absl::InfiniteDuration()
                                          : deadline - absl::Now());
  return call(&context);
}

absl::Status Connection::CheckProtocol(const v1::ServerInfo& info) const {
  if (info.protocol_major() == kClientProtocolMajor) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("daemon at ", socket_path_, " speaks protocol ",
                   info.protocol_major(), ".", info.protocol_minor(),
                   "; this client speaks ", kClientProtocolMajor, ".x"));
}

absl::StatusOr<v1::ServerInfo> Connection::FetchServerInfo(
    absl::Time deadline, bool wait_for_ready) {
  grpc::ClientContext context;
  if (deadline != absl::InfiniteFuture()) {
    context.set_deadline(absl::ToChronoTime(deadline));
  }
  context.set_wait_for_ready(wait_for_ready);
  v1::ServerInfo info;
  grpc::Status status =
      stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) {
    // Waiting for a daemon that never came back ends in DEADLINE_EXCEEDED;
    // to the caller the daemon is simply unavailable.
    if (wait_for_ready &&
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::UnavailableError(
          absl::StrCat("daemon unavailable at ", socket_path_,
                       ": no answer in time (", status.error_message(), ")"));
    }
    return FromGrpc(status);
  }
  if (absl::Status protocol = CheckProtocol(info); !protocol.ok()) {
    return protocol;
  }
  set_server_info(info);
  return info;
}

v1::ServerInfo Connection::server_info() const {
  absl::MutexLock lock(&mu_);
  return server_info_;
}

void Connection::set_server_info(const v1::ServerInfo& info) {
  absl::MutexLock lock(&mu_);
  server_info_ = info;
}

absl::StatusOr<std::shared_ptr<Session>> Connection::SessionForAcquire(
    absl::Time deadline) {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    session = session_;
  }
  if (session != nullptr && session->DiscardQueued()) return session;
  // No session yet, or the daemon restarted: read ServerInfo again, waiting
  // a little for the channel to reconnect to a daemon that is coming back.
  const absl::Time info_deadline =
      std::min(deadline, absl::Now() + connect_timeout_);
  absl::StatusOr<v1::ServerInfo> info;
  for (;;) {
    info = FetchServerInfo(info_deadline, /*wait_for_ready=*/true);
    // After a crash the channel may not know yet that its connection is
    // dead: the first call then fails on it (EPIPE, UNAVAILABLE) and the
    // channel reconnects for the next one.
    if (info.ok() || !absl::IsUnavailable(info.status()) ||
        absl::Now() + kReconnectPause >= info_deadline) {
      break;
    }
    absl::SleepFor(kReconnectPause);
  }
  if (!info.ok()) return info.status();
  if (info->handle_socket_name().empty()) {
    return absl::UnimplementedError(
        absl::StrCat("daemon at ", socket_path_, " (version ", info->version(),
                     ") does not serve sessions: it names no handle socket"));
  }
  const std::string handle_path =
      Dirname(socket_path_) + "/" + info->handle_socket_name();
  absl::StatusOr<std::shared_ptr<Session>> opened =
      Session::Open(handle_path, socket_path_,
                    std::min(deadline, absl::Now() + connect_timeout_));
  if (!opened.ok()) return opened.status();
  absl::MutexLock lock(&mu_);
  session_ = *opened;
  return session_;
}

absl::Status Connection::ReleaseLease(Session& session,
                                      const std::string& lease_id) {
  if (session.Closed()) return session.ClosedError();
  grpc::ClientContext context;
  Prepare(&context, kDefaultCallTimeout, &session);
  v1::ReleaseModelRequest request;
  request.set_lease_id(lease_id);
  v1::ReleaseModelResponse response;
  return FromGrpc(stub_->ReleaseModel(&context, request, &response));
}

}  // namespace internal
}  // namespace client
}  // namespace warmstart
