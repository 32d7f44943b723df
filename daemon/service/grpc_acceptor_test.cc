#include "daemon/service/grpc_acceptor.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/scoped_fd.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(ConnectionPeersTest, FindsTheRecordedPeerOfAnOpenConnection) {
  int ends[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
  ScopedFd served(ends[0]), client(ends[1]);
  ConnectionPeers peers;
  peers.Record(served.get(), SessionPeer{1234, 1000, 1000});
  const std::optional<SessionPeer> found =
      peers.Find(absl::StrCat("fd:", served.get()));
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->pid, 1234);
  EXPECT_EQ(found->uid, 1000u);
  EXPECT_FALSE(peers.Find("ipv4:127.0.0.1:5000").has_value());
  EXPECT_EQ(peers.CountOpen(SessionPeer{1234, 1000, 1000}).same_process, 1u);
}

// gRPC closes a connection's descriptor without telling; the number can
// then be reused for another file. Its old peer must not be found there.
TEST(ConnectionPeersTest, AReusedDescriptorIsNotTheOldPeers) {
  int ends[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
  ScopedFd client(ends[1]);
  const int number = ends[0];
  ConnectionPeers peers;
  peers.Record(number, SessionPeer{1234, 1000, 1000});
  ::close(number);
  ScopedFd file(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_EQ(file.get(), number) << "the lowest free number is reused";
  EXPECT_FALSE(peers.Find(absl::StrCat("fd:", number)).has_value());
  EXPECT_EQ(peers.CountOpen(SessionPeer{1234, 1000, 1000}).total, 0u);
}

}  // namespace
}  // namespace warmstart
