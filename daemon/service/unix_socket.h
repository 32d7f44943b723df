// Listening unix sockets: preparing their path, binding and listening.
#ifndef WARMSTART_DAEMON_SERVICE_UNIX_SOCKET_H_
#define WARMSTART_DAEMON_SERVICE_UNIX_SOCKET_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/scoped_fd.h"

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

// A non-blocking, close-on-exec unix socket of `type` (SOCK_STREAM,
// SOCK_SEQPACKET) bound to `path` and listening with `backlog`. `what`
// names the socket in errors: InvalidArgument when the path does not fit
// sun_path; the errno status of socket, bind ("bind <path>") or listen.
absl::StatusOr<ScopedFd> ListenUnixSocket(const std::string& path, int type,
                                          int backlog, const char* what);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVICE_UNIX_SOCKET_H_
