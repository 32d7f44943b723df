#include "daemon/server/listener_probe.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "grpcpp/grpcpp.h"
#include "proto/warmstart.grpc.pb.h"

namespace warmstart {
namespace {

// GetServerInfo over a channel of its own to `target`: a channel normally
// shares connections with others to the same target through gRPC's global
// subchannel pool, which would prove nothing about new connections.
absl::Status CallOverNewConnection(const std::string& target,
                                   absl::Duration timeout) {
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
      target, grpc::InsecureChannelCredentials(), arguments);
  std::unique_ptr<v1::Warmstart::Stub> stub = v1::Warmstart::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::GetServerInfoRequest request;
  v1::ServerInfo info;
  const grpc::Status status = stub->GetServerInfo(&context, request, &info);
  if (status.ok()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "GetServerInfo over a new connection to ", target, " failed within ",
      absl::FormatDuration(timeout), ": ", status.error_message()));
}

}  // namespace

ProbeResult ProbeUnixListener(const std::string& path, absl::Duration timeout) {
  ProbeResult result;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    result.status = absl::InvalidArgumentError(
        absl::StrCat("socket path ", path, " does not fit sun_path"));
    return result;
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  // A plain connect first: it tells a listener that is gone (re-armable)
  // from one that is there but slow.
  ScopedFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket.valid()) {
    result.status = ErrnoToStatus(errno, "socket for the listener probe");
    return result;
  }
  // A listener that accepts nothing fills its backlog, and connect on a
  // unix socket then blocks until there is room: bounded by SO_SNDTIMEO,
  // after which it fails with EAGAIN (there, not gone).
  const timeval bound = absl::ToTimeval(timeout);
  if (::setsockopt(socket.get(), SOL_SOCKET, SO_SNDTIMEO, &bound,
                   sizeof(bound)) != 0) {
    result.status = ErrnoToStatus(errno, "SO_SNDTIMEO for the listener probe");
    return result;
  }
  if (::connect(socket.get(), reinterpret_cast<const sockaddr*>(&address),
                sizeof(address)) != 0) {
    result.listener_gone = errno == ENOENT || errno == ECONNREFUSED;
    result.status = ErrnoToStatus(errno, absl::StrCat("connect ", path));
    return result;
  }
  socket.reset();
  result.status = CallOverNewConnection("unix:" + path, timeout);
  return result;
}

ProbeResult ProbeTcpListener(const std::string& address,
                             absl::Duration timeout) {
  std::string target = address;
  for (absl::string_view wildcard : {"0.0.0.0:", "[::]:", "*:"}) {
    if (absl::StartsWith(target, wildcard)) {
      target = absl::StrCat(
          absl::StartsWith(wildcard, "[") ? "[::1]:" : "127.0.0.1:",
          target.substr(wildcard.size()));
    }
  }
  // gRPC's own TCP listener cannot be re-armed from outside: whether the
  // connect or the call failed, the answer is the same.
  ProbeResult result;
  result.status = CallOverNewConnection(target, timeout);
  return result;
}

}  // namespace warmstart
