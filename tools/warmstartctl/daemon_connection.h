// How warmstartctl's commands reach the daemon: one connection made from
// the command line's --socket (or $WARMSTART_SOCKET, or the default path).
// Thread-safe; the caller owns the returned client.
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_DAEMON_CONNECTION_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_DAEMON_CONNECTION_H_

#include <memory>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "tools/warmstartctl/command_line.h"

namespace warmstart {
namespace ctl {

// Connects once, without waiting for a daemon that is not there yet.
absl::StatusOr<std::unique_ptr<client::Client>> ConnectToDaemon(
    const CommandLine& line);

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_DAEMON_CONNECTION_H_
