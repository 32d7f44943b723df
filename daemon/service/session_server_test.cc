#include "daemon/service/session_server.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/synchronization/notification.h"
#include "daemon/base/scoped_fd.h"
#include "daemon/base/testing/status_matchers.h"
#include "daemon/base/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/warmstart.pb.h"

namespace warmstart {
namespace {

using ::warmstart::testing::ShortTempDir;

ScopedFd ConnectTo(const std::string& path) {
  ScopedFd socket(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  EXPECT_EQ(::connect(socket.get(), reinterpret_cast<sockaddr*>(&address),
                      sizeof(address)),
            0)
      << std::strerror(errno);
  return socket;
}

// Receives one datagram; appends any descriptors it carried to `fds`.
v1::HandleMessage Receive(int socket, std::vector<int>* fds = nullptr) {
  char data[512];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  iovec vector{data, sizeof(data)};
  msghdr header{};
  header.msg_iov = &vector;
  header.msg_iovlen = 1;
  header.msg_control = control;
  header.msg_controllen = sizeof(control);
  const ssize_t n = ::recvmsg(socket, &header, MSG_CMSG_CLOEXEC);
  EXPECT_GT(n, 0) << std::strerror(errno);
  v1::HandleMessage message;
  EXPECT_TRUE(message.ParseFromArray(data, static_cast<int>(n)));
  for (cmsghdr* c = CMSG_FIRSTHDR(&header); c != nullptr;
       c = CMSG_NXTHDR(&header, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (fds != nullptr) fds->push_back(fd);
    }
  }
  return message;
}

TEST(SessionServerTest, OpensSessionsRecordsPeersAndSendsDescriptors) {
  ShortTempDir dir;
  const std::string path = dir.Join("h.sock");
  ASSERT_OK_AND_ASSIGN(auto server,
                       SessionServer::Start(path, [](const std::string&) {}));
  ScopedFd client = ConnectTo(path);
  v1::HandleMessage hello = Receive(client.get());
  ASSERT_TRUE(hello.has_hello());
  const std::string id = hello.hello().session_id();
  EXPECT_EQ(id.size(), 32u);
  ASSERT_OK_AND_ASSIGN(SessionPeer peer, server->Find(id));
  EXPECT_EQ(peer.pid, ::getpid());
  EXPECT_EQ(peer.uid, ::getuid());
  EXPECT_EQ(server->session_count(), 1u);

  ScopedFd memfd(::memfd_create("t", MFD_CLOEXEC));
  ASSERT_EQ(::write(memfd.get(), "weights", 7), 7);
  const uint64_t transfer = server->NextTransferId();
  ASSERT_OK(
      server->SendFds(id, transfer, "lease-1", {memfd.get(), memfd.get()}));
  std::vector<int> fds;
  v1::HandleMessage bundle = Receive(client.get(), &fds);
  ASSERT_TRUE(bundle.has_fds());
  EXPECT_EQ(bundle.fds().transfer_id(), transfer);
  EXPECT_EQ(bundle.fds().count(), 2u);
  EXPECT_EQ(bundle.fds().lease_id(), "lease-1");
  ASSERT_EQ(fds.size(), 2u);
  char read_back[7];
  EXPECT_EQ(::pread(fds[0], read_back, 7, 0), 7);
  EXPECT_EQ(std::string(read_back, 7), "weights");
  for (int fd : fds) ::close(fd);
}

TEST(SessionServerTest, ClosingTheSocketEndsTheSessionPromptly) {
  ShortTempDir dir;
  const std::string path = dir.Join("h.sock");
  absl::Notification closed;
  std::string closed_id;
  ASSERT_OK_AND_ASSIGN(auto server,
                       SessionServer::Start(path, [&](const std::string& id) {
                         closed_id = id;
                         closed.Notify();
                       }));
  ScopedFd client = ConnectTo(path);
  const std::string id = Receive(client.get()).hello().session_id();
  client.reset();
  // The server wakes on the close itself (no polling interval); the
  // deadline only bounds how long the scheduler may take.
  ASSERT_TRUE(closed.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(closed_id, id);
  EXPECT_THAT(server->Find(id), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(server->SendFds(id, 1, "lease-1", {0}),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(server->session_count(), 0u);
}

TEST(SessionServerTest, SessionIdsAreDistinctAndUnknownOnesRefused) {
  ShortTempDir dir;
  const std::string path = dir.Join("h.sock");
  ASSERT_OK_AND_ASSIGN(auto server,
                       SessionServer::Start(path, [](const std::string&) {}));
  ScopedFd a = ConnectTo(path);
  ScopedFd b = ConnectTo(path);
  EXPECT_NE(Receive(a.get()).hello().session_id(),
            Receive(b.get()).hello().session_id());
  EXPECT_THAT(server->Find("0123456789abcdef0123456789abcdef"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(SessionServerTest, DestructionRemovesTheSocketFile) {
  ShortTempDir dir;
  const std::string path = dir.Join("h.sock");
  {
    ASSERT_OK_AND_ASSIGN(auto server,
                         SessionServer::Start(path, [](const std::string&) {}));
    EXPECT_EQ(::access(path.c_str(), F_OK), 0);
  }
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace warmstart
