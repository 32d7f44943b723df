#include "common/fd_passing.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "common/scoped_fd.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

struct SocketPair {
  ScopedFd a;
  ScopedFd b;
};

SocketPair MakePair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
  return {ScopedFd(fds[0]), ScopedFd(fds[1])};
}

// The inode behind `fd`, to tell that a received descriptor is the sent one.
ino_t InodeOf(int fd) {
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  return st.st_ino;
}

TEST(FdPassingTest, CarriesBytesAndDescriptors) {
  SocketPair pair = MakePair();
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  ScopedFd read_end(pipe_fds[0]);
  ScopedFd write_end(pipe_fds[1]);
  ASSERT_EQ(
      SendWithFds(pair.a.get(), "hello", {read_end.get(), write_end.get()}), 0);
  char buffer[16];
  ReceivedDatagram received;
  ASSERT_EQ(
      ReceiveWithFds(pair.b.get(), absl::MakeSpan(buffer), 4, 0, &received), 0);
  EXPECT_EQ(std::string(buffer, received.size), "hello");
  EXPECT_FALSE(received.truncated);
  EXPECT_FALSE(received.fds_truncated);
  ASSERT_EQ(received.fds.size(), 2u);
  EXPECT_EQ(InodeOf(received.fds[0].get()), InodeOf(read_end.get()));
  EXPECT_EQ(InodeOf(received.fds[1].get()), InodeOf(write_end.get()));
  EXPECT_EQ(::fcntl(received.fds[0].get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
}

TEST(FdPassingTest, SaysWhenBytesDidNotFit) {
  SocketPair pair = MakePair();
  ASSERT_EQ(SendWithFds(pair.a.get(), "longer than four", {}), 0);
  char buffer[4];
  ReceivedDatagram received;
  ASSERT_EQ(
      ReceiveWithFds(pair.b.get(), absl::MakeSpan(buffer), 1, 0, &received), 0);
  EXPECT_TRUE(received.truncated);
}

TEST(FdPassingTest, SaysWhenDescriptorsDidNotFit) {
  SocketPair pair = MakePair();
  std::vector<ScopedFd> sent;
  std::vector<int> numbers;
  for (int i = 0; i < 8; ++i) {
    sent.emplace_back(::dup(0));
    numbers.push_back(sent.back().get());
  }
  ASSERT_EQ(SendWithFds(pair.a.get(), "x", numbers), 0);
  char buffer[4];
  ReceivedDatagram received;
  ASSERT_EQ(
      ReceiveWithFds(pair.b.get(), absl::MakeSpan(buffer), 1, 0, &received), 0);
  EXPECT_FALSE(received.truncated);
  EXPECT_TRUE(received.fds_truncated);
  EXPECT_LT(received.fds.size(), numbers.size());
}

TEST(FdPassingTest, ReportsErrnoAndEndOfStream) {
  SocketPair pair = MakePair();
  char buffer[4];
  ReceivedDatagram received;
  EXPECT_EQ(ReceiveWithFds(pair.b.get(), absl::MakeSpan(buffer), 1,
                           MSG_DONTWAIT, &received),
            EAGAIN);
  pair.a.reset();
  ASSERT_EQ(
      ReceiveWithFds(pair.b.get(), absl::MakeSpan(buffer), 1, 0, &received), 0);
  EXPECT_EQ(received.size, 0u);
  EXPECT_EQ(SendWithFds(pair.b.get(), "x", {}), EPIPE);
}

}  // namespace
}  // namespace warmstart
