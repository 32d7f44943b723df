#include "client/client.h"

#include <sys/stat.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "proto/health.grpc.pb.h"

namespace warmstart {
namespace client {
namespace {

std::chrono::system_clock::time_point Deadline(absl::Time when) {
  return absl::ToChronoTime(when);
}

absl::Status Unavailable(const std::string& socket_path,
                         absl::string_view why) {
  return absl::UnavailableError(
      absl::StrCat("daemon unavailable at ", socket_path, ": ", why));
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
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  auto channel =
      grpc::CreateCustomChannel("unix:" + options.socket_path,
                                grpc::InsecureChannelCredentials(), arguments);
  std::unique_ptr<Client> client(new Client(options.socket_path, channel));

  auto warmstart = v1::Warmstart::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(Deadline(deadline));
  context.set_wait_for_ready(options.wait_for_daemon);
  grpc::Status status = warmstart->GetServerInfo(
      &context, v1::GetServerInfoRequest(), &client->server_info_);
  if (!status.ok()) {
    return Unavailable(options.socket_path, status.error_message());
  }
  if (client->server_info_.protocol_major() != kClientProtocolMajor) {
    return absl::FailedPreconditionError(
        absl::StrCat("daemon at ", options.socket_path, " speaks protocol ",
                     client->server_info_.protocol_major(), ".",
                     client->server_info_.protocol_minor(),
                     "; this client speaks ", kClientProtocolMajor, ".x"));
  }
  return client;
}

absl::StatusOr<bool> Client::IsServing(absl::Duration timeout) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(Deadline(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health->Check(&context, request, &response);
  if (!status.ok()) return Unavailable(socket_path_, status.error_message());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace client
}  // namespace warmstart
