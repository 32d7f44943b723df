// A move-only owner of a file descriptor, local to the client (the client
// may not depend on daemon code).
#ifndef WARMSTART_CLIENT_UNIQUE_FD_H_
#define WARMSTART_CLIENT_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace warmstart {
namespace client {
namespace internal {

// Owns one descriptor and closes it when destroyed. -1 means none.
// Thread safety: none; one owner at a time.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  // Gives up ownership without closing.
  int Release() { return std::exchange(fd_, -1); }

  // Closes the current descriptor (if any) and owns `fd` instead.
  void Reset(int fd = -1) {
    // close() errors are ignored: the descriptor is gone either way and
    // nothing here was written through it.
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace internal
}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_UNIQUE_FD_H_
