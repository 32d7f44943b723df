// DescriptorBudget: how many descriptors the daemon may spend on clients.
//
// Every session and every gRPC connection holds a descriptor in the
// daemon. Before this budget, one process opening ~1,100 sessions put the
// daemon at its soft RLIMIT_NOFILE (1024 is common), after which gRPC's
// listener failed accept4 with EMFILE and never served a new client again.
// The daemon now raises its soft limit to the hard one at start and derives
// from the result caps on sessions and gRPC connections that leave room for
// everything else (model files being read, listeners, the read engine).
//
// Plain values and functions; thread-safe.
#ifndef WARMSTART_DAEMON_SERVER_DESCRIPTOR_BUDGET_H_
#define WARMSTART_DAEMON_SERVER_DESCRIPTOR_BUDGET_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/service/session_server.h"

namespace warmstart {

// Descriptors kept for the daemon's own use: files of loads in progress,
// listeners, eventfds, io_uring, logs, the metrics endpoint.
inline constexpr uint64_t kReservedDescriptors = 256;
// gRPC connections open at once at most, whatever the limit allows.
inline constexpr size_t kMaxGrpcConnections = 4096;

struct DescriptorLimit {
  uint64_t soft_before = 0;  // The soft limit the daemon was started with.
  uint64_t soft = 0;         // After raising it.
  uint64_t hard = 0;
};

struct DescriptorBudget {
  // Kept for the daemon's own use: never given to sessions or connections.
  uint64_t reserved = 0;
  SessionLimits sessions;
  size_t max_grpc_connections = 0;
  // gRPC connections on the unix socket one process, and one user, may
  // hold open at once (the acceptor closes the next one, logging which
  // limit it hit).
  size_t max_grpc_connections_per_process = 0;
  size_t max_grpc_connections_per_uid = 0;
  // Leases the sessions of one process, and of one user, may hold at once
  // (AcquireModel is RESOURCE_EXHAUSTED past them, naming the limit). A
  // lease holds no descriptor in the daemon, but each one's bundle is a
  // descriptor in flight until read and in the client after: they are
  // capped like the sessions that carry them.
  size_t max_leases_per_process = 0;
  size_t max_leases_per_uid = 0;
};

// Operator overrides of the per-peer caps (DaemonConfig.client_limits); 0
// keeps the derived value.
struct PeerLimitOverrides {
  size_t max_grpc_connections_per_process = 0;
  size_t max_grpc_connections_per_uid = 0;
  size_t max_leases_per_process = 0;
  size_t max_leases_per_uid = 0;
};

// Raises the soft RLIMIT_NOFILE to the hard limit (capped at what the kernel
// takes, fs.nr_open) and returns the limits. Errors: the errno status of
// getrlimit. A refused raise is not an error: the limits say what holds.
absl::StatusOr<DescriptorLimit> RaiseDescriptorLimit();

// The caps for a process whose descriptor limit is `limit`: a quarter of
// it (at most) is kept for the daemon, the rest split evenly between
// sessions and gRPC connections; one process may hold an eighth of the
// sessions (at most 128), one user three quarters; a session may leave 2 to
// 16 descriptor bundles unread, all of them together within half the limit.
// gRPC connections are split the same way (an eighth, at most 128, per
// process; three quarters per uid); leases per process are 16 for each
// session a process may hold, per uid 16 for each session a uid may hold.
// Non-zero `overrides` replace the per-peer values.
DescriptorBudget BudgetFor(uint64_t limit,
                           const PeerLimitOverrides& overrides = {});

// "descriptor limit 1024 -> 524288 (hard 524288): sessions at most 4096
// (...)", for the start log.
std::string DescribeBudget(const DescriptorLimit& limit,
                           const DescriptorBudget& budget);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVER_DESCRIPTOR_BUDGET_H_
