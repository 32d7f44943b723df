// The constants of warmstart's wire protocol that the daemon, the C/C++
// client, warmstartctl and the tests must agree on. (The Python package
// repeats them: client/python/warmstart/__init__.py.) Compile-time
// constants only; thread-safe.
#ifndef WARMSTART_COMMON_PROTOCOL_H_
#define WARMSTART_COMMON_PROTOCOL_H_

namespace warmstart {

// The daemon's gRPC socket when neither configuration nor flags name one.
inline constexpr char kDefaultSocketPath[] = "/run/warmstart/warmstart.sock";

// The environment variable that names the daemon's socket for warmstartctl.
inline constexpr char kSocketEnv[] = "WARMSTART_SOCKET";

// The handle socket (SOCK_SEQPACKET, descriptors as SCM_RIGHTS) is the gRPC
// socket's path with this suffix.
inline constexpr char kHandleSocketSuffix[] = ".handles";

// The gRPC metadata key that carries a client's session id (from the handle
// socket's hello) on every call that takes or gives back a lease.
inline constexpr char kSessionMetadataKey[] = "warmstart-session";

}  // namespace warmstart

#endif  // WARMSTART_COMMON_PROTOCOL_H_
