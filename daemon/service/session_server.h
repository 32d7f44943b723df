// SessionServer: the handle socket, where clients open sessions and receive
// file descriptors.
//
// gRPC 1.51 tells a handler neither who called nor when the caller's
// connection closes, so a client first connects here: a SOCK_SEQPACKET unix
// socket. The server records the peer (SO_PEERCRED), sends a
// v1::HandleMessage `hello` with a new session id, and watches the socket:
// when it closes (the client exited or died) `on_close` runs, which
// releases the session's leases. Descriptors for a lease are sent as
// SCM_RIGHTS with a HandleMessage `fds`.
//
// Clients send nothing on the socket; whatever they send is discarded.
//
// Thread safety: thread-safe. One thread accepts and watches every session;
// `on_close` runs on it.
#ifndef WARMSTART_DAEMON_SERVICE_SESSION_SERVER_H_
#define WARMSTART_DAEMON_SERVICE_SESSION_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/scoped_fd.h"
#include "daemon/base/metrics.h"

namespace warmstart {

// Who opened a session.
struct SessionPeer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// The process at the other end of the connected unix socket `fd`, as the
// kernel recorded it at connect (SO_PEERCRED). Errors: getsockopt's errno
// status.
absl::StatusOr<SessionPeer> PeerOf(int fd);

// Sessions open at once at most, whatever the descriptor limit allows.
inline constexpr size_t kMaxSessions = 4096;

// How many sessions may be open at once: in all (each holds a descriptor
// in the daemon, so the server derives this from its descriptor limit), by
// one process and by one user, so that neither a runaway process nor one
// user can take every session and lock the others out. A connection over a
// limit gets a HandleMessage `refused` naming the limit, and is closed.
struct SessionLimits {
  size_t max_sessions = kMaxSessions;
  size_t max_per_process = 128;
  size_t max_per_uid = kMaxSessions * 3 / 4;
  // Descriptor bundles a session's client may leave unread on its handle
  // socket. Unread SCM_RIGHTS descriptors are charged to the daemon's user
  // (an unprivileged daemon's sends fail with ETOOMANYREFS for every client
  // once they pass its RLIMIT_NOFILE), so the server derives this from the
  // descriptor limit too. A session over it is closed with a logged reason.
  size_t max_unread_bundles = 16;
};

class SessionServer {
 public:
  // Listens on `path` (which PrepareSocketPath has made ready) and starts
  // the session thread. `on_close(session_id)` runs once per session when
  // its socket closes, not for sessions still open at destruction. Open
  // sessions, refusals and sessions closed for unread bundles are counted
  // in `metrics` (not owned; it must outlive the server; null: in a Metrics
  // of the server's own, which nobody exports).
  static absl::StatusOr<std::unique_ptr<SessionServer>> Start(
      const std::string& path, std::function<void(const std::string&)> on_close,
      SessionLimits limits = SessionLimits(), Metrics* metrics = nullptr);

  // Stops the thread, closes every session and removes the socket file.
  ~SessionServer();
  SessionServer(const SessionServer&) = delete;
  SessionServer& operator=(const SessionServer&) = delete;

  // The peer of an open session; NotFound (Unauthenticated at the gRPC
  // layer) for an unknown or closed one.
  absl::StatusOr<SessionPeer> Find(const std::string& session_id) const;

  // A fresh, non-zero id for a descriptor bundle.
  uint64_t NextTransferId() { return next_transfer_id_.fetch_add(1); }

  // Sends `fds` (not given away: the kernel duplicates them into the peer)
  // as bundle `transfer_id` of lease `lease_id` on the session's socket.
  // Fails with Unavailable when the session is gone or its peer stopped
  // reading; with ResourceExhausted, naming the limit, when its client left
  // max_unread_bundles bundles unread: the session is then shut down (its
  // leases are released when the session thread sees it close).
  absl::Status SendFds(const std::string& session_id, uint64_t transfer_id,
                       const std::string& lease_id,
                       const std::vector<int>& fds);

  size_t session_count() const;
  // Every open session's id and peer.
  std::map<std::string, SessionPeer> Peers() const;

 private:
  struct Session {
    ScopedFd socket;
    SessionPeer peer;
    // Bundles sent since the socket's send queue was last seen empty.
    size_t unread_bundles = 0;
  };

  SessionServer(ScopedFd listener, ScopedFd stop_event, std::string path,
                std::function<void(const std::string&)> on_close,
                SessionLimits limits, Metrics* metrics);
  void Run();
  void Accept();
  // Closes the session on `fd`; returns its id ("" if unknown).
  std::string CloseSession(int fd);
  // Why a session for `peer` would exceed a limit; empty when it fits.
  std::string OverLimitLocked(const SessionPeer& peer) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const ScopedFd listener_;
  const ScopedFd stop_event_;
  const std::string path_;
  const std::function<void(const std::string&)> on_close_;
  const SessionLimits limits_;
  // Made when no Metrics was given; before the pointers into it.
  std::unique_ptr<Metrics> unexported_metrics_;
  Counter* const refused_;
  Counter* const closed_unread_;
  Gauge* const open_sessions_;
  std::atomic<uint64_t> next_transfer_id_{1};

  mutable absl::Mutex mutex_;
  std::map<std::string, Session> sessions_ ABSL_GUARDED_BY(mutex_);
  std::map<int, std::string> ids_by_fd_ ABSL_GUARDED_BY(mutex_);
  std::map<pid_t, size_t> per_process_ ABSL_GUARDED_BY(mutex_);
  std::map<uid_t, size_t> per_uid_ ABSL_GUARDED_BY(mutex_);

  std::thread thread_;  // Last: starts once everything above exists.
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVICE_SESSION_SERVER_H_
