#include "daemon/server/listener_probe.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <vector>

#include "absl/time/clock.h"
#include "common/scoped_fd.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::warmstart::testing::ShortTempDir;

// A unix socket at `path` that listens with a backlog of `backlog` and
// never accepts.
ScopedFd ListenWithoutAccepting(const std::string& path, int backlog) {
  ScopedFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  EXPECT_EQ(::bind(socket.get(), reinterpret_cast<const sockaddr*>(&address),
                   sizeof(address)),
            0);
  EXPECT_EQ(::listen(socket.get(), backlog), 0);
  return socket;
}

TEST(ListenerProbeTest, NoSocketFileIsAListenerGone) {
  ShortTempDir dir;
  const ProbeResult result =
      ProbeUnixListener(dir.Join("absent.sock"), absl::Seconds(5));
  EXPECT_TRUE(result.listener_gone);
  EXPECT_THAT(result.status.message(), HasSubstr("absent.sock"));
}

// A listener that accepts nothing fills its backlog; a blocking connect
// would then wait forever. The probe gives up after its timeout, and says
// the listener is there (re-arming would not help).
TEST(ListenerProbeTest, AFullBacklogFailsWithinTheTimeoutNotForever) {
  ShortTempDir dir;
  const std::string path = dir.Join("stuck.sock");
  ScopedFd listener = ListenWithoutAccepting(path, 0);
  std::vector<ScopedFd> queued;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  for (int i = 0; i < 64; ++i) {
    ScopedFd client(
        ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (::connect(client.get(), reinterpret_cast<const sockaddr*>(&address),
                  sizeof(address)) != 0) {
      break;  // EAGAIN: the backlog is full.
    }
    queued.push_back(std::move(client));
  }
  const ProbeResult result = ProbeUnixListener(path, absl::Milliseconds(200));
  EXPECT_FALSE(result.status.ok());
  EXPECT_FALSE(result.listener_gone) << result.status;
  EXPECT_THAT(result.status.message(), HasSubstr("stuck.sock"));
}

}  // namespace
}  // namespace warmstart
