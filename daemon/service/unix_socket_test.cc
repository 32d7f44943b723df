#include "daemon/service/unix_socket.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "common/scoped_fd.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

ScopedFd BindAt(const std::string& path, bool listen_too) {
  ScopedFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  EXPECT_EQ(
      ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)),
      0);
  if (listen_too) {
    EXPECT_EQ(::listen(fd.get(), 1), 0);
  }
  return fd;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

TEST(PrepareSocketPathTest, CreatesMissingParent) {
  testing::ShortTempDir dir;
  EXPECT_OK(PrepareSocketPath(dir.Join("run/d.sock")));
  EXPECT_TRUE(Exists(dir.Join("run")));
}

TEST(PrepareSocketPathTest, RemovesStaleSocket) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("d.sock");
  { ScopedFd bound = BindAt(path, /*listen_too=*/false); }
  ASSERT_TRUE(Exists(path));
  EXPECT_OK(PrepareSocketPath(path));
  EXPECT_FALSE(Exists(path));
}

TEST(PrepareSocketPathTest, RefusesWhenAServerListens) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("d.sock");
  ScopedFd live = BindAt(path, /*listen_too=*/true);
  EXPECT_THAT(PrepareSocketPath(path),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("another server is listening")));
  EXPECT_TRUE(Exists(path));
}

TEST(PrepareSocketPathTest, RefusesToReplaceARegularFile) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("not-a-socket");
  std::ofstream(path) << "data";
  EXPECT_THAT(PrepareSocketPath(path),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("not a socket")));
}

TEST(ListenUnixSocketTest, ListensNonBlockingOnThePath) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("l.sock");
  ASSERT_OK_AND_ASSIGN(ScopedFd listener, ListenUnixSocket(path, SOCK_SEQPACKET,
                                                           4, "test socket"));
  EXPECT_NE(::fcntl(listener.get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(listener.get(), F_GETFD) & FD_CLOEXEC, 0);
  ScopedFd client(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&address),
                      sizeof(address)),
            0);
  ScopedFd accepted(::accept4(listener.get(), nullptr, nullptr, 0));
  EXPECT_TRUE(accepted.valid());
}

TEST(ListenUnixSocketTest, NamesTheSocketWhenThePathIsTooLong) {
  EXPECT_THAT(ListenUnixSocket("/tmp/" + std::string(200, 'x'), SOCK_STREAM, 4,
                               "handle socket"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("handle socket /tmp/xxx")));
}

TEST(PrepareSocketPathTest, RefusesPathsLongerThanSunPath) {
  EXPECT_THAT(PrepareSocketPath("/tmp/" + std::string(200, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("must be 1 to 107 bytes")));
}

TEST(ApplySocketPermissionsTest, SetsModeOwnerAndGroup) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("s.sock");
  ScopedFd socket = BindAt(path, false);
  // This process's own user and group (by number): allowed without root.
  ASSERT_OK(ApplySocketPermissions(path, 0640, std::to_string(::getuid()),
                                   std::to_string(::getgid())));
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(st.st_uid, ::getuid());
  EXPECT_EQ(st.st_gid, ::getgid());
  ASSERT_OK(ApplySocketPermissions(path, 0660, "", ""));
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST(ApplySocketPermissionsTest, UnknownUserOrGroupIsNamed) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("s.sock");
  ScopedFd socket = BindAt(path, false);
  EXPECT_THAT(ApplySocketPermissions(path, 0660, "no-such-user-ws", ""),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("socket owner \"no-such-user-ws\"")));
  EXPECT_THAT(ApplySocketPermissions(path, 0660, "", "no-such-group-ws"),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("socket group \"no-such-group-ws\"")));
}

}  // namespace
}  // namespace warmstart
