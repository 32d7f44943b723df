#include "tools/warmstartctl/daemon_connection.h"

#include "common/protocol.h"

namespace warmstart {
namespace ctl {

absl::StatusOr<std::unique_ptr<client::Client>> ConnectToDaemon(
    const CommandLine& line) {
  client::ConnectOptions options;
  options.socket_path = SocketPath(line, kDefaultSocketPath);
  return client::Client::Connect(options);
}

}  // namespace ctl
}  // namespace warmstart
