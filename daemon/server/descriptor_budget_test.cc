#include "daemon/server/descriptor_budget.h"

#include <sys/resource.h>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(DescriptorBudgetTest, ACommonLimitLeavesRoomForTheDaemon) {
  const DescriptorBudget budget = BudgetFor(1024);
  // 1024 - 256 reserved, split between sessions and gRPC connections.
  EXPECT_EQ(budget.reserved, 256u);
  EXPECT_EQ(budget.sessions.max_sessions, 384u);
  EXPECT_EQ(budget.max_grpc_connections, 384u);
  EXPECT_LE(budget.sessions.max_sessions + budget.max_grpc_connections +
                kReservedDescriptors,
            1024u);
  EXPECT_EQ(budget.sessions.max_per_process, 48u);
  EXPECT_EQ(budget.sessions.max_per_uid, 288u);
  // 384 sessions x 2 unread bundles stay under the 1024 the kernel lets
  // the daemon's user have in flight.
  EXPECT_EQ(budget.sessions.max_unread_bundles, 2u);
  EXPECT_LE(budget.sessions.max_sessions * budget.sessions.max_unread_bundles,
            1024u);
}

TEST(DescriptorBudgetTest, ALargeLimitIsCapped) {
  const DescriptorBudget budget = BudgetFor(1u << 20);
  EXPECT_EQ(budget.sessions.max_sessions, kMaxSessions);
  EXPECT_EQ(budget.max_grpc_connections, kMaxGrpcConnections);
  EXPECT_EQ(budget.sessions.max_per_process, 128u);
  EXPECT_EQ(budget.sessions.max_per_uid, kMaxSessions * 3 / 4);
  EXPECT_EQ(budget.sessions.max_unread_bundles, 16u);
}

TEST(DescriptorBudgetTest, ASmallLimitKeepsAQuarter) {
  // 256 (an unprivileged daemon's limit, say): a quarter kept, the rest
  // split; reserve and sessions together leave room for gRPC connections.
  const DescriptorBudget budget = BudgetFor(256);
  EXPECT_EQ(budget.reserved, 64u);
  EXPECT_EQ(budget.sessions.max_sessions, 96u);
  EXPECT_LT(budget.reserved + budget.sessions.max_sessions, 256u);
}

TEST(DescriptorBudgetTest, ATinyLimitStillAllowsOneOfEach) {
  for (uint64_t limit : {0u, 1u, 4u, 64u}) {
    const DescriptorBudget budget = BudgetFor(limit);
    EXPECT_GE(budget.sessions.max_sessions, 1u) << limit;
    EXPECT_GE(budget.sessions.max_per_process, 1u) << limit;
    EXPECT_GE(budget.sessions.max_per_uid, 1u) << limit;
    EXPECT_GE(budget.max_grpc_connections, 1u) << limit;
  }
}

TEST(DescriptorBudgetTest, PerPeerCapsDeriveFromTheLimit) {
  const DescriptorBudget budget = BudgetFor(1024);
  // An eighth and three quarters of the 384 connections.
  EXPECT_EQ(budget.max_grpc_connections_per_process, 48u);
  EXPECT_EQ(budget.max_grpc_connections_per_uid, 288u);
  // 16 leases for each session a process (48) or a uid (288) may hold.
  EXPECT_EQ(budget.max_leases_per_process, 768u);
  EXPECT_EQ(budget.max_leases_per_uid, 4608u);
  EXPECT_THAT(DescribeBudget({1024, 1024, 1024}, budget),
              ::testing::HasSubstr("gRPC connections at most 384 (48 per "
                                   "process, 288 per uid), leases 768 per "
                                   "process, 4608 per uid"));
}

TEST(DescriptorBudgetTest, OverridesReplaceThePerPeerCaps) {
  PeerLimitOverrides overrides;
  overrides.max_grpc_connections_per_process = 3;
  overrides.max_leases_per_uid = 7;
  const DescriptorBudget budget = BudgetFor(1024, overrides);
  EXPECT_EQ(budget.max_grpc_connections_per_process, 3u);
  EXPECT_EQ(budget.max_grpc_connections_per_uid, 288u);
  EXPECT_EQ(budget.max_leases_per_process, 768u);
  EXPECT_EQ(budget.max_leases_per_uid, 7u);
}

TEST(DescriptorBudgetTest, RaisesTheSoftLimitToTheHardOne) {
  rlimit before{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &before), 0);
  rlimit lowered = before;
  lowered.rlim_cur = std::min<rlim_t>(before.rlim_max, 64);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
  ASSERT_OK_AND_ASSIGN(DescriptorLimit limit, RaiseDescriptorLimit());
  EXPECT_EQ(limit.soft_before, lowered.rlim_cur);
  EXPECT_GE(limit.soft, limit.soft_before);
  rlimit after{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &after), 0);
  EXPECT_EQ(after.rlim_cur, limit.soft);
  if (before.rlim_max != RLIM_INFINITY && before.rlim_max <= (1u << 20)) {
    EXPECT_EQ(limit.soft, before.rlim_max);
  }
  EXPECT_THAT(DescribeBudget(limit, BudgetFor(limit.soft)),
              ::testing::HasSubstr("descriptor limit 64 -> "));
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &before), 0);
}

}  // namespace
}  // namespace warmstart
