// `warmstartctl bench`: the load benchmark, without a running daemon.
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_BENCH_COMMAND_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_BENCH_COMMAND_H_

#include "tools/warmstartctl/command_line.h"

namespace warmstart {
namespace ctl {

// bench PATH... [--backend host|cuda] [--io uring|pread] [--runs N]
//       [--staging-mib N] [--json]
// Prints, per mode (cold, warm), the median GB/s of the load and of its
// baseline and the median ratio, and the peak resident memory outside the
// arena; --json prints {"file_bytes", "runs", "results": [...]}.
int RunBenchCommand(const CommandLine& line);

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_BENCH_COMMAND_H_
