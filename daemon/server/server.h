// Server: warmstartd assembled from its configuration.
//
// Owns, in dependency order: the CUDA driver (when used), one device per
// target with its staging pool, read engine and loader, the registry, the
// handle socket's session server, the gRPC server (unix socket, optional
// TCP) and the optional metrics endpoint. Tracks readiness: health is
// SERVING, ServerInfo.readiness READY and systemd told READY=1 once every
// required preload is resident; a required preload that fails makes
// readiness FAILED at once, with the reason.
//
// Thread safety: Start, ApplyPreloads and Shutdown are called from the
// daemon's main thread only; everything else runs on gRPC and load threads.
#ifndef WARMSTART_DAEMON_SERVER_SERVER_H_
#define WARMSTART_DAEMON_SERVER_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "daemon/base/metrics.h"
#include "daemon/device/cuda_driver.h"
#include "daemon/device/device.h"
#include "daemon/io/read_engine.h"
#include "daemon/loader/loader.h"
#include "daemon/registry/registry.h"
#include "daemon/remote/remote_source.h"
#include "daemon/server/descriptor_budget.h"
#include "daemon/service/grpc_acceptor.h"
#include "daemon/service/metrics_endpoint.h"
#include "daemon/service/session_server.h"
#include "daemon/service/warmstart_service.h"
#include "daemon/staging/staging_pool.h"
#include "grpcpp/grpcpp.h"
#include "proto/config.pb.h"

namespace warmstart {

class Server {
 public:
  // Chooses the backend, sets up every device, listens on the sockets and
  // serves (readiness STARTING until ApplyPreloads' required models are
  // resident). `config` has been through BuildConfig. Errors name what
  // failed: the backend ("--backend cuda: no GPU"), a socket path, the
  // staging pool, the metrics address.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const v1::DaemonConfig& config);

  // Frees everything in reverse order. Shutdown first for a graceful stop.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Loads `config`'s preloads (joining models already loaded from the same
  // files) and pins them unless evictable; preloads no longer listed are
  // unpinned, not unloaded. Returns at once; readiness follows the loads.
  void ApplyPreloads(const v1::DaemonConfig& config);

  // Graceful stop: readiness STOPPING and health NOT_SERVING, no new leases
  // or loads, waits up to the configured grace period for leases to be
  // released, then stops the gRPC server. Returns the leases still held
  // when it gave up waiting.
  int Shutdown();

 private:
  // Declared in the order they are made: the pool registers its slabs with
  // the device and the engine, so both outlive it.
  struct Target {
    std::unique_ptr<Device> device;
    std::unique_ptr<ReadEngine> engine;
    std::unique_ptr<StagingPool> pool;
    std::unique_ptr<Loader> loader;
    uint64_t budget_bytes = 0;
  };

  Server() = default;
  Counter* PreloadFailures() {
    return metrics_.GetCounter("warmstart_preload_failures_total",
                               "Preloads that failed to load");
  }
  absl::Status SetUpTargets(const v1::DaemonConfig& config,
                            v1::ServerInfo& info);
  absl::Status Listen(const v1::DaemonConfig& config,
                      const v1::ServerInfo& info);
  // Waits for `required` preloads and sets readiness; runs on
  // readiness_thread_ until done or `stop_readiness_`.
  void TrackReadiness(std::vector<std::string> required,
                      std::vector<std::string> failed_early);
  void SetReady(v1::Readiness::State state, const std::string& message);
  void StopReadinessThread();
  // Returns each idle staging pool's memory once it has been quiet long
  // enough; runs on staging_release_thread_ until staging_release_stop_.
  void ReleaseQuietStagingPools(absl::Duration period);
  void StopStagingReleaseThread();
  // Health is SERVING only while readiness is READY and the last listener
  // probe succeeded.
  void UpdateHealth();
  // Every kProbeInterval until StopListenerProbe: ProbeListenersOnce.
  void RunListenerProbe();
  // Probes the unix socket (and the TCP address when configured) over new
  // connections. A unix listener that takes no connection at all is
  // re-armed (closed, its path prepared and bound again) and probed again.
  // What still fails turns health NOT_SERVING with a logged reason; a
  // listener that cannot be re-armed, or failures in kProbeFailuresToExit
  // rounds in a row, end the process (status 3, reason logged) so that its
  // supervisor restarts it.
  void ProbeListenersOnce();
  // Starts grpc_acceptor_ on the unix socket with the descriptor caps.
  absl::Status StartUnixAcceptor();
  absl::Status RearmUnixListener();
  void StopListenerProbe();

  // The daemon's metrics, which every component counts into and the stats
  // RPC and the metrics endpoint export. First: it outlives them all.
  Metrics metrics_;
  v1::DaemonConfig config_;
  DescriptorBudget descriptors_;        // Set first in Start.
  std::unique_ptr<CudaDriver> driver_;  // Kept: unloading after cuInit is
                                        // not safe.
  std::vector<Target> targets_;
  // Beneath the model roots; refuses everything when there are none.
  std::unique_ptr<FileOpener> opener_;
  // Reads models named by URL; outlives the registry, which loads through
  // it.
  std::unique_ptr<RemoteSources> remote_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<SessionServer> sessions_;
  ConnectionPeers connection_peers_;  // Filled by grpc_acceptor_.
  std::unique_ptr<WarmstartService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  // Accepts the unix socket into grpc_server_; destroyed before it.
  std::unique_ptr<GrpcAcceptor> grpc_acceptor_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::vector<std::string> pinned_preloads_;

  std::atomic<bool> stop_readiness_{false};
  std::thread readiness_thread_;
  absl::Notification staging_release_stop_;
  std::thread staging_release_thread_;

  // "127.0.0.1:7070" with the port gRPC bound; empty without TCP.
  std::string tcp_probe_address_;
  // Serialises health changes (readiness thread, probe thread).
  absl::Mutex health_mutex_;
  bool listeners_healthy_ ABSL_GUARDED_BY(health_mutex_) = true;
  absl::Mutex probe_mutex_;
  bool stop_probe_ ABSL_GUARDED_BY(probe_mutex_) = false;
  int failed_probe_rounds_ = 0;  // The probe thread's.
  bool probe_answered_ = false;  // The probe thread's: once, ever.
  std::thread probe_thread_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVER_SERVER_H_
