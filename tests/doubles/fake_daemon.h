// An in-process stand-in for warmstartd, for tests of the client and of
// warmstartctl: the Warmstart gRPC service on a unix socket plus the
// SOCK_SEQPACKET handle socket that opens sessions and carries sealed
// memfds. It serves models it is given; it loads nothing.
//
// Ownership: a FakeDaemon owns its server, its sockets, its accept thread
// and every session's descriptor; Stop() and the destructor close them all.
// Thread safety: as stated on FakeDaemon (every method from any thread).
#ifndef WARMSTART_TESTS_DOUBLES_FAKE_DAEMON_H_
#define WARMSTART_TESTS_DOUBLES_FAKE_DAEMON_H_

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "proto/warmstart.grpc.pb.h"

namespace warmstart {
namespace testing {

// A model the fake serves: one host allocation holding `bytes`.
struct FakeModel {
  // What LoadModel (waiting), ListModels and AcquireModel report; its name
  // is the model's.
  v1::ModelStatus status;
  // Streamed by WatchModel (and the first returned by a no_wait LoadModel)
  // before `status`.
  std::vector<v1::ModelStatus> progress;
  std::string bytes;
  std::vector<v1::Tensor> tensors;
  // The lease's metadata_json; not sent when empty.
  std::string metadata_json;
};

// A READY model of `bytes` pattern bytes (byte i is (7 i + 3) mod 256) with
// tensors "a" (F32 [4, 4] at 0, role "parameter") and "b" (U8 [100] at 256,
// no role), and metadata {"format":"pt"}.
// REQUIRES: bytes >= 356.
FakeModel PatternModel(const std::string& name, size_t bytes);

// How the fake misbehaves (or not); read at every call.
struct FakeBehavior {
  uint32_t protocol_major = 1;
  v1::Readiness readiness;
  // AcquireModel: the allocation's kind and device.
  v1::MemoryKind kind = v1::HOST_MEMFD;
  std::string device_uuid = "host";
  // AcquireModel: more descriptors in the bundle than allocations.
  int extra_fds = 0;
  // AcquireModel: the bundle announces this many more descriptors than it
  // carries.
  int count_delta = 0;
  // AcquireModel: first send a bundle for an older transfer (as if an
  // earlier acquire had failed after the daemon sent it).
  bool send_stale_bundle = false;
  // AcquireModel: seal the memfd (shrink, grow, future write).
  bool seal = true;
  // AcquireModel: the allocation's size (0: the model's byte count).
  uint64_t allocation_size = 0;
  // AcquireModel: answer a request for packed_tensor_table with
  // Lease.tensor_table, as warmstartd does; false answers every request
  // with Lease.tensors, as a daemon that predates the table.
  bool packed_tensor_table = true;
  // AcquireModel: when set, sent as Lease.tensor_table whatever the
  // request asked (a malformed table, or one next to Lease.tensors).
  std::optional<std::string> tensor_table_bytes;
  // Returned by LoadModel / UnloadModel when not OK.
  grpc::Status load_error = grpc::Status::OK;
  grpc::Status unload_error = grpc::Status::OK;
};

// One call as the fake saw it.
struct FakeCall {
  std::string method;  // "AcquireModel", ...
  // The "warmstart-session" metadata; empty when absent.
  std::string session_id;
};

// Thread safety: every method may be called from any thread.
class FakeDaemon {
 public:
  // Serves gRPC at `dir`/ws.sock and sessions at `dir`/ws.handles.
  // REQUIRES: `dir` exists and is short enough for sun_path.
  explicit FakeDaemon(std::string dir);
  // Stops it.
  ~FakeDaemon();
  FakeDaemon(const FakeDaemon&) = delete;
  FakeDaemon& operator=(const FakeDaemon&) = delete;

  // Starts (or, after Stop(), restarts: new session ids) serving.
  absl::Status Start();
  // Stops serving: closes every session's socket (the client sees its end)
  // and removes both sockets. Models and records stay.
  void Stop();

  std::string socket_path() const { return dir_ + "/ws.sock"; }
  std::string handle_path() const { return dir_ + "/ws.handles"; }

  void AddModel(FakeModel model);
  FakeBehavior behavior() const;
  void set_behavior(FakeBehavior behavior);

  std::vector<FakeCall> calls() const;
  std::vector<std::string> released_leases() const;
  std::vector<v1::LoadModelRequest> load_requests() const;
  std::vector<v1::UnloadModelRequest> unload_requests() const;
  std::vector<v1::AcquireModelRequest> acquire_requests() const;
  // Every session id handed out, in order.
  std::vector<std::string> session_ids() const;
  // The leases granted and not released.
  int outstanding_leases() const;

 private:
  class Service;

  void AcceptLoop(int listen_fd, int wake_fd);
  // Records the call and returns its session metadata.
  std::string Record(grpc::ServerContext* context, const char* method);
  grpc::Status Acquire(grpc::ServerContext* context,
                       const v1::AcquireModelRequest& request,
                       v1::Lease* lease);

  const std::string dir_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::thread accept_thread_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};

  mutable absl::Mutex mu_;
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_session_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_transfer_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 0;
  // Session id to its connected socket.
  std::map<std::string, int> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, FakeModel> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> leases_ ABSL_GUARDED_BY(mu_);
  FakeBehavior behavior_ ABSL_GUARDED_BY(mu_);
  std::vector<FakeCall> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> released_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::LoadModelRequest> loads_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::UnloadModelRequest> unloads_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::AcquireModelRequest> acquires_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> session_ids_ ABSL_GUARDED_BY(mu_);
};

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_TESTS_DOUBLES_FAKE_DAEMON_H_
