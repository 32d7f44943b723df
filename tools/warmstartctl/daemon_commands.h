// warmstartctl subcommands that talk to a running daemon.
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_DAEMON_COMMANDS_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_DAEMON_COMMANDS_H_

#include "tools/warmstartctl/command_line.h"

namespace warmstart {
namespace ctl {

// `info [--json]`: the daemon's version, protocol, backend and devices.
int RunInfo(const CommandLine& line);

// `wait-ready [--timeout SECONDS] [--json]`: waits (default 60 s) until
// the daemon answers and reports SERVING; retries while its socket does not
// exist yet. Prints "ready" ({"state": "ready", "socket": ...} with --json).
// For startup probes: exit 0 when ready, 6 on timeout, 5 at once when the
// daemon reports that it failed to become ready (a required preload
// failed), with its message.
int RunWaitReady(const CommandLine& line);

// `stats [--json]`: the daemon's counts of models, leases and sessions, each
// device's resident bytes and budget, and every metric (sorted by name).
int RunStats(const CommandLine& line);

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_DAEMON_COMMANDS_H_
