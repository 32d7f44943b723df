#include "common/fd_passing.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace warmstart {

int SendWithFds(int socket, absl::string_view bytes, absl::Span<const int> fds,
                int flags) {
  iovec data{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr header{};
  header.msg_iov = &data;
  header.msg_iovlen = 1;
  // std::vector's storage comes from operator new, aligned for cmsghdr.
  std::vector<char> control;
  if (!fds.empty()) {
    const size_t fd_bytes = sizeof(int) * fds.size();
    control.resize(CMSG_SPACE(fd_bytes));
    header.msg_control = control.data();
    header.msg_controllen = control.size();
    cmsghdr* rights = CMSG_FIRSTHDR(&header);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(fd_bytes);
    std::memcpy(CMSG_DATA(rights), fds.data(), fd_bytes);
  }
  while (true) {
    if (::sendmsg(socket, &header, MSG_NOSIGNAL | flags) >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

int ReceiveWithFds(int socket, absl::Span<char> buffer, size_t max_fds,
                   int flags, ReceivedDatagram* received) {
  *received = ReceivedDatagram();
  std::vector<char> control(CMSG_SPACE(sizeof(int) * max_fds));
  iovec data{buffer.data(), buffer.size()};
  msghdr header{};
  header.msg_iov = &data;
  header.msg_iovlen = 1;
  header.msg_control = control.data();
  header.msg_controllen = control.size();
  ssize_t n;
  do {
    n = ::recvmsg(socket, &header, MSG_CMSG_CLOEXEC | flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  for (cmsghdr* rights = CMSG_FIRSTHDR(&header); rights != nullptr;
       rights = CMSG_NXTHDR(&header, rights)) {
    if (rights->cmsg_level != SOL_SOCKET || rights->cmsg_type != SCM_RIGHTS) {
      continue;
    }
    const size_t count = (rights->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* bytes = CMSG_DATA(rights);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, bytes + i * sizeof(int), sizeof(int));
      received->fds.emplace_back(fd);
    }
  }
  received->size = static_cast<size_t>(n);
  received->truncated = (header.msg_flags & MSG_TRUNC) != 0;
  received->fds_truncated = (header.msg_flags & MSG_CTRUNC) != 0;
  return 0;
}

}  // namespace warmstart
