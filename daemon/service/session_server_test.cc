#include "daemon/service/session_server.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/fd_passing.h"
#include "common/scoped_fd.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
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
  ReceivedDatagram received;
  EXPECT_EQ(ReceiveWithFds(socket, absl::MakeSpan(data), 8, 0, &received), 0);
  EXPECT_GT(received.size, 0u);
  v1::HandleMessage message;
  EXPECT_TRUE(message.ParseFromArray(data, static_cast<int>(received.size)));
  for (ScopedFd& fd : received.fds) {
    if (fds != nullptr) fds->push_back(fd.release());
  }
  return message;
}

TEST(PeerOfTest, NamesTheProcessAtTheOtherEnd) {
  int ends[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
  ScopedFd a(ends[0]), b(ends[1]);
  ASSERT_OK_AND_ASSIGN(SessionPeer peer, PeerOf(a.get()));
  EXPECT_EQ(peer.pid, ::getpid());
  EXPECT_EQ(peer.uid, ::getuid());
  EXPECT_EQ(peer.gid, ::getgid());
}

TEST(PeerOfTest, ANonSocketIsAnErrorNamingTheOption) {
  int ends[2];
  ASSERT_EQ(::pipe2(ends, O_CLOEXEC), 0);
  ScopedFd read_end(ends[0]), write_end(ends[1]);
  absl::StatusOr<SessionPeer> peer = PeerOf(read_end.get());
  ASSERT_FALSE(peer.ok());
  EXPECT_THAT(peer.status().message(), ::testing::HasSubstr("SO_PEERCRED"));
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

TEST(SessionServerTest, RefusesAProcessOverItsLimitNamingIt) {
  ShortTempDir dir;
  const std::string path = dir.Join("h.sock");
  SessionLimits limits;
  limits.max_sessions = 100;
  limits.max_per_process = 3;
  limits.max_per_uid = 100;
  Metrics metrics;  // Outlives the server, which counts into it.
  ASSERT_OK_AND_ASSIGN(auto server,
                       SessionServer::Start(
                           path, [](const std::string&) {}, limits, &metrics));
  std::vector<ScopedFd> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(ConnectTo(path));
    ASSERT_TRUE(Receive(held.back().get()).has_hello());
  }
  ScopedFd over = ConnectTo(path);
  v1::HandleMessage refused = Receive(over.get());
  ASSERT_TRUE(refused.has_refused());
  EXPECT_THAT(refused.refused().reason(),
              ::testing::HasSubstr(absl::StrCat(
                  "process ", ::getpid(),
                  " holds 3 sessions, the most one process may hold (3)")));
  EXPECT_EQ(server->session_count(), 3u);
  // Counted in the Metrics the server was given (the refusal and the open
  // sessions are recorded before the client hears of them).
  EXPECT_EQ(metrics.Snapshot()["warmstart_sessions_refused_total"], 1);
  EXPECT_EQ(metrics.Snapshot()["warmstart_sessions"], 3);

  // Another process still gets one: a forked child, which reports.
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ScopedFd mine = ConnectTo(path);
    const bool hello = Receive(mine.get()).has_hello();
    const char answer = hello ? 'h' : 'r';
    (void)!::write(pipe_fds[1], &answer, 1);
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  char answer = 0;
  EXPECT_EQ(::read(pipe_fds[0], &answer, 1), 1);
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_EQ(answer, 'h');

  // A closed session frees its process's slot.
  held.pop_back();
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (server->session_count() > 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ScopedFd again = ConnectTo(path);
  EXPECT_TRUE(Receive(again.get()).has_hello());
}

TEST(SessionServerTest, RefusesAtTheTotalAndPerUserLimits) {
  ShortTempDir dir;
  const std::string path = dir.Join("h.sock");
  SessionLimits limits;
  limits.max_sessions = 2;
  limits.max_per_process = 10;
  limits.max_per_uid = 10;
  ASSERT_OK_AND_ASSIGN(auto server,
                       SessionServer::Start(
                           path, [](const std::string&) {}, limits));
  ScopedFd a = ConnectTo(path);
  ScopedFd b = ConnectTo(path);
  ASSERT_TRUE(Receive(a.get()).has_hello());
  ASSERT_TRUE(Receive(b.get()).has_hello());
  ScopedFd c = ConnectTo(path);
  v1::HandleMessage refused = Receive(c.get());
  ASSERT_TRUE(refused.has_refused());
  EXPECT_THAT(refused.refused().reason(),
              ::testing::HasSubstr("the most the daemon allows (2"));

  ShortTempDir dir2;
  limits.max_sessions = 10;
  limits.max_per_uid = 1;
  ASSERT_OK_AND_ASSIGN(auto per_user, SessionServer::Start(
                                          dir2.Join("h.sock"),
                                          [](const std::string&) {}, limits));
  ScopedFd d = ConnectTo(dir2.Join("h.sock"));
  ASSERT_TRUE(Receive(d.get()).has_hello());
  ScopedFd e = ConnectTo(dir2.Join("h.sock"));
  refused = Receive(e.get());
  ASSERT_TRUE(refused.has_refused());
  EXPECT_THAT(refused.refused().reason(),
              ::testing::HasSubstr(absl::StrCat(
                  "uid ", ::getuid(),
                  " holds 1 sessions, the most one user may hold (1)")));
}

TEST(SessionServerTest, AClientThatNeverReadsItsBundlesIsClosed) {
  // Unread SCM_RIGHTS descriptors are charged to the daemon's user: before,
  // a client that acquired without reading its handle socket made an
  // unprivileged daemon's sends fail (ETOOMANYREFS) for every client.
  ShortTempDir dir;
  const std::string path = dir.Join("h.sock");
  absl::Notification closed;
  SessionLimits limits;
  limits.max_unread_bundles = 3;
  ASSERT_OK_AND_ASSIGN(
      auto server,
      SessionServer::Start(
          path,
          // on_close runs on the one session thread: the check cannot race.
          [&](const std::string&) {
            if (!closed.HasBeenNotified()) closed.Notify();
          },
          limits));
  ScopedFd memfd(::memfd_create("t", MFD_CLOEXEC));

  // A client that reads keeps its session, however many bundles it gets.
  ScopedFd reader = ConnectTo(path);
  const std::string reader_id = Receive(reader.get()).hello().session_id();
  for (int i = 0; i < 10; ++i) {
    ASSERT_OK(server->SendFds(reader_id, server->NextTransferId(), "l",
                              {memfd.get()}));
    std::vector<int> fds;
    ASSERT_TRUE(Receive(reader.get(), &fds).has_fds());
    for (int fd : fds) ::close(fd);
  }

  ScopedFd idle = ConnectTo(path);
  const std::string idle_id = Receive(idle.get()).hello().session_id();
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK(
        server->SendFds(idle_id, server->NextTransferId(), "l", {memfd.get()}));
  }
  EXPECT_THAT(
      server->SendFds(idle_id, server->NextTransferId(), "l", {memfd.get()}),
      StatusIs(absl::StatusCode::kResourceExhausted,
               ::testing::HasSubstr("left 3 descriptor bundles unread on the "
                                    "handle socket, the most a session may "
                                    "(3)")));
  // The session closes (its leases are released by on_close).
  ASSERT_TRUE(closed.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_THAT(server->Find(idle_id), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_OK(server->Find(reader_id).status());
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
