// The warmstart C++ client: connects to warmstartd over its unix socket.
//
// Depends on proto/ only, never on daemon code.
//
// Thread safety: a Client may be used from several threads at once (gRPC
// channels and stubs are thread-safe).
#ifndef WARMSTART_CLIENT_CLIENT_H_
#define WARMSTART_CLIENT_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/warmstart.grpc.pb.h"

namespace warmstart {
namespace client {

// Where warmstartd listens unless told otherwise.
inline constexpr char kDefaultSocket[] = "/run/warmstart/warmstart.sock";

// The protocol this client speaks; a daemon with another major is refused.
inline constexpr uint32_t kClientProtocolMajor = 1;

struct ConnectOptions {
  std::string socket_path = kDefaultSocket;
  // How long Connect waits for the daemon to answer.
  absl::Duration timeout = absl::Seconds(5);
  // Keep retrying until `timeout` while the socket does not exist yet or
  // refuses connections (a daemon that is still starting).
  bool wait_for_daemon = false;
};

class Client {
 public:
  // Connects and checks the daemon's protocol version. Fails with
  // Unavailable ("daemon unavailable at <socket>: ...") when nothing answers
  // within the timeout, FailedPrecondition on an incompatible protocol.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ConnectOptions& options);

  // The daemon's identity, as read when connecting.
  const v1::ServerInfo& server_info() const { return server_info_; }

  // Asks the standard gRPC health service whether the daemon is SERVING.
  absl::StatusOr<bool> IsServing(absl::Duration timeout);

 private:
  Client(std::string socket_path, std::shared_ptr<grpc::Channel> channel)
      : socket_path_(std::move(socket_path)), channel_(std::move(channel)) {}

  std::string socket_path_;
  std::shared_ptr<grpc::Channel> channel_;
  v1::ServerInfo server_info_;
};

}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_CLIENT_H_
