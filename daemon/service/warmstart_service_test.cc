#include "daemon/service/warmstart_service.h"

#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/file_opener.h"
#include "daemon/base/metrics.h"
#include "daemon/device/host_device.h"
#include "daemon/io/read_engine.h"
#include "daemon/loader/loader.h"
#include "daemon/registry/registry.h"
#include "daemon/service/session_server.h"
#include "daemon/staging/staging_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/doubles/fault_injecting_device.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::warmstart::testing::ShortTempDir;
using ::warmstart::testing::WriteTestSafetensors;

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

// The service over a registry on the host device whose allocations wait
// until the test ends (a load stays LOADING), with a clock and a Metrics of
// the test's own: the clock moves an hour at every reading and starts at
// the Unix epoch, so the registry's waits until deadlines on it return at
// once, and no call sleeps.
class WarmstartServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::DeviceFaults faults;
    faults.hold_allocations = &allocations_released_;
    device_ = std::make_unique<testing::FaultInjectingDevice>(&host_, faults);
    ReadEngineOptions engine_options;
    engine_options.kind = ReadEngineOptions::Kind::kPread;
    ASSERT_OK_AND_ASSIGN(engine_, CreateReadEngine(engine_options));
    ASSERT_OK_AND_ASSIGN(
        pool_, StagingPool::Create({8 << 20, 4 << 20}, device_.get()));
    loader_ =
        std::make_unique<Loader>(engine_.get(), pool_.get(), device_.get());
    ASSERT_OK_AND_ASSIGN(opener_, BeneathRootsOpener::Create({root_.path()}));
    RegistryOptions registry_options;
    registry_options.targets.push_back({device_.get(), loader_.get(), 0});
    registry_options.opener = opener_.get();
    registry_options.load.direct_io = false;
    registry_options.metrics = &metrics_;
    registry_ = std::make_unique<Registry>(std::move(registry_options));
    ASSERT_OK_AND_ASSIGN(sessions_,
                         SessionServer::Start(
                             root_.Join("h.sock"), [](const std::string&) {},
                             SessionLimits(), &metrics_));
    WarmstartServiceOptions options;
    options.metrics = &metrics_;
    options.now = [this] {
      now_ += absl::Hours(1);
      return now_;
    };
    service_ = std::make_unique<WarmstartService>(
        v1::ServerInfo(), registry_.get(), sessions_.get(), options);
  }

  // The load threads must not stay blocked when a test ends.
  void TearDown() override { allocations_released_.Notify(); }

  std::string WriteModel(const std::string& path) {
    WriteTestSafetensors(path, 2, 64 << 10);
    return path;
  }

  // Read on the calling thread only (the handlers run on the test's).
  absl::Time now_ = absl::UnixEpoch();
  // Before everything that counts into it.
  Metrics metrics_;
  absl::Notification allocations_released_;
  ShortTempDir root_;
  ShortTempDir outside_;
  HostDevice host_{HostDeviceOptions{}};
  std::unique_ptr<testing::FaultInjectingDevice> device_;
  std::unique_ptr<ReadEngine> engine_;
  std::unique_ptr<StagingPool> pool_;
  std::unique_ptr<Loader> loader_;
  std::unique_ptr<BeneathRootsOpener> opener_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<SessionServer> sessions_;
  std::unique_ptr<WarmstartService> service_;
};

TEST_F(WarmstartServiceTest, ALoadCallWithoutDeadlineGivesUpAfterADay) {
  v1::LoadModelRequest request;
  request.set_name("m");
  request.set_path(WriteModel(root_.Join("m.safetensors")));
  grpc::ServerContext context;  // No deadline, never cancelled.
  v1::ModelStatus response;
  const grpc::Status status =
      service_->LoadModel(&context, &request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("model m is still loading (0 of"));
  EXPECT_THAT(status.error_message(), HasSubstr("the load goes on"));
  // It gave up once a day had passed on the service's clock (first read for
  // the deadline, an hour after the epoch), not before, and not much later.
  EXPECT_GE(now_, absl::UnixEpoch() + absl::Hours(1 + 24));
  EXPECT_LT(now_, absl::UnixEpoch() + absl::Hours(1 + 24 + 3));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus model, registry_->Get("m"));
  EXPECT_EQ(model.state(), v1::LOADING);
}

TEST_F(WarmstartServiceTest, RefusedPathsAreCountedInTheGivenMetrics) {
  v1::LoadModelRequest request;
  request.set_name("m");
  request.set_path(WriteModel(outside_.Join("m.safetensors")));
  grpc::ServerContext context;
  v1::ModelStatus response;
  EXPECT_EQ(service_->LoadModel(&context, &request, &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(metrics_.Snapshot()["warmstart_refused_paths_total"], 1);

  // GetStats reports the Metrics the service was given: the service's
  // counts and those of the registry and sessions that share it.
  v1::Stats stats;
  ASSERT_TRUE(service_->GetStats(&context, nullptr, &stats).ok());
  EXPECT_EQ(stats.metrics().at("warmstart_refused_paths_total"), 1);
  EXPECT_EQ(stats.metrics().at("warmstart_loads_total"), 0);
  EXPECT_EQ(stats.metrics().at("warmstart_sessions"), 0);
}

}  // namespace
}  // namespace warmstart
