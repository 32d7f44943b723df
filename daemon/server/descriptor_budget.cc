#include "daemon/server/descriptor_budget.h"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"

namespace warmstart {
namespace {

// What setrlimit accepts at most: fs.nr_open (1048576 by default). An
// unlimited hard limit cannot be the soft one.
uint64_t KernelMaximum() {
  std::ifstream nr_open("/proc/sys/fs/nr_open");
  uint64_t value = 0;
  if (nr_open >> value && value > 0) return value;
  return 1u << 20;
}

}  // namespace

absl::StatusOr<DescriptorLimit> RaiseDescriptorLimit() {
  rlimit current{};
  if (::getrlimit(RLIMIT_NOFILE, &current) != 0) {
    return ErrnoToStatus(errno, "getrlimit(RLIMIT_NOFILE)");
  }
  DescriptorLimit limit;
  limit.soft_before = current.rlim_cur;
  limit.hard = current.rlim_max;
  const uint64_t wanted = std::min<uint64_t>(
      current.rlim_max == RLIM_INFINITY ? KernelMaximum() : current.rlim_max,
      KernelMaximum());
  if (wanted > current.rlim_cur) {
    rlimit raised = current;
    raised.rlim_cur = wanted;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) current = raised;
  }
  limit.soft = current.rlim_cur;
  return limit;
}

DescriptorBudget BudgetFor(uint64_t limit,
                           const PeerLimitOverrides& overrides) {
  const uint64_t reserved = std::min(kReservedDescriptors, limit / 4);
  const uint64_t usable = limit - reserved;
  DescriptorBudget budget;
  budget.reserved = reserved;
  budget.sessions.max_sessions =
      static_cast<size_t>(std::clamp<uint64_t>(usable / 2, 1, kMaxSessions));
  budget.max_grpc_connections = static_cast<size_t>(
      std::clamp<uint64_t>(usable / 2, 1, kMaxGrpcConnections));
  budget.sessions.max_per_process =
      std::clamp<size_t>(budget.sessions.max_sessions / 8, 1, 128);
  budget.sessions.max_per_uid =
      std::max<size_t>(1, budget.sessions.max_sessions * 3 / 4);
  budget.max_grpc_connections_per_process =
      std::clamp<size_t>(budget.max_grpc_connections / 8, 1, 128);
  budget.max_grpc_connections_per_uid =
      std::max<size_t>(1, budget.max_grpc_connections * 3 / 4);
  budget.max_leases_per_process = budget.sessions.max_per_process * 16;
  budget.max_leases_per_uid = budget.sessions.max_per_uid * 16;
  auto override_with = [](size_t value, size_t& cap) {
    if (value > 0) cap = value;
  };
  override_with(overrides.max_grpc_connections_per_process,
                budget.max_grpc_connections_per_process);
  override_with(overrides.max_grpc_connections_per_uid,
                budget.max_grpc_connections_per_uid);
  override_with(overrides.max_leases_per_process,
                budget.max_leases_per_process);
  override_with(overrides.max_leases_per_uid, budget.max_leases_per_uid);
  // Every session's unread bundles together (one descriptor each on the
  // host, one per device on GPUs) stay under half the limit, which is what
  // the kernel lets the daemon's user have in flight.
  budget.sessions.max_unread_bundles = static_cast<size_t>(
      std::clamp<uint64_t>(limit / 2 / budget.sessions.max_sessions, 2, 16));
  return budget;
}

std::string DescribeBudget(const DescriptorLimit& limit,
                           const DescriptorBudget& budget) {
  return absl::StrCat(
      "descriptor limit ", limit.soft_before, " -> ", limit.soft, " (hard ",
      limit.hard == RLIM_INFINITY ? std::string("unlimited")
                                  : absl::StrCat(limit.hard),
      "): sessions at most ", budget.sessions.max_sessions, " (",
      budget.sessions.max_per_process, " per process, ",
      budget.sessions.max_per_uid, " per uid), gRPC connections at most ",
      budget.max_grpc_connections, " (",
      budget.max_grpc_connections_per_process, " per process, ",
      budget.max_grpc_connections_per_uid, " per uid), leases ",
      budget.max_leases_per_process, " per process, ",
      budget.max_leases_per_uid, " per uid");
}

}  // namespace warmstart
