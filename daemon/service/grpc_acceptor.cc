#include "daemon/service/grpc_acceptor.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/service/unix_socket.h"
#include "grpcpp/server_posix.h"

namespace warmstart {
namespace {

ScopedFd OpenSpare() {
  return ScopedFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

// Descriptors this process has open (entries of /proc/self/fd, less the
// one that lists them).
uint64_t OpenDescriptors() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  uint64_t count = 0;
  while (::readdir(dir) != nullptr) ++count;
  ::closedir(dir);
  // ".", ".." and the directory's own descriptor.
  return count >= 3 ? count - 3 : 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcAcceptor>> GrpcAcceptor::Start(
    const std::string& path, grpc::Server* server,
    std::function<uint64_t()> keep_free, ConnectionPeers* peers,
    ConnectionLimits limits, Metrics* metrics) {
  WS_ASSIGN_OR_RETURN(ScopedFd listener,
                      ListenUnixSocket(path, SOCK_STREAM, SOMAXCONN, "socket"));
  ScopedFd stop_event(::eventfd(0, EFD_CLOEXEC));
  if (!stop_event.valid()) return ErrnoToStatus(errno, "eventfd");
  ScopedFd spare = OpenSpare();
  if (!spare.valid()) return ErrnoToStatus(errno, "open /dev/null");
  return std::unique_ptr<GrpcAcceptor>(new GrpcAcceptor(
      std::move(listener), std::move(stop_event), std::move(spare), server,
      std::move(keep_free), peers, limits, metrics, path));
}

GrpcAcceptor::GrpcAcceptor(ScopedFd listener, ScopedFd stop_event,
                           ScopedFd spare, grpc::Server* server,
                           std::function<uint64_t()> keep_free,
                           ConnectionPeers* peers, ConnectionLimits limits,
                           Metrics* metrics, std::string path)
    : listener_(std::move(listener)),
      stop_event_(std::move(stop_event)),
      spare_(std::move(spare)),
      server_(server),
      keep_free_(std::move(keep_free)),
      peers_(peers),
      limits_(limits),
      metrics_(metrics),
      path_(std::move(path)),
      thread_([this] { Run(); }) {}

GrpcAcceptor::~GrpcAcceptor() {
  const uint64_t one = 1;
  (void)!::write(stop_event_.get(), &one, sizeof(one));
  thread_.join();
}

void GrpcAcceptor::Run() {
  while (true) {
    pollfd polled[2] = {{stop_event_.get(), POLLIN, 0},
                        {listener_.get(), POLLIN, 0}};
    if (::poll(polled, 2, -1) < 0) {
      if (errno != EINTR) {
        Logger("service")->error("poll on {}: {}", path_, std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      continue;
    }
    if (polled[0].revents != 0) return;
    if (polled[1].revents != 0) AcceptOne();
  }
}

bool GrpcAcceptor::DescriptorsRunLow() const {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 ||
      limit.rlim_cur == RLIM_INFINITY) {
    return false;
  }
  return OpenDescriptors() + keep_free_() >= limit.rlim_cur;
}

void GrpcAcceptor::AcceptOne() {
  auto log = Logger("service");
  ScopedFd socket(::accept4(listener_.get(), nullptr, nullptr,
                            SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!socket.valid()) {
    if (errno == EMFILE || errno == ENFILE) {
      // The connection waits in the backlog and the listener stays
      // readable: without a descriptor to accept it into, poll would spin.
      // The spare is given up to accept and close it, then taken back.
      spare_.reset();
      ScopedFd dropped(
          ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      spare_ = OpenSpare();
      CountRefusal();
      log->warn(
          "gRPC connection on {} refused: the daemon is out of "
          "descriptors (RLIMIT_NOFILE)",
          path_);
      if (!spare_.valid()) {
        // Still none: give the holders time to close some.
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
      log->warn("accept on {}: {}", path_, std::strerror(errno));
    }
    return;
  }
  absl::StatusOr<SessionPeer> peer_or = PeerOf(socket.get());
  if (!peer_or.ok()) {
    log->warn("gRPC connection on {}: {}", path_, peer_or.status().message());
    return;
  }
  const SessionPeer peer = *peer_or;
  // The daemon's own listener probe is never refused: clients filling the
  // caps must not make the daemon think its listener is dead and exit.
  if (peer.pid != ::getpid() && !Admit(peer)) return;
  const int fd = socket.release();
  peers_->Record(fd, peer);
  // gRPC owns the descriptor from here and closes it with the connection.
  grpc::AddInsecureChannelFromFd(server_, fd);
}

bool GrpcAcceptor::Admit(const SessionPeer& peer) {
  auto log = Logger("service");
  if (DescriptorsRunLow()) {
    CountRefusal();
    log->warn(
        "gRPC connection on {} refused: too few descriptors are left below "
        "the daemon's RLIMIT_NOFILE; they are kept for loads and sessions",
        path_);
    return false;
  }
  if (const std::string over = OverLimit(peer); !over.empty()) {
    CountRefusal();
    log->warn("gRPC connection on {} from pid {} uid {} refused: {}", path_,
              peer.pid, peer.uid, over);
    return false;
  }
  return true;
}

std::string GrpcAcceptor::OverLimit(const SessionPeer& peer) const {
  const ConnectionPeers::Counts open = peers_->CountOpen(peer);
  if (limits_.max_connections > 0 && open.total >= limits_.max_connections) {
    return absl::StrCat(open.total,
                        " gRPC connections are open, the most the daemon "
                        "accepts (",
                        limits_.max_connections, ")");
  }
  if (limits_.max_per_process > 0 &&
      open.same_process >= limits_.max_per_process) {
    return absl::StrCat("pid ", peer.pid, " holds ", open.same_process,
                        " gRPC connections, the most one process may hold (",
                        limits_.max_per_process,
                        "; client_limits.max_grpc_connections_per_process)");
  }
  if (limits_.max_per_uid > 0 && open.same_uid >= limits_.max_per_uid) {
    return absl::StrCat("uid ", peer.uid, " holds ", open.same_uid,
                        " gRPC connections, the most one user may hold (",
                        limits_.max_per_uid,
                        "; client_limits.max_grpc_connections_per_uid)");
  }
  return "";
}

void GrpcAcceptor::CountRefusal() {
  {
    absl::MutexLock lock(&mutex_);
    ++refused_;
  }
  if (metrics_ != nullptr) {
    metrics_
        ->GetCounter("warmstart_grpc_connections_refused_total",
                     "gRPC connections closed at once because the daemon's "
                     "descriptors ran low")
        ->Add();
  }
}

namespace {

// The inode of the socket open on `fd`; 0 when `fd` is not an open socket.
ino_t SocketInode(int fd) {
  struct stat described {};
  if (::fstat(fd, &described) != 0 || !S_ISSOCK(described.st_mode)) return 0;
  return described.st_ino;
}

}  // namespace

void ConnectionPeers::Record(int fd, const SessionPeer& peer) {
  const ino_t inode = SocketInode(fd);
  absl::MutexLock lock(&mutex_);
  peers_[fd] = Connection{peer, inode};
}

ConnectionPeers::Counts ConnectionPeers::CountOpen(const SessionPeer& peer) {
  Counts counts;
  absl::MutexLock lock(&mutex_);
  for (auto it = peers_.begin(); it != peers_.end();) {
    if (it->second.inode == 0 || SocketInode(it->first) != it->second.inode) {
      it = peers_.erase(it);
      continue;
    }
    ++counts.total;
    if (it->second.peer.pid == peer.pid) ++counts.same_process;
    if (it->second.peer.uid == peer.uid) ++counts.same_uid;
    ++it;
  }
  return counts;
}

std::optional<SessionPeer> ConnectionPeers::Find(
    absl::string_view grpc_peer) const {
  if (!absl::ConsumePrefix(&grpc_peer, "fd:")) return std::nullopt;
  int fd = -1;
  if (!absl::SimpleAtoi(grpc_peer, &fd)) return std::nullopt;
  absl::MutexLock lock(&mutex_);
  auto it = peers_.find(fd);
  if (it == peers_.end()) return std::nullopt;
  // The descriptor may since have been closed and reused for something
  // else (a model file, another listener): not that peer's any more.
  if (SocketInode(fd) != it->second.inode) return std::nullopt;
  return it->second.peer;
}

uint64_t GrpcAcceptor::refused() const {
  absl::MutexLock lock(&mutex_);
  return refused_;
}

}  // namespace warmstart
