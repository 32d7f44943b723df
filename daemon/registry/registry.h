// Registry: the models the daemon holds, their loads, leases and eviction.
//
// A model is loaded once per name onto one or more devices, on a thread of
// its own; callers loading the same name from the same files join that
// load. Clients take leases on ready models; a leased model's memory is
// never freed. Forced unloads stop new leases and free the memory when the
// last lease goes. When a load needs room on a device (over its budget, or
// refused by the device), unleased, unpinned, ready models on that device
// are evicted least recently used first; otherwise the load fails with
// ResourceExhausted and the figures.
//
// Model states: LOADING -> READY | FAILED; LOADING -> UNLOADING (unloaded
// while loading: cancelled) -> gone; READY -> UNLOADING (forced while
// leased) -> gone; READY -> gone (unload, eviction). A FAILED model stays
// listed with its error until it is unloaded or loaded again.
//
// Thread safety: every method is thread-safe. Waiting methods block the
// calling thread (a gRPC handler) on a condition variable, up to a deadline.
#ifndef WARMSTART_DAEMON_REGISTRY_REGISTRY_H_
#define WARMSTART_DAEMON_REGISTRY_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/file_opener.h"
#include "daemon/base/metrics.h"
#include "daemon/device/device.h"
#include "daemon/formats/key_provider.h"
#include "daemon/loader/load_job.h"
#include "daemon/loader/loader.h"
#include "proto/warmstart.pb.h"

namespace warmstart {

// A device the registry loads onto.
struct RegistryTarget {
  Device* device = nullptr;  // Not owned; outlives the registry.
  Loader* loader = nullptr;  // Not owned; loads onto `device`.
  // Most bytes of models resident on the device; 0 means no budget (the
  // device's own free memory is the limit).
  uint64_t budget_bytes = 0;
};

struct RegistryOptions {
  // At least one, with distinct device uuids.
  std::vector<RegistryTarget> targets;
  // Every model file is opened through it (the model roots). Not owned;
  // outlives the registry.
  const FileOpener* opener = nullptr;
  // Alignment, direct I/O and checksum verification for every load; the
  // registry sets keys, on_progress, cancel, opener, now and metrics itself.
  LoadOptions load;
  // Where the registry's counters, gauges and histograms go (per model and
  // per device), and its loads' (LoadOptions::metrics). Not owned; must
  // outlive the registry. Null: a Metrics of the registry's own, which
  // nobody exports.
  Metrics* metrics = nullptr;
  // The clock for load durations, least-recently-used order and progress
  // signals; null means absl::Now. Called from any thread, under the
  // registry's lock: it must not call back into the registry.
  std::function<absl::Time()> now;
};

struct ModelRequest {
  // [A-Za-z0-9._-]{1,128}.
  std::string name;
  std::string path;
  // Device uuids; empty means every target.
  std::vector<std::string> devices;
  // Never evicted to make room (preloads).
  bool pinned = false;
  // For encrypted files; null means none.
  std::shared_ptr<KeyProvider> keys;
  // MODEL_LAYOUT_UNSPECIFIED: FILE_IMAGE for one GGUF file on host memory
  // only, else PACKED; joins a loaded model whatever its layout.
  v1::ModelLayout layout = v1::MODEL_LAYOUT_UNSPECIFIED;
  // The uid of the client asking, where the daemon knows it (unix-socket
  // callers). Kept by a model this request creates, never by one it joins:
  // loading a model again does not make the caller its owner.
  std::optional<uint32_t> requested_by_uid;
};

// What a lease gives a client: the layout and the memory to map. The
// descriptors in `memory` stay owned by the model's allocations, which stay
// alive while the lease is held.
struct LeaseGrant {
  std::string lease_id;
  v1::ModelStatus model;
  // TensorListing::kTensors only: a copy of the model's tensors.
  std::vector<LoadedTensor> tensors;
  // The model's packed tensor table (common/tensor_table.h, the bytes of
  // v1::Lease.tensor_table), built once when the model became READY and
  // shared by every grant; never null.
  std::shared_ptr<const std::string> tensor_table;
  std::string metadata_json;  // LoadedModel::metadata_json.
  struct Memory {
    std::string device_uuid;
    ExportedMemory exported;
  };
  std::vector<Memory> memory;  // One per device, in ModelStatus.devices order.
};

// How a LeaseGrant lists the model's tensors.
enum class TensorListing {
  // LeaseGrant::tensors, copied for the grant (v1::Lease.tensors).
  kTensors,
  // LeaseGrant::tensor_table alone: nothing is copied per tensor.
  kPackedTable,
};

struct RegistryStats {
  uint32_t models = 0;
  uint32_t leases = 0;
  struct DeviceUse {
    std::string uuid;
    uint64_t resident_bytes = 0;
    uint64_t budget_bytes = 0;
    // What the device says it has left (0 when unknown), and the shared
    // memory charged to the daemon beyond its resident models: pages
    // clients still map after their model was unloaded or evicted.
    uint64_t free_bytes = 0;
    uint64_t retained_bytes = 0;
  };
  std::vector<DeviceUse> devices;
};

struct RegistryMetrics;

class Registry {
 public:
  explicit Registry(RegistryOptions options);
  // Cancels loads in progress, waits for their threads and frees every
  // model, leased or not: by then the daemon has stopped serving.
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Starts loading `request`, or joins the load (or the loaded model) of the
  // same name from the same files, and returns the model's status now. The
  // headers are parsed and the files fingerprinted before returning, so a
  // malformed file, a path outside the roots or a missing file fails here
  // (InvalidArgument, PermissionDenied, NotFound) and nothing is listed.
  // The same name from other files, or from files changed since, is
  // AlreadyExists; a FAILED model of that name is replaced by a new load.
  // Unavailable once StopLeasing has been called.
  absl::StatusOr<v1::ModelStatus> Load(const ModelRequest& request);

  // Waits until the model is no longer LOADING, or `deadline`, and returns
  // its status. NotFound when there is (no longer) such a model.
  absl::StatusOr<v1::ModelStatus> WaitLoaded(const std::string& name,
                                             absl::Time deadline);

  // Returns the model's status once it has changed since `*version` (0
  // returns at once) or at `deadline`, and sets `*version`. NotFound when
  // there is (no longer) such a model.
  absl::StatusOr<v1::ModelStatus> WaitForChange(const std::string& name,
                                                uint64_t* version,
                                                absl::Time deadline);

  // Takes a lease for `session`, waiting for a load in progress until
  // `deadline` (DeadlineExceeded). `listing` says whether the grant copies
  // the tensor list (the packed table is in every grant). Errors:
  // NotFound; FailedPrecondition for a FAILED or UNLOADING model;
  // Unavailable after StopLeasing.
  absl::StatusOr<LeaseGrant> Acquire(
      const std::string& name, const std::string& session, absl::Time deadline,
      TensorListing listing = TensorListing::kTensors);

  // Releases a lease of `session`. NotFound for an unknown lease,
  // PermissionDenied for another session's.
  absl::Status Release(const std::string& lease_id, const std::string& session);

  // Releases every lease of `session` (its client went away); returns how
  // many there were.
  int ReleaseSession(const std::string& session);

  // Unloads a model and returns its last status. A loading model is
  // cancelled. A leased one is refused (FailedPrecondition, with the lease
  // count) unless `force`: then its name is free at once (a load of that
  // name starts afresh), no new lease is granted, and its memory, still
  // counted as resident, is freed when its last lease is released: a
  // holder that is stopped or hung cannot keep the name. NotFound when
  // there is no such model.
  absl::StatusOr<v1::ModelStatus> Unload(const std::string& name, bool force);

  // Pins or unpins a model (SIGHUP re-reading the preload list). NotFound
  // when there is no such model.
  absl::Status SetPinned(const std::string& name, bool pinned);

  absl::StatusOr<v1::ModelStatus> Get(const std::string& name) const;
  std::vector<v1::ModelStatus> List() const;  // By name.
  RegistryStats Stats() const;
  // How many leases each session holds (sessions without any are absent).
  std::map<std::string, int> LeasesBySession() const;
  // The uid whose request created the model now under `name`, if known;
  // gone with the model (unload, eviction, failure).
  std::optional<uint32_t> LoadedBy(const std::string& name) const;

  // From now on Acquire and Load fail with Unavailable (shutting down).
  void StopLeasing();
  // Waits until no lease is held or `deadline`; returns the leases left.
  int WaitUntilUnleased(absl::Time deadline);

 private:
  struct Model;
  struct PlannedLoad;
  struct Lease {
    std::string session;
    std::shared_ptr<Model> model;
  };

  // Load's steps, in order.
  void JoinFinishedThreads();
  // The request's device uuids without repeats, or every target's when it
  // names none. InvalidArgument for a uuid no target has.
  absl::StatusOr<std::vector<std::string>> ResolveDevices(
      const ModelRequest& request) const;
  // Parses the request's files, plans the load onto `devices`, opens and
  // fingerprints the files and checks the arena against each device's
  // budget: the errors of a bad path or file, before anything is listed.
  absl::StatusOr<std::unique_ptr<PlannedLoad>> PlanLoad(
      const ModelRequest& request, std::vector<std::string> devices) const;
  // Joins `model`, of the request's name, when it is the same files,
  // layout and devices (pinning it if asked); AlreadyExists naming the
  // difference otherwise, FailedPrecondition while it is being unloaded.
  absl::StatusOr<v1::ModelStatus> JoinLocked(Model& model,
                                             const ModelRequest& request,
                                             const PlannedLoad& planned)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Lists a new LOADING model and starts its load thread.
  v1::ModelStatus StartLoadLocked(const ModelRequest& request,
                                  std::unique_ptr<PlannedLoad> planned)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RunLoad(std::shared_ptr<Model> model,
               std::unique_ptr<PlannedLoad> planned,
               std::shared_ptr<KeyProvider> keys);
  // Loads `plan` onto every device of `model` as one job: each file is read
  // once and copied to every device.
  absl::Status LoadReplicas(Model& model, const LoadPlan& plan,
                            KeyProvider* keys);
  // Reserves room on `target` and allocates the model's arena there in
  // `job`, evicting to make room when the device is full.
  absl::Status AllocateReplica(Model& model, const RegistryTarget& target,
                               LoadJob& job);
  // options_.load with the layout, opener and clock filled in.
  LoadOptions LoadOptionsFor(ModelLayout layout) const;
  absl::Time Now() const;
  // Reserves room for `bytes` on `target` for `model` within its budget,
  // evicting into `evicted`. ResourceExhausted with the figures otherwise.
  absl::Status ReserveLocked(const RegistryTarget& target, uint64_t bytes,
                             Model& model, std::vector<LoadedModel>& evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Evicts the least recently used evictable model on `uuid`; false when
  // there is none.
  bool EvictOneLocked(const std::string& uuid, const Model& loading,
                      std::vector<LoadedModel>& evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  uint64_t ResidentBytesLocked(const std::string& uuid) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The arenas of loads in progress on `uuid` other than `except`: reserved,
  // but not yet (all) in the device's own usage figures.
  uint64_t LoadingBytesLocked(const std::string& uuid,
                              const Model* except) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Removes the model from the table and returns its memory, which the
  // caller frees outside the lock.
  std::vector<LoadedModel> RemoveLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  v1::ModelStatus StatusLocked(const Model& model) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ChangedLocked(Model& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Threads of finished loads, for the caller to join outside the lock.
  std::vector<std::thread> TakeFinishedThreadsLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  const RegistryTarget* FindTarget(const std::string& uuid) const;

  const RegistryOptions options_;
  // Made when options_.metrics is null; before what points into it.
  std::unique_ptr<Metrics> unexported_metrics_;
  Metrics& counted_in_;  // *options_.metrics or *unexported_metrics_.
  const std::unique_ptr<RegistryMetrics> metrics_;

  mutable absl::Mutex mutex_;
  absl::CondVar changed_;
  std::map<std::string, std::shared_ptr<Model>> models_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, Lease> leases_ ABSL_GUARDED_BY(mutex_);
  // Models unloaded by force while leased: no longer named, their memory
  // held until their last lease is released.
  std::vector<std::shared_ptr<Model>> detached_ ABSL_GUARDED_BY(mutex_);
  bool leasing_stopped_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t next_version_ ABSL_GUARDED_BY(mutex_) = 1;
  // Load threads; finished ones are joined at the next load.
  std::map<std::thread::id, std::thread> threads_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::thread::id> finished_threads_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_REGISTRY_REGISTRY_H_
