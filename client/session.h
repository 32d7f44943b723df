// A session with warmstartd: the client's end of the handle socket.
//
// Internal to the client library. The daemon ties leases to the session:
// while this socket stays open the leases taken under its id stay valid;
// when it closes (this process exits, or the last owner drops the Session)
// the daemon releases them. Descriptors for a lease's memory arrive on it as
// SCM_RIGHTS, one bundle per AcquireModel, sent before the reply.
#ifndef WARMSTART_CLIENT_SESSION_H_
#define WARMSTART_CLIENT_SESSION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/protocol.h"
#include "common/scoped_fd.h"
#include "proto/warmstart.pb.h"

namespace warmstart {
namespace client {
namespace internal {

// Owns the connected SOCK_SEQPACKET socket. Shared (std::shared_ptr) by the
// client and every ModelMapping acquired under it, so the session outlives
// the Client while mappings use it.
//
// Thread safety: id(), handle_path() and Closed() may be called from any
// thread. DiscardQueued() and ReceiveFds() read the socket and must not run
// concurrently with each other (the client serializes acquires).
class Session {
 public:
  // Connects to `handle_path` and reads the daemon's hello, waiting until
  // `deadline`. `daemon_socket` (the gRPC socket) only names the daemon in
  // messages. Unavailable when the socket cannot be reached, closes before
  // the hello or sends none by `deadline`; DataLoss when the first message
  // is not a hello; InvalidArgument when the path does not fit sun_path.
  static absl::StatusOr<std::shared_ptr<Session>> Open(
      const std::string& handle_path, const std::string& daemon_socket,
      absl::Time deadline);

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // 32 hex digits, from the hello.
  const std::string& id() const { return id_; }
  const std::string& handle_path() const { return handle_path_; }

  // Whether the daemon's end is known to be closed (the daemon restarted or
  // dropped the session). Never blocks; once true stays true.
  bool Closed();

  // Unavailable, saying that this session has closed and its leases ended
  // with it.
  absl::Status ClosedError() const;

  // Closes the descriptors of every bundle already queued on the socket:
  // called before an AcquireModel, when no transfer is outstanding, so they
  // are leftovers of acquires that failed after the daemon sent them.
  // Returns false when the session turned out to be closed.
  bool DiscardQueued();

  // Reads bundles until the one numbered `transfer_id` and returns its
  // descriptors (close-on-exec). Other bundles met on the way are stale
  // (their acquire failed) and are closed. Unavailable when the session
  // closes first; DataLoss when the bundle does not arrive by `deadline`
  // or its descriptors do not match its announced count (they are closed).
  absl::StatusOr<std::vector<ScopedFd>> ReceiveFds(uint64_t transfer_id,
                                                   absl::Time deadline);

  // The leases of the stale bundles dropped so far (their acquires gave up
  // before the reply came, so nobody else will release them); empties the
  // list. The caller releases them.
  std::vector<std::string> TakeOrphanedLeases() {
    return std::exchange(orphaned_leases_, {});
  }

 private:
  struct Datagram {
    v1::HandleMessage message;
    std::vector<ScopedFd> fds;
    // The kernel dropped descriptors (MSG_CTRUNC): too many, or the
    // process is out of descriptors.
    bool fds_truncated = false;
  };

  Session(ScopedFd fd, std::string handle_path, std::string daemon_socket)
      : fd_(std::move(fd)),
        handle_path_(std::move(handle_path)),
        daemon_socket_(std::move(daemon_socket)) {}

  // Receives one datagram, waiting until `deadline` (DeadlineExceeded).
  // Unavailable (and Closed() from then on) at end of stream.
  absl::StatusOr<Datagram> Receive(absl::Time deadline);

  ScopedFd fd_;
  std::string id_;
  const std::string handle_path_;
  const std::string daemon_socket_;
  std::atomic<bool> closed_{false};
  // Touched only by the thread that reads the socket (see above).
  std::vector<std::string> orphaned_leases_;
};

}  // namespace internal
}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_SESSION_H_
