// warmstartctl subcommands that manage the daemon's models: load, watch,
// ls, status, unload. Each prints its result on stdout (as JSON with --json),
// one line "warmstartctl: <message>" on stderr when it fails, and returns
// the exit status (ExitCodeForDaemonCall).
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_MODELS_COMMANDS_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_MODELS_COMMANDS_H_

#include "tools/warmstartctl/command_line.h"

namespace warmstart {
namespace ctl {

// `load NAME PATH [--no-wait] [--device UUID]... [--timeout S] [--json]`:
// asks the daemon to load PATH (made absolute against the current
// directory) as NAME and waits until it is ready, showing progress on
// stderr (a bar redrawn in place when stderr is a terminal, else
// "loading NAME: X of Y MiB (Z MiB/s)" about once a second; see
// ProgressDisplay) and printing "NAME ready: N tensors, X MiB in S s" at
// the end. --no-wait returns once the load has started; --timeout stops
// waiting (exit 6; the load goes on).
int RunLoad(const CommandLine& line);

// `watch NAME [--timeout S] [--json]`: follows the model until it is READY
// (exit 0) or FAILED (its error; exit as for a load). Prints a line at
// every change of state and about once a second while it loads (a bar
// redrawn in place when stdout is a terminal); with --json, one compact
// JSON object per update, as `status --json` gives it. NotFound (4) when
// there is no such model; --timeout stops waiting (6).
int RunWatch(const CommandLine& line);

// `ls [--json]`: a table NAME STATE SIZE LEASES DEVICES PATH.
int RunList(const CommandLine& line);

// `status NAME [--json]`: one model's state, progress, leases and devices.
int RunStatus(const CommandLine& line);

// `unload NAME [--force] [--json]`: frees a model; refused (exit 5) while
// it is leased unless --force (then it is freed when its last lease goes).
int RunUnload(const CommandLine& line);

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_MODELS_COMMANDS_H_
