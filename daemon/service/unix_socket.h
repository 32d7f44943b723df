// Preparing the path of a listening unix socket.
#ifndef WARMSTART_DAEMON_SERVICE_UNIX_SOCKET_H_
#define WARMSTART_DAEMON_SERVICE_UNIX_SOCKET_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace warmstart {

// Makes `path` ready to bind: creates its parent directory (mode 0755) when
// missing, removes a stale socket left by a process that died, and refuses
// when a live server already listens there or the path is not a socket.
// Fails with InvalidArgument when the path does not fit sun_path.
absl::Status PrepareSocketPath(const std::string& path);

// Sets the permission bits of the socket file at `path` to `mode` and, when
// not empty, its owner to `owner` and its group to `group` (each by name or
// number). Errors: NotFound naming an unknown user or group; the errno
// status of chmod or chown, naming the path.
absl::Status ApplySocketPermissions(const std::string& path, uint32_t mode,
                                    const std::string& owner,
                                    const std::string& group);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVICE_UNIX_SOCKET_H_
