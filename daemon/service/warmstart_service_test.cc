#include "daemon/service/warmstart_service.h"

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

constexpr uid_t kDaemonUid = 998;

AuthorizationPolicy Operators() {
  AuthorizationPolicy policy;
  policy.admin_uids = {4244};
  policy.admin_gids = {4245};
  return policy;
}

SessionPeer Caller(uid_t uid, gid_t gid) { return SessionPeer{1234, uid, gid}; }

TEST(MayForceUnloadTest, TheLoaderMayAndAnotherUserMayNot) {
  EXPECT_OK(MayForceUnload(Caller(4242, 100), {}, "m", 4242, Operators(),
                           kDaemonUid));
  const absl::Status refused =
      MayForceUnload(Caller(4243, 100), {}, "m", 4242, Operators(), kDaemonUid);
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.message(),
              HasSubstr("uid 4243 (pid 1234) may not force-unload m: only "
                        "uid 4242, who loaded it,"));
}

TEST(MayForceUnloadTest, OperatorsMayWhoeverLoadedIt) {
  for (std::optional<uid_t> loaded_by :
       {std::optional<uid_t>(4242), std::optional<uid_t>()}) {
    EXPECT_OK(MayForceUnload(Caller(0, 0), {}, "m", loaded_by, Operators(),
                             kDaemonUid));
    EXPECT_OK(MayForceUnload(Caller(kDaemonUid, 100), {}, "m", loaded_by,
                             Operators(), kDaemonUid));
    EXPECT_OK(MayForceUnload(Caller(4244, 100), {}, "m", loaded_by, Operators(),
                             kDaemonUid));
    EXPECT_OK(MayForceUnload(Caller(4300, 4245), {}, "m", loaded_by,
                             Operators(), kDaemonUid));
    // A supplementary group counts like the primary one.
    EXPECT_OK(MayForceUnload(Caller(4300, 100), {7, 4245}, "m", loaded_by,
                             Operators(), kDaemonUid));
  }
}

TEST(MayForceUnloadTest, APreloadBelongsToTheOperatorsOnly) {
  const absl::Status refused = MayForceUnload(
      Caller(4242, 100), {7}, "pre", std::nullopt, Operators(), kDaemonUid);
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.message(), HasSubstr("only root, the daemon's uid"));
}

TEST(MayForceUnloadTest, TcpCallersNeedTcpControl) {
  AuthorizationPolicy policy = Operators();
  EXPECT_EQ(
      MayForceUnload(std::nullopt, {}, "m", 4242, policy, kDaemonUid).code(),
      absl::StatusCode::kPermissionDenied);
  policy.tcp_control = true;
  EXPECT_OK(MayForceUnload(std::nullopt, {}, "m", 4242, policy, kDaemonUid));
}

TEST(MayForceUnloadTest, ControlCharactersInTheNameAreEscaped) {
  const absl::Status refused = MayForceUnload(
      Caller(4243, 100), {}, "m\x1b[2J\n", 4242, Operators(), kDaemonUid);
  EXPECT_THAT(refused.message(), HasSubstr("m\\x1b[2J\\n"));
}

}  // namespace
}  // namespace warmstart
