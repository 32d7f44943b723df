// The warmstart.v1 gRPC service: server identification, models, leases.
//
// Handlers translate between the protocol and the registry; sessions come
// from the SessionServer (metadata "warmstart-session"), and descriptors
// for a lease are sent over the session's handle socket before the reply.
//
// Thread safety: handlers run concurrently on gRPC's threads; the service
// keeps no mutable state of its own besides the readiness, which is
// thread-safe.
#ifndef WARMSTART_DAEMON_SERVICE_WARMSTART_SERVICE_H_
#define WARMSTART_DAEMON_SERVICE_WARMSTART_SERVICE_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/protocol.h"
#include "daemon/base/metrics.h"
#include "daemon/registry/registry.h"
#include "daemon/service/grpc_acceptor.h"
#include "daemon/service/session_server.h"
#include "proto/warmstart.grpc.pb.h"

namespace warmstart {

// Who may load and unload models (DaemonConfig.authorization). Root and the
// daemon's own uid always may; with both sets empty every unix socket
// caller may. TCP callers may only when `tcp_control`.
struct AuthorizationPolicy {
  std::set<uid_t> control_uids;
  std::set<gid_t> control_gids;
  bool tcp_control = false;
  // Operators, who may force-unload any model (see MayForceUnload).
  std::set<uid_t> admin_uids;
  std::set<gid_t> admin_gids;
};

// Whether `caller` may force-unload (unload although others lease it) a
// model that `loaded_by` loaded over LoadModel (nullopt: a preload, or a
// model whose loader is not known). Allowed: root, `daemon_uid`, the
// policy's admin_uids, a caller whose gid or one of whose `groups` is in
// admin_gids, and the uid that loaded the model. `caller` nullopt is a TCP
// caller, allowed only with tcp_control. PermissionDenied names the caller,
// the model and who may.
absl::Status MayForceUnload(const std::optional<SessionPeer>& caller,
                            const std::vector<gid_t>& groups,
                            const std::string& model,
                            std::optional<uid_t> loaded_by,
                            const AuthorizationPolicy& policy,
                            uid_t daemon_uid);

// Leases the sessions of one process and of one user may hold at once
// (DescriptorBudget); zero: no cap of that kind.
struct LeaseLimits {
  size_t max_per_process = 0;
  size_t max_per_uid = 0;
};

struct WarmstartServiceOptions {
  // Where refused paths are counted, and the series GetStats reports (the
  // daemon's: every component's). Not owned; must outlive the service.
  // Null: a Metrics of the service's own.
  Metrics* metrics = nullptr;
  // The clock the calls' waits are timed by; null means absl::Now. The
  // registry waits until deadlines on this clock's scale: under a clock
  // behind the real time those waits return at once (tests step their
  // clock instead of sleeping).
  std::function<absl::Time()> now;
};

class WarmstartService final : public v1::Warmstart::Service {
 public:
  // `info` is GetServerInfo's answer except for the readiness, which
  // SetReadiness changes. `registry` and `sessions` are not owned and
  // outlive the service.
  WarmstartService(v1::ServerInfo info, Registry* registry,
                   SessionServer* sessions,
                   WarmstartServiceOptions options = {});

  // Binds sessions to their peer: a call that names a session must come
  // over a connection whose peer (in `peers`, not owned, outliving the
  // service) is the process that opened the session. Called once, before
  // serving; without it sessions are not bound (unit tests).
  void BindSessionsToPeers(const ConnectionPeers* peers) { peers_ = peers; }
  // Enforced only once sessions are bound to peers (it needs them). Called
  // once, before serving.
  void SetAuthorization(AuthorizationPolicy policy) {
    policy_ = std::move(policy);
  }

  // Called once, before serving; without it leases are not capped.
  void SetLeaseLimits(LeaseLimits limits) { lease_limits_ = limits; }

  void SetReadiness(v1::Readiness::State state, const std::string& message);
  v1::Readiness readiness() const;

  grpc::Status GetServerInfo(grpc::ServerContext* context,
                             const v1::GetServerInfoRequest* request,
                             v1::ServerInfo* response) override;
  grpc::Status LoadModel(grpc::ServerContext* context,
                         const v1::LoadModelRequest* request,
                         v1::ModelStatus* response) override;
  grpc::Status WatchModel(grpc::ServerContext* context,
                          const v1::WatchModelRequest* request,
                          grpc::ServerWriter<v1::ModelStatus>* writer) override;
  grpc::Status AcquireModel(grpc::ServerContext* context,
                            const v1::AcquireModelRequest* request,
                            v1::Lease* response) override;
  grpc::Status ReleaseModel(grpc::ServerContext* context,
                            const v1::ReleaseModelRequest* request,
                            v1::ReleaseModelResponse* response) override;
  grpc::Status UnloadModel(grpc::ServerContext* context,
                           const v1::UnloadModelRequest* request,
                           v1::ModelStatus* response) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context,
                        const v1::GetStatsRequest* request,
                        v1::Stats* response) override;

 private:
  // The caller's open session, from its metadata; Unauthenticated when
  // missing, unknown or closed.
  absl::StatusOr<std::string> SessionOf(const grpc::ServerContext& context);
  // Waits for `name` to leave LOADING, giving up when the call is
  // cancelled or its deadline passes.
  absl::StatusOr<v1::ModelStatus> WaitLoaded(grpc::ServerContext& context,
                                             const std::string& name);
  absl::Time Now() const;
  // The call's deadline, or kDefaultWait from now when it has none or a
  // later one.
  absl::Time DeadlineOf(const grpc::ServerContext& context) const;

  const v1::ServerInfo info_;
  Registry* const registry_;
  SessionServer* const sessions_;
  const std::function<absl::Time()> now_;
  // Made when no Metrics was given; before the pointers into it.
  std::unique_ptr<Metrics> unexported_metrics_;
  Metrics& metrics_;
  Counter* const refused_paths_;
  // PermissionDenied naming the caller when it may not `what` ("load
  // models") under policy_.
  absl::Status AuthorizeControl(const grpc::ServerContext& context,
                                absl::string_view what) const;

  // ResourceExhausted naming the limit and its value when one more lease
  // for `session` would pass lease_limits_. Called under acquire_mutex_.
  absl::Status CheckLeaseLimits(const std::string& session) const;

  const ConnectionPeers* peers_ = nullptr;  // Set before serving.
  AuthorizationPolicy policy_;              // Set before serving.
  LeaseLimits lease_limits_;                // Set before serving.
  // Held from counting a peer's leases to granting one, so that concurrent
  // acquires of one peer cannot pass its cap together.
  absl::Mutex acquire_mutex_;
  mutable absl::Mutex mutex_;
  v1::Readiness readiness_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVICE_WARMSTART_SERVICE_H_
