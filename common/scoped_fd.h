// ScopedFd: the move-only owner of a POSIX file descriptor.
//
// Thread safety: a ScopedFd is not synchronised; share the descriptor value
// (get()) across threads only while the owner outlives its users.
#ifndef WARMSTART_COMMON_SCOPED_FD_H_
#define WARMSTART_COMMON_SCOPED_FD_H_

namespace warmstart {

class ScopedFd {
 public:
  ScopedFd() = default;
  // Takes ownership of `fd` (-1 means empty).
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() { reset(); }

  ScopedFd(ScopedFd&& other) noexcept : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  // Gives up ownership without closing; returns the descriptor.
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

  // Closes the current descriptor (if any) and takes ownership of `fd`.
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

}  // namespace warmstart

#endif  // WARMSTART_COMMON_SCOPED_FD_H_
