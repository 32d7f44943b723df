// Passing descriptors over a unix socket (SCM_RIGHTS): the one sender and
// receiver that the daemon's handle socket, the client's session and the
// fake daemon of the tests share.
//
// Plain functions over a caller's socket; thread-compatible (two threads
// must not receive on one socket at once). Errors come back as the errno of
// sendmsg/recvmsg, because each caller maps them its own way (EAGAIN is a
// deadline for the client, a refusal for the daemon).
#ifndef WARMSTART_COMMON_FD_PASSING_H_
#define WARMSTART_COMMON_FD_PASSING_H_

#include <cstddef>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/scoped_fd.h"

namespace warmstart {

// The most descriptors one SCM_RIGHTS message can carry (the kernel's
// SCM_MAX_FD).
inline constexpr size_t kMaxFdsPerMessage = 253;

// Sends one datagram holding `bytes` with `fds` attached (none when empty)
// on `socket`, retrying on EINTR. `flags` are added to MSG_NOSIGNAL (e.g.
// MSG_DONTWAIT). The descriptors stay the caller's: the receiver gets
// duplicates. Returns 0, or the errno of sendmsg.
// REQUIRES: fds.size() <= kMaxFdsPerMessage.
int SendWithFds(int socket, absl::string_view bytes, absl::Span<const int> fds,
                int flags = 0);

// One datagram as ReceiveWithFds read it.
struct ReceivedDatagram {
  // Bytes written to the caller's buffer; 0 at the end of the stream.
  size_t size = 0;
  // The datagram was longer than the buffer (MSG_TRUNC).
  bool truncated = false;
  // Every descriptor that arrived, owned here (close-on-exec), so that no
  // error path of the caller can leak one.
  std::vector<ScopedFd> fds;
  // More descriptors were sent than `max_fds` allowed (MSG_CTRUNC); the
  // kernel closed the rest.
  bool fds_truncated = false;
};

// Receives one datagram from `socket` into `buffer`, with at most `max_fds`
// descriptors, retrying on EINTR. `flags` are added to MSG_CMSG_CLOEXEC.
// Returns 0 with `*received` filled, or the errno of recvmsg (then
// `*received` is left empty).
// REQUIRES: max_fds <= kMaxFdsPerMessage.
int ReceiveWithFds(int socket, absl::Span<char> buffer, size_t max_fds,
                   int flags, ReceivedDatagram* received);

}  // namespace warmstart

#endif  // WARMSTART_COMMON_FD_PASSING_H_
