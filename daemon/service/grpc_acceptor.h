// GrpcAcceptor: accepts the gRPC unix socket's connections itself and hands
// each to the gRPC server (grpc::AddInsecureChannelFromFd).
//
// Why not gRPC's own listener: when accept4 failed with EMFILE, Debian's
// gRPC 1.51 never re-armed it, and every new client was told "daemon
// unavailable" for good while health still said SERVING. This acceptor
// survives running out of descriptors (it keeps one spare descriptor, and
// on EMFILE closes it, accepts and closes the connection, and opens it
// again), refuses connections that would eat into the descriptors the
// daemon keeps for itself, and records each connection's peer credentials
// (SO_PEERCRED): gRPC names such a connection "fd:N" in
// ServerContext::peer(), which PeerOf maps back to them.
//
// Thread safety: thread-safe. One thread accepts; PeerOf may be called from
// any thread.
#ifndef WARMSTART_DAEMON_SERVICE_GRPC_ACCEPTOR_H_
#define WARMSTART_DAEMON_SERVICE_GRPC_ACCEPTOR_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/scoped_fd.h"
#include "daemon/base/metrics.h"
#include "daemon/service/session_server.h"
#include "grpcpp/server.h"

namespace warmstart {

// The credentials (SO_PEERCRED) of the process on the other end of each
// gRPC connection the acceptor handed to gRPC, by the peer string gRPC
// reports for its calls ("fd:N"). The acceptor records; the service looks
// up, to bind sessions to the process that opened them.
//
// Thread safety: thread-safe.
class ConnectionPeers {
 public:
  // Records the connection on `fd` (which must be open) as `peer`'s.
  void Record(int fd, const SessionPeer& peer);
  // nullopt for a peer string of another kind (a TCP peer, say) or an
  // unknown descriptor.
  std::optional<SessionPeer> Find(absl::string_view grpc_peer) const;

  struct Counts {
    size_t total = 0;
    size_t same_process = 0;
    size_t same_uid = 0;
  };
  // The recorded connections still open (in all, of `peer`'s pid, of its
  // uid); forgets those gRPC has closed.
  Counts CountOpen(const SessionPeer& peer);

 private:
  struct Connection {
    SessionPeer peer;
    // The socket's inode: gRPC closes descriptors without telling, and the
    // number may be reused by another file; a different inode (or none)
    // under it means the connection is gone.
    ino_t inode = 0;
  };
  mutable absl::Mutex mutex_;
  // Descriptor number -> peer of the connection most recently accepted on
  // it. A number is reused only after gRPC closed the connection, so the
  // entry of a live connection is always its own.
  std::map<int, Connection> peers_ ABSL_GUARDED_BY(mutex_);
};

// How many unix socket connections gRPC may hold at once: in all, from one
// process, from one user (by SO_PEERCRED), so that one runaway process or
// user cannot take every connection. Zero: no cap of that kind.
struct ConnectionLimits {
  size_t max_connections = 0;
  size_t max_per_process = 0;
  size_t max_per_uid = 0;
};

class GrpcAcceptor {
 public:
  // Listens on `path` (which PrepareSocketPath has made ready) and starts
  // accepting into `server`, which must outlive the acceptor (destroy the
  // acceptor before shutting the server down). A connection is refused
  // (closed at once, logged and counted) while fewer than `keep_free()`
  // descriptors below the soft RLIMIT_NOFILE would remain; `keep_free` is
  // called on the accepting thread.
  // Each connection's peer is recorded in `peers` (not owned; outlives the
  // acceptor). A connection past one of `limits` is closed at once with a
  // logged reason naming the limit and its value (a client sees the daemon
  // as unavailable). Refusals for want of descriptors are counted in
  // `metrics` (not owned; it must outlive the acceptor; null: not counted).
  static absl::StatusOr<std::unique_ptr<GrpcAcceptor>> Start(
      const std::string& path, grpc::Server* server,
      std::function<uint64_t()> keep_free, ConnectionPeers* peers,
      ConnectionLimits limits = ConnectionLimits(), Metrics* metrics = nullptr);

  // Stops accepting and closes the listening socket (the file stays; the
  // server removes it). Connections already handed to gRPC stay open.
  ~GrpcAcceptor();
  GrpcAcceptor(const GrpcAcceptor&) = delete;
  GrpcAcceptor& operator=(const GrpcAcceptor&) = delete;

  // Connections refused for want of descriptors since the start.
  uint64_t refused() const;

 private:
  GrpcAcceptor(ScopedFd listener, ScopedFd stop_event, ScopedFd spare,
               grpc::Server* server, std::function<uint64_t()> keep_free,
               ConnectionPeers* peers, ConnectionLimits limits,
               Metrics* metrics, std::string path);
  void Run();
  void AcceptOne();
  bool DescriptorsRunLow() const;
  // Why one more connection from `peer` would pass a limit; empty if not.
  std::string OverLimit(const SessionPeer& peer) const;
  // Whether a connection from `peer` may be served: false (counted and
  // logged with the reason) when descriptors run low or a cap is reached.
  bool Admit(const SessionPeer& peer);
  void CountRefusal();

  const ScopedFd listener_;
  const ScopedFd stop_event_;
  ScopedFd spare_;  // Only the accept thread touches it.
  grpc::Server* const server_;
  const std::function<uint64_t()> keep_free_;
  ConnectionPeers* const peers_;
  const ConnectionLimits limits_;
  Metrics* const metrics_;  // Null: refusals not counted.
  const std::string path_;

  mutable absl::Mutex mutex_;
  uint64_t refused_ ABSL_GUARDED_BY(mutex_) = 0;

  std::thread thread_;  // Last: starts once everything above exists.
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVICE_GRPC_ACCEPTOR_H_
