#include "client/session.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/fd_passing.h"

namespace warmstart {
namespace client {
namespace internal {
namespace {

// HandleMessages are a few dozen bytes; anything near this is not one.
constexpr size_t kMaxMessageBytes = 4096;

std::string ErrnoText(int error) { return std::strerror(error); }

// Milliseconds for poll() until `deadline`: -1 for never, 0 when past.
int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  // Round up so a wait never ends just before the deadline and spins.
  const int64_t ms = absl::ToInt64Milliseconds(left + absl::Milliseconds(1) -
                                               absl::Nanoseconds(1));
  return ms > 60000 ? 60000 : static_cast<int>(ms);
}

}  // namespace

absl::StatusOr<std::shared_ptr<Session>> Session::Open(
    const std::string& handle_path, const std::string& daemon_socket,
    absl::Time deadline) {
  sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  if (handle_path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("handle socket path ", handle_path, " is longer than ",
                     sizeof(address.sun_path) - 1, " bytes"));
  }
  std::memcpy(address.sun_path, handle_path.data(), handle_path.size());
  ScopedFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return absl::InternalError(
        absl::StrCat("socket(AF_UNIX, SOCK_SEQPACKET): ", ErrnoText(errno)));
  }
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address),
                   sizeof(address));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("daemon unavailable at ", daemon_socket,
                     ": cannot connect to its handle socket ", handle_path,
                     ": ", ErrnoText(errno)));
  }
  std::shared_ptr<Session> session(
      new Session(std::move(fd), handle_path, daemon_socket));
  absl::StatusOr<Datagram> hello = session->Receive(deadline);
  if (!hello.ok()) {
    if (hello.status().code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::UnavailableError(absl::StrCat(
          "daemon unavailable at ", daemon_socket,
          ": no session hello on its handle socket ", handle_path));
    }
    return hello.status();
  }
  if (hello->message.has_refused()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the daemon at ", daemon_socket,
        " refused a session: ", hello->message.refused().reason()));
  }
  if (!hello->message.has_hello() ||
      hello->message.hello().session_id().empty()) {
    return absl::DataLossError(
        absl::StrCat("handle socket ", handle_path,
                     ": the first message is not a session hello"));
  }
  session->id_ = hello->message.hello().session_id();
  return session;
}

bool Session::Closed() {
  if (closed_.load(std::memory_order_acquire)) return true;
  pollfd pfd = {fd_.get(), POLLIN | POLLRDHUP, 0};
  int rc;
  do {
    rc = ::poll(&pfd, 1, 0);
  } while (rc < 0 && errno == EINTR);
  // POLLRDHUP/POLLHUP: the daemon closed its end. Queued bundles may still
  // sit before the end of stream, but no lease can be used any more.
  if (rc > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))) {
    closed_.store(true, std::memory_order_release);
  }
  return closed_.load(std::memory_order_acquire);
}

absl::Status Session::ClosedError() const {
  return absl::UnavailableError(absl::StrCat(
      "session ", id_, " with the daemon at ", daemon_socket_,
      " has closed (the daemon restarted or dropped it); its leases ended "
      "with it"));
}

bool Session::DiscardQueued() {
  for (;;) {
    // A stale bundle's descriptors close as `stale` goes out of scope.
    absl::StatusOr<Datagram> stale = Receive(absl::InfinitePast());
    if (stale.ok() && stale->message.has_fds() &&
        !stale->message.fds().lease_id().empty()) {
      orphaned_leases_.push_back(stale->message.fds().lease_id());
    }
    // DataLoss: a malformed datagram, consumed; look at the next one. Any
    // other error ends the loop: DeadlineExceeded means nothing more is
    // queued, Unavailable that the session has closed.
    if (!stale.ok() && stale.status().code() != absl::StatusCode::kDataLoss) {
      break;
    }
  }
  return !Closed();
}

absl::StatusOr<std::vector<ScopedFd>> Session::ReceiveFds(uint64_t transfer_id,
                                                          absl::Time deadline) {
  for (;;) {
    absl::StatusOr<Datagram> datagram = Receive(deadline);
    if (!datagram.ok()) {
      if (datagram.status().code() == absl::StatusCode::kDeadlineExceeded) {
        return absl::DataLossError(
            absl::StrCat("handle socket ", handle_path_, ": descriptor bundle ",
                         transfer_id, " did not arrive"));
      }
      return datagram.status();
    }
    if (!datagram->message.has_fds() ||
        datagram->message.fds().transfer_id() != transfer_id) {
      // Acquires are serialized, so a bundle for another transfer belongs
      // to an acquire that already failed: close it (by dropping it) and
      // have its lease released.
      if (datagram->message.has_fds() &&
          !datagram->message.fds().lease_id().empty()) {
        orphaned_leases_.push_back(datagram->message.fds().lease_id());
      }
      continue;
    }
    if (datagram->fds_truncated) {
      return absl::DataLossError(absl::StrCat(
          "handle socket ", handle_path_, ": descriptor bundle ", transfer_id,
          " was truncated (more than ", kMaxFdsPerMessage,
          " descriptors, or this process is out of descriptors)"));
    }
    if (datagram->fds.size() != datagram->message.fds().count()) {
      return absl::DataLossError(absl::StrCat(
          "handle socket ", handle_path_, ": descriptor bundle ", transfer_id,
          " announced ", datagram->message.fds().count(),
          " descriptors but carried ", datagram->fds.size()));
    }
    return std::move(datagram->fds);
  }
}

absl::StatusOr<Session::Datagram> Session::Receive(absl::Time deadline) {
  if (closed_.load(std::memory_order_acquire)) return ClosedError();
  for (;;) {
    pollfd pfd = {fd_.get(), POLLIN, 0};
    const int rc = ::poll(&pfd, 1, PollTimeoutMs(deadline));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("poll(handle socket): ", ErrnoText(errno)));
    }
    if (rc == 0) {
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError("no message on the handle socket");
      }
      continue;  // poll's timeout is capped; keep waiting.
    }
    // Readable, or hung up: recvmsg tells which (0 at end of stream).
    break;
  }
  char data[kMaxMessageBytes];
  ReceivedDatagram received;
  // MSG_DONTWAIT: poll said readable; never block past the deadline if
  // another reader got there first.
  const int error = ReceiveWithFds(fd_.get(), absl::MakeSpan(data),
                                   kMaxFdsPerMessage, MSG_DONTWAIT, &received);
  if (error == EAGAIN || error == EWOULDBLOCK) {
    return absl::DeadlineExceededError("no message on the handle socket");
  }
  if (error != 0 && error != ECONNRESET) {
    return absl::InternalError(absl::StrCat(
        "recvmsg(handle socket ", handle_path_, "): ", ErrnoText(error)));
  }
  // A reset connection is a closed one.
  const size_t n = error == 0 ? received.size : 0;
  Datagram datagram;
  datagram.fds = std::move(received.fds);
  datagram.fds_truncated = received.fds_truncated;
  if (n == 0) {
    closed_.store(true, std::memory_order_release);
    return ClosedError();
  }
  if (received.truncated ||
      !datagram.message.ParseFromArray(data, static_cast<int>(n))) {
    return absl::DataLossError(absl::StrCat(
        "handle socket ", handle_path_,
        ": a message that is not a HandleMessage (", n, " bytes)"));
  }
  return datagram;
}

}  // namespace internal
}  // namespace client
}  // namespace warmstart
