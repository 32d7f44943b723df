// `warmstartctl inspect`: lists what checkpoints hold, from their headers,
// without a running daemon.
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_INSPECT_COMMAND_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_INSPECT_COMMAND_H_

#include "tools/warmstartctl/command_line.h"

namespace warmstart {
namespace ctl {

// inspect [--json] [--hash] [--verify] [--full-metadata]
//         [--key-hex HEX | --key-file F | --password P | --password-file F]
//         PATH...
// Exit status: 0 fine; 2 malformed input or a key needed; 4 a path not
// found; 5 permission denied; 7 a stored checksum does not match (--verify).
// On any error stdout stays empty and stderr gets one line naming the file,
// the place and the reason.
int RunInspect(const CommandLine& line);

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_INSPECT_COMMAND_H_
