#include "daemon/service/session_server.h"

#include <linux/sockios.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/fd_passing.h"
#include "common/status_macros.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/registry/random_id.h"
#include "daemon/service/unix_socket.h"
#include "proto/warmstart.pb.h"

namespace warmstart {
namespace {

// Descriptors in one bundle at most: one per device of a model.
constexpr size_t kMaxFdsPerBundle = 64;

// Sends one datagram holding `message` and, when given, `fds`.
absl::Status SendMessage(int socket, const v1::HandleMessage& message,
                         const std::vector<int>& fds) {
  // Non-blocking: a peer that stopped reading fails its own acquire
  // instead of stalling a gRPC thread.
  const int error =
      SendWithFds(socket, message.SerializeAsString(), fds, MSG_DONTWAIT);
  if (error != 0) return ErrnoToStatus(error, "handle socket sendmsg");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SessionServer>> SessionServer::Start(
    const std::string& path, std::function<void(const std::string&)> on_close,
    SessionLimits limits, Metrics* metrics) {
  WS_ASSIGN_OR_RETURN(
      ScopedFd listener,
      ListenUnixSocket(path, SOCK_SEQPACKET, 128, "handle socket"));
  ScopedFd stop_event(::eventfd(0, EFD_CLOEXEC));
  if (!stop_event.valid()) return ErrnoToStatus(errno, "eventfd");
  return std::unique_ptr<SessionServer>(
      new SessionServer(std::move(listener), std::move(stop_event), path,
                        std::move(on_close), limits, metrics));
}

SessionServer::SessionServer(ScopedFd listener, ScopedFd stop_event,
                             std::string path,
                             std::function<void(const std::string&)> on_close,
                             SessionLimits limits, Metrics* metrics)
    : listener_(std::move(listener)),
      stop_event_(std::move(stop_event)),
      path_(std::move(path)),
      on_close_(std::move(on_close)),
      limits_(limits),
      refused_(GivenOrUnexported(metrics, unexported_metrics_)
                   .GetCounter("warmstart_sessions_refused_total",
                               "Handle socket connections refused at a "
                               "session limit")),
      closed_unread_(
          GivenOrUnexported(metrics, unexported_metrics_)
              .GetCounter("warmstart_sessions_closed_unread_total",
                          "Sessions closed because their client left "
                          "descriptor bundles unread")),
      open_sessions_(GivenOrUnexported(metrics, unexported_metrics_)
                         .GetGauge("warmstart_sessions",
                                   "Client sessions open on the handle "
                                   "socket")),
      thread_([this] { Run(); }) {}

SessionServer::~SessionServer() {
  const uint64_t one = 1;
  (void)!::write(stop_event_.get(), &one, sizeof(one));
  thread_.join();
  absl::MutexLock lock(&mutex_);
  sessions_.clear();
  ids_by_fd_.clear();
  per_process_.clear();
  per_uid_.clear();
  open_sessions_->Set(0);
  ::unlink(path_.c_str());
}

void SessionServer::Run() {
  auto log = Logger("sessions");
  std::vector<pollfd> polled;
  while (true) {
    polled.clear();
    polled.push_back({stop_event_.get(), POLLIN, 0});
    polled.push_back({listener_.get(), POLLIN, 0});
    {
      absl::MutexLock lock(&mutex_);
      for (const auto& [fd, id] : ids_by_fd_) {
        polled.push_back({fd, POLLIN, 0});
      }
    }
    if (::poll(polled.data(), polled.size(), -1) < 0) {
      // Never give up: without this thread no closed session would release
      // its leases. EINTR retries at once; ENOMEM after a pause.
      if (errno != EINTR) {
        log->error("poll on the handle socket: {}", std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      continue;
    }
    if (polled[0].revents != 0) return;
    if (polled[1].revents != 0) Accept();
    for (size_t i = 2; i < polled.size(); ++i) {
      if (polled[i].revents == 0) continue;
      char discard[256];
      const ssize_t n =
          ::recv(polled[i].fd, discard, sizeof(discard), MSG_DONTWAIT);
      if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) continue;
      const std::string id = CloseSession(polled[i].fd);
      if (!id.empty()) on_close_(id);
    }
  }
}

absl::StatusOr<SessionPeer> PeerOf(int fd) {
  ucred credentials{};
  socklen_t length = sizeof(credentials);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    return ErrnoToStatus(errno, "SO_PEERCRED");
  }
  return SessionPeer{credentials.pid, credentials.uid, credentials.gid};
}

void SessionServer::Accept() {
  auto log = Logger("sessions");
  ScopedFd socket(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!socket.valid()) {
    if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) {
      // The connection stays queued and poll would report it again at once:
      // pause instead of spinning until descriptors are freed.
      log->warn("accept on {}: {}; retrying in 100 ms", path_,
                std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
      log->warn("accept on {}: {}", path_, std::strerror(errno));
    }
    return;
  }
  absl::StatusOr<SessionPeer> peer_or = PeerOf(socket.get());
  if (!peer_or.ok()) {
    log->warn("session on {}: {}", path_, peer_or.status().message());
    return;
  }
  const SessionPeer peer = *peer_or;
  std::string over;
  {
    absl::MutexLock lock(&mutex_);
    over = OverLimitLocked(peer);
  }
  if (!over.empty()) {
    log->warn("refusing a session from pid {} uid {}: {}", peer.pid, peer.uid,
              over);
    refused_->Add();
    // The client learns which limit it hit instead of a bare close (which
    // reads as "the daemon restarted"). Best effort: the socket is new and
    // empty, so the datagram fits unless the peer already went away.
    v1::HandleMessage refused;
    refused.mutable_refused()->set_reason(over);
    (void)SendMessage(socket.get(), refused, {});
    return;
  }
  // Registered before the hello goes out: a client may call with its
  // session id the moment it reads it.
  const std::string id = RandomId();
  const int fd = socket.get();
  {
    absl::MutexLock lock(&mutex_);
    ids_by_fd_[fd] = id;
    sessions_[id] = Session{std::move(socket), peer};
    ++per_process_[peer.pid];
    ++per_uid_[peer.uid];
    open_sessions_->Set(static_cast<int64_t>(sessions_.size()));
  }
  v1::HandleMessage hello;
  hello.mutable_hello()->set_session_id(id);
  absl::Status sent = SendMessage(fd, hello, {});
  if (!sent.ok()) {
    log->warn("session for pid {}: {}", peer.pid, sent.message());
    CloseSession(fd);
    return;
  }
  log->debug("session {} opened by pid {} uid {} gid {}", id, peer.pid,
             peer.uid, peer.gid);
}

std::string SessionServer::CloseSession(int fd) {
  absl::MutexLock lock(&mutex_);
  auto it = ids_by_fd_.find(fd);
  if (it == ids_by_fd_.end()) return "";
  std::string id = std::move(it->second);
  ids_by_fd_.erase(it);
  auto session = sessions_.find(id);
  const SessionPeer peer = session->second.peer;
  Logger("sessions")->debug("session {} of pid {} closed", id, peer.pid);
  if (--per_process_[peer.pid] == 0) per_process_.erase(peer.pid);
  if (--per_uid_[peer.uid] == 0) per_uid_.erase(peer.uid);
  sessions_.erase(session);
  open_sessions_->Set(static_cast<int64_t>(sessions_.size()));
  return id;
}

std::string SessionServer::OverLimitLocked(const SessionPeer& peer) const {
  if (sessions_.size() >= limits_.max_sessions) {
    return absl::StrCat(
        sessions_.size(), " sessions are open, the most the daemon allows (",
        limits_.max_sessions, ", derived from its descriptor limit)");
  }
  auto process = per_process_.find(peer.pid);
  if (process != per_process_.end() &&
      process->second >= limits_.max_per_process) {
    return absl::StrCat("process ", peer.pid, " holds ", process->second,
                        " sessions, the most one process may hold (",
                        limits_.max_per_process, ")");
  }
  auto user = per_uid_.find(peer.uid);
  if (user != per_uid_.end() && user->second >= limits_.max_per_uid) {
    return absl::StrCat("uid ", peer.uid, " holds ", user->second,
                        " sessions, the most one user may hold (",
                        limits_.max_per_uid, ")");
  }
  return "";
}

absl::StatusOr<SessionPeer> SessionServer::Find(
    const std::string& session_id) const {
  absl::MutexLock lock(&mutex_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    return absl::NotFoundError("unknown or closed session");
  }
  return it->second.peer;
}

absl::Status SessionServer::SendFds(const std::string& session_id,
                                    uint64_t transfer_id,
                                    const std::string& lease_id,
                                    const std::vector<int>& fds) {
  if (fds.size() > kMaxFdsPerBundle) {
    return absl::InternalError(absl::StrCat(fds.size(),
                                            " descriptors in one bundle; at "
                                            "most ",
                                            kMaxFdsPerBundle));
  }
  v1::HandleMessage message;
  message.mutable_fds()->set_transfer_id(transfer_id);
  message.mutable_fds()->set_count(static_cast<uint32_t>(fds.size()));
  message.mutable_fds()->set_lease_id(lease_id);
  // Held while sending so that the session thread cannot close the socket
  // under us.
  absl::MutexLock lock(&mutex_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    return absl::UnavailableError("the session's handle socket is closed");
  }
  Session& session = it->second;
  // What the client has not read yet stays in the socket's queue (charged
  // to the daemon's user, descriptors included): an empty queue means every
  // bundle so far was read.
  int queued = 0;
  if (::ioctl(session.socket.get(), SIOCOUTQ, &queued) == 0 && queued == 0) {
    session.unread_bundles = 0;
  }
  if (session.unread_bundles >= limits_.max_unread_bundles) {
    const std::string reason = absl::StrCat(
        "its client left ", session.unread_bundles,
        " descriptor bundles unread on the handle socket, the most a "
        "session may (",
        limits_.max_unread_bundles, ")");
    Logger("sessions")
        ->warn("closing session {} of pid {} uid {}: {}", session_id,
               session.peer.pid, session.peer.uid, reason);
    closed_unread_->Add();
    // The session thread sees the shutdown as a close and releases the
    // session's leases; the descriptor number stays ours until then.
    ::shutdown(session.socket.get(), SHUT_RDWR);
    return absl::ResourceExhaustedError(
        absl::StrCat("session closed: ", reason));
  }
  absl::Status sent = SendMessage(session.socket.get(), message, fds);
  if (sent.ok()) ++session.unread_bundles;
  if (!sent.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "cannot send descriptors to the client: ", sent.message()));
  }
  return absl::OkStatus();
}

std::map<std::string, SessionPeer> SessionServer::Peers() const {
  std::map<std::string, SessionPeer> peers;
  absl::MutexLock lock(&mutex_);
  for (const auto& [id, session] : sessions_) peers.emplace(id, session.peer);
  return peers;
}

size_t SessionServer::session_count() const {
  absl::MutexLock lock(&mutex_);
  return sessions_.size();
}

}  // namespace warmstart
