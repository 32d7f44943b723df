#include "common/scoped_fd.h"

#include <unistd.h>

namespace warmstart {

void ScopedFd::reset(int fd) {
  if (fd_ >= 0) {
    // Linux releases the descriptor even when close() reports EINTR, so a
    // retry could close a descriptor another thread has just been given.
    ::close(fd_);
  }
  fd_ = fd;
}

}  // namespace warmstart
