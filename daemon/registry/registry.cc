#include "daemon/registry/registry.h"

#include <malloc.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/tensor_table.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/loader/layout.h"
#include "daemon/loader/load_job.h"
#include "daemon/registry/fingerprint.h"
#include "daemon/registry/random_id.h"

namespace warmstart {
namespace {

// `tensors` as v1::Lease.tensor_table.
absl::StatusOr<std::string> PackTensorTable(
    const std::vector<LoadedTensor>& tensors) {
  return EncodeTensorTable(tensors.size(), [&tensors](size_t i) {
    const LoadedTensor& tensor = tensors[i];
    return TensorTableEntry{tensor.name,  tensor.dtype,  tensor.role,
                            tensor.shape, tensor.nbytes, tensor.offset};
  });
}

}  // namespace

// What Load learns before it takes the lock: the devices, the parsed
// manifest and its plan (which points into it, so both stay together on
// the heap while the load runs), the layout and the files' fingerprint.
struct Registry::PlannedLoad {
  std::vector<std::string> devices;
  Manifest manifest;
  ModelLayout layout = ModelLayout::kPacked;
  std::optional<LoadPlan> plan;
  Fingerprint fingerprint;
  uint32_t tensor_count = 0;
};

struct Registry::Model {
  std::string name;
  std::string path;
  std::vector<std::string> devices;
  Fingerprint fingerprint;
  ModelLayout layout = ModelLayout::kPacked;
  bool pinned = false;
  std::optional<uint32_t> loaded_by_uid;
  v1::ModelState state = v1::LOADING;
  uint64_t bytes_loaded = 0;  // Over every device.
  uint64_t bytes_total = 0;
  std::string error;
  absl::StatusCode error_code = absl::StatusCode::kOk;
  uint32_t tensor_count = 0;
  uint64_t arena_bytes = 0;  // On each device.
  // Devices where the arena's room is reserved (within the budget); only
  // those count as used.
  std::set<std::string> reserved_on;
  // One per device once loaded, in `devices` order; read only when READY.
  std::vector<LoadedModel> replicas;
  // The replicas' tensor list packed for leases (v1::Lease.tensor_table),
  // set with them; shared with grants, so never changed once set.
  std::shared_ptr<const std::string> tensor_table;
  int leases = 0;
  absl::Time started;
  absl::Time last_used;
  absl::Time last_progress_signal;
  double load_seconds = 0;
  std::atomic<bool> cancel{false};
  uint64_t version = 0;
};

// The registry's metrics, in the Metrics it was given.
struct RegistryMetrics {
  explicit RegistryMetrics(Metrics& m)
      : loads(m.GetCounter("warmstart_loads_total", "Model loads started")),
        load_failures(m.GetCounter("warmstart_load_failures_total",
                                   "Model loads that failed")),
        load_bytes(m.GetCounter("warmstart_load_bytes_total",
                                "Bytes of models loaded onto devices")),
        evictions(m.GetCounter("warmstart_evictions_total",
                               "Models evicted to make room")),
        leases_granted(
            m.GetCounter("warmstart_leases_granted_total", "Leases granted")),
        models(m.GetGauge("warmstart_models", "Models listed")),
        leases(m.GetGauge("warmstart_leases", "Leases held")),
        resident_bytes(m.GetGauge(
            "warmstart_resident_bytes",
            "Bytes of device memory held or reserved for models, all "
            "devices")),
        model_leases(m.GetGaugeFamily("warmstart_model_leases",
                                      "Leases held, per model", {"model"})),
        model_resident_bytes(m.GetGaugeFamily(
            "warmstart_model_resident_bytes",
            "Bytes of device memory held or reserved for a model, per device",
            {"model", "device"})),
        model_ready(m.GetGaugeFamily(
            "warmstart_model_ready",
            "1 when the model is resident and can be leased, else 0",
            {"model"})),
        device_resident_bytes(m.GetGaugeFamily(
            "warmstart_device_resident_bytes",
            "Bytes of device memory held or reserved for models, per device",
            {"device"})),
        load_duration(m.GetHistogramFamily(
            "warmstart_load_duration_seconds",
            "Time to load one replica of a model onto a device (read, copy, "
            "seal)",
            {"model", "device"}, ExponentialBuckets(0.01, 2, 16))),
        read_throughput(m.GetHistogramFamily(
            "warmstart_load_read_bytes_per_second",
            "Bytes per second of one replica's load, from the files to the "
            "device",
            {"model", "device"}, ExponentialBuckets(1e7, 2, 12))),
        acquire_latency(m.GetHistogramFamily(
            "warmstart_acquire_latency_seconds",
            "Time from a lease request to its grant, waiting for a load "
            "included",
            {"model"}, ExponentialBuckets(0.0001, 4, 10))) {}

  Counter* const loads;
  Counter* const load_failures;
  Counter* const load_bytes;
  Counter* const evictions;
  Counter* const leases_granted;
  Gauge* const models;
  Gauge* const leases;
  Gauge* const resident_bytes;
  GaugeFamily* const model_leases;
  GaugeFamily* const model_resident_bytes;
  GaugeFamily* const model_ready;
  GaugeFamily* const device_resident_bytes;
  HistogramFamily* const load_duration;
  HistogramFamily* const read_throughput;
  HistogramFamily* const acquire_latency;
};

namespace {

// A progress change wakes watchers at most this often; state changes always
// do.
constexpr absl::Duration kProgressInterval = absl::Milliseconds(100);
constexpr size_t kMaxNameBytes = 128;
constexpr size_t kMaxPathBytes = 4096;

// The layout asked for, or the default: a lone GGUF file held only in host
// memory becomes a file image, which llama.cpp and other readers of GGUF
// files can map as the file; everything else is packed.
ModelLayout ChooseLayout(v1::ModelLayout asked, const Manifest& manifest,
                         const std::vector<std::string>& devices) {
  if (asked == v1::FILE_IMAGE) return ModelLayout::kFileImage;
  if (asked == v1::PACKED) return ModelLayout::kPacked;
  const bool host_only =
      std::all_of(devices.begin(), devices.end(),
                  [](const std::string& uuid) { return uuid == "host"; });
  const bool one_gguf = manifest.files.size() == 1 &&
                        manifest.files[0].format == Format::kGguf &&
                        !manifest.files[0].big_endian;
  return host_only && one_gguf ? ModelLayout::kFileImage : ModelLayout::kPacked;
}

// The request's path and layout, before anything is opened.
absl::Status CheckPathAndLayout(const ModelRequest& request) {
  if (request.path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", request.name, ": path is empty"));
  }
  if (request.path.size() > kMaxPathBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", request.name, ": path is ", request.path.size(),
                     " bytes, more than ", kMaxPathBytes));
  }
  if (!v1::ModelLayout_IsValid(request.layout)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", request.name, ": layout ", static_cast<int>(request.layout),
        " is unknown (PACKED or FILE_IMAGE)"));
  }
  return absl::OkStatus();
}

absl::Status CheckName(const std::string& name) {
  const bool well_formed =
      !name.empty() && name.size() <= kMaxNameBytes &&
      std::all_of(name.begin(), name.end(), [](char c) {
        return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-';
      });
  if (well_formed) return absl::OkStatus();
  const std::string shown =
      name.size() > 64 ? absl::StrCat(name.substr(0, 64), "...") : name;
  return absl::InvalidArgumentError(absl::StrCat(
      "model name \"", absl::CHexEscape(shown), "\" (", name.size(),
      " bytes): must be 1 to 128 characters of A-Z a-z 0-9 . _ -"));
}

}  // namespace

Registry::Registry(RegistryOptions options)
    : options_(std::move(options)),
      counted_in_(GivenOrUnexported(options_.metrics, unexported_metrics_)),
      metrics_(std::make_unique<RegistryMetrics>(counted_in_)) {}

Registry::~Registry() {
  std::map<std::thread::id, std::thread> threads;
  {
    absl::MutexLock lock(&mutex_);
    leasing_stopped_ = true;
    for (auto& [name, model] : models_) model->cancel = true;
    threads.swap(threads_);
  }
  for (auto& [id, thread] : threads) thread.join();
  std::map<std::string, std::shared_ptr<Model>> models;
  std::vector<std::shared_ptr<Model>> detached;
  {
    absl::MutexLock lock(&mutex_);
    leases_.clear();
    models.swap(models_);
    detached.swap(detached_);
    UpdateGaugesLocked();
  }
}

const RegistryTarget* Registry::FindTarget(const std::string& uuid) const {
  for (const RegistryTarget& target : options_.targets) {
    if (target.device->uuid() == uuid) return &target;
  }
  return nullptr;
}

absl::StatusOr<v1::ModelStatus> Registry::Load(const ModelRequest& request) {
  WS_RETURN_IF_ERROR(CheckName(request.name));
  JoinFinishedThreads();
  WS_RETURN_IF_ERROR(CheckPathAndLayout(request));
  WS_ASSIGN_OR_RETURN(std::vector<std::string> devices,
                      ResolveDevices(request));
  // Parsing, planning and fingerprinting read headers only; doing it here,
  // before the model is listed, turns bad paths and files into an error of
  // this call.
  WS_ASSIGN_OR_RETURN(std::unique_ptr<PlannedLoad> planned,
                      PlanLoad(request, std::move(devices)));

  absl::MutexLock lock(&mutex_);
  if (leasing_stopped_) {
    return absl::UnavailableError("the daemon is shutting down");
  }
  auto it = models_.find(request.name);
  if (it != models_.end() && it->second->state == v1::FAILED) {
    RemoveLocked(request.name);
    it = models_.end();
  }
  if (it != models_.end()) return JoinLocked(*it->second, request, *planned);
  return StartLoadLocked(request, std::move(planned));
}

void Registry::JoinFinishedThreads() {
  // Threads of finished loads are joined here, outside the lock: their
  // last act (freeing what a failed load allocated) may take a while.
  std::vector<std::thread> finished;
  {
    absl::MutexLock lock(&mutex_);
    finished = TakeFinishedThreadsLocked();
  }
  for (std::thread& thread : finished) thread.join();
}

absl::StatusOr<std::vector<std::string>> Registry::ResolveDevices(
    const ModelRequest& request) const {
  std::vector<std::string> devices;
  for (const std::string& uuid : request.devices) {
    if (FindTarget(uuid) == nullptr) {
      std::vector<std::string> known;
      for (const RegistryTarget& target : options_.targets) {
        known.push_back(target.device->uuid());
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "model ", request.name, ": no device \"",
          absl::CHexEscape(uuid.substr(0, 64)), "\" (this daemon has ",
          absl::StrJoin(known, ", "), ")"));
    }
    if (std::find(devices.begin(), devices.end(), uuid) == devices.end()) {
      devices.push_back(uuid);
    }
  }
  if (devices.empty()) {
    for (const RegistryTarget& target : options_.targets) {
      devices.push_back(target.device->uuid());
    }
  }
  return devices;
}

absl::StatusOr<std::unique_ptr<Registry::PlannedLoad>> Registry::PlanLoad(
    const ModelRequest& request, std::vector<std::string> devices) const {
  // The plan opens each file once; the load reads through those
  // descriptors and the fingerprints come from them.
  ParseOptions parse_options;
  parse_options.opener = options_.opener;
  parse_options.remote = options_.load.remote;
  auto planned = std::make_unique<PlannedLoad>();
  planned->devices = std::move(devices);
  WS_ASSIGN_OR_RETURN(planned->manifest,
                      OpenCheckpoint(request.path, parse_options));
  const Manifest& manifest = planned->manifest;
  planned->layout = ChooseLayout(request.layout, manifest, planned->devices);
  absl::StatusOr<LoadPlan> plan =
      LoadPlan::Make(manifest, planned->layout, options_.load.alignment,
                     FindTarget(planned->devices[0])->loader->slab_bytes(),
                     options_.load.read_bytes);
  if (!plan.ok()) {
    return absl::Status(plan.status().code(),
                        absl::StrCat("model ", request.name, " as ",
                                     ModelLayoutName(planned->layout), ": ",
                                     plan.status().message()));
  }
  planned->plan.emplace(*std::move(plan));
  WS_RETURN_IF_ERROR(planned->plan->OpenFiles(LoadOptionsFor(planned->layout)));
  WS_ASSIGN_OR_RETURN(planned->fingerprint, FingerprintPlan(*planned->plan));
  for (const FileManifest& file : manifest.files) {
    planned->tensor_count += static_cast<uint32_t>(file.tensors.size());
  }
  const uint64_t arena_bytes = planned->plan->size().arena_bytes;
  for (const std::string& uuid : planned->devices) {
    const RegistryTarget& target = *FindTarget(uuid);
    if (target.budget_bytes != 0 && arena_bytes > target.budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "model ", request.name, " needs ", arena_bytes, " bytes on ", uuid,
          ", more than its whole budget of ", target.budget_bytes, " bytes"));
    }
  }
  return planned;
}

absl::StatusOr<v1::ModelStatus> Registry::JoinLocked(
    Model& model, const ModelRequest& request, const PlannedLoad& planned) {
  if (model.path != request.path) {
    return absl::AlreadyExistsError(absl::StrCat(
        "model ", request.name, " is already loaded from ", model.path,
        "; unload it before loading ", request.path, " under that name"));
  }
  const std::string change =
      DescribeChange(model.fingerprint, planned.fingerprint);
  if (!change.empty()) {
    return absl::AlreadyExistsError(
        absl::StrCat("model ", request.name, " is loaded from ", model.path,
                     ", which changed on disk since (", change,
                     "); unload it and load it again"));
  }
  if (request.layout != v1::MODEL_LAYOUT_UNSPECIFIED &&
      planned.layout != model.layout) {
    return absl::AlreadyExistsError(absl::StrCat(
        "model ", request.name, " is held as ", ModelLayoutName(model.layout),
        ", not ", ModelLayoutName(planned.layout),
        "; unload it before loading it in another layout"));
  }
  if (!request.devices.empty() && planned.devices != model.devices) {
    return absl::AlreadyExistsError(
        absl::StrCat("model ", request.name, " is loaded on ",
                     absl::StrJoin(model.devices, ", "), ", not ",
                     absl::StrJoin(planned.devices, ", ")));
  }
  if (model.state == v1::UNLOADING) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", request.name,
                     " is being unloaded; load it again once it is gone"));
  }
  if (request.pinned && !model.pinned) {
    model.pinned = true;
    ChangedLocked(model);
  }
  return StatusLocked(model);
}

v1::ModelStatus Registry::StartLoadLocked(
    const ModelRequest& request, std::unique_ptr<PlannedLoad> planned) {
  const LoadSize& size = planned->plan->size();
  auto model = std::make_shared<Model>();
  model->name = request.name;
  model->path = request.path;
  model->devices = planned->devices;
  model->fingerprint = std::move(planned->fingerprint);
  model->layout = planned->layout;
  model->pinned = request.pinned;
  model->loaded_by_uid = request.requested_by_uid;
  model->bytes_total = size.load_bytes * model->devices.size();
  model->tensor_count = planned->tensor_count;
  model->arena_bytes = size.arena_bytes;
  model->started = Now();
  model->last_used = model->started;
  models_[request.name] = model;
  ChangedLocked(*model);
  UpdateGaugesLocked();
  metrics_->loads->Add();
  Logger("registry")
      ->info("loading model {} from {} onto {} ({} bytes, {})", request.name,
             request.path, absl::StrJoin(model->devices, ", "), size.load_bytes,
             ModelLayoutName(model->layout));

  // The new thread blocks on mutex_ until this call returns, so it cannot
  // finish before it is recorded.
  std::thread thread(&Registry::RunLoad, this, model, std::move(planned),
                     request.keys);
  const std::thread::id id = thread.get_id();
  threads_.emplace(id, std::move(thread));
  return StatusLocked(*model);
}

void Registry::RunLoad(std::shared_ptr<Model> model,
                       std::unique_ptr<PlannedLoad> planned,
                       std::shared_ptr<KeyProvider> keys) {
  absl::Status status = LoadReplicas(*model, *planned->plan, keys.get());
  std::vector<LoadedModel> removed;
  std::vector<LoadedModel> to_free;
  auto log = Logger("registry");
  {
    absl::MutexLock lock(&mutex_);
    if (status.ok() && model->cancel) {
      status = absl::CancelledError("unloaded while loading");
    }
    if (status.ok()) {
      model->state = v1::READY;
      model->load_seconds = absl::ToDoubleSeconds(Now() - model->started);
      model->last_used = Now();
      metrics_->load_bytes->Add(model->bytes_total);
      log->info("model {} ready: {} tensors, {} bytes in {:.2f} s", model->name,
                model->tensor_count, model->bytes_total, model->load_seconds);
    } else {
      to_free.swap(model->replicas);
      if (model->cancel) {
        auto it = models_.find(model->name);
        if (it != models_.end() && it->second == model) {
          removed = RemoveLocked(model->name);
        }
        log->info("model {}: load cancelled", model->name);
      } else {
        model->state = v1::FAILED;
        model->error = std::string(status.message());
        model->error_code = status.code();
        metrics_->load_failures->Add();
        log->error("model {} failed to load: {}", model->name,
                   status.message());
      }
    }
    ChangedLocked(*model);
    UpdateGaugesLocked();
    finished_threads_.push_back(std::this_thread::get_id());
  }
  // Device memory is freed here, outside the lock.
  to_free.clear();
  removed.clear();
  planned.reset();
  // Parsing a header of 100k+ tensors (a JSON document of megabytes) and
  // the manifest leave hundreds of bytes per tensor free in glibc's arenas,
  // which it keeps: return them, so that what stays per tensor is the
  // table the model keeps (measured in tests/daemon_hardening_test.py).
  ::malloc_trim(0);
}

LoadOptions Registry::LoadOptionsFor(ModelLayout layout) const {
  LoadOptions options = options_.load;
  options.layout = layout;
  options.opener = options_.opener;
  options.now = [this] { return Now(); };
  options.metrics = &counted_in_;
  return options;
}

absl::Time Registry::Now() const {
  return options_.now ? options_.now() : absl::Now();
}

absl::Status Registry::LoadReplicas(Model& model, const LoadPlan& plan,
                                    KeyProvider* keys) {
  LoadOptions options = LoadOptionsFor(model.layout);
  options.keys = keys;
  options.cancel = &model.cancel;
  options.on_progress = [this, &model](const LoadProgress& progress) {
    absl::MutexLock lock(&mutex_);
    model.bytes_loaded = progress.bytes_done;
    const absl::Time now = Now();
    if (now - model.last_progress_signal >= kProgressInterval ||
        progress.bytes_done == progress.bytes_total) {
      model.last_progress_signal = now;
      ChangedLocked(model);
    }
  };
  // One job for every device: each chunk is read once, through the first
  // device's engine and slabs, and copied to every device.
  const RegistryTarget& first = *FindTarget(model.devices.front());
  std::unique_ptr<LoadJob> job =
      first.loader->NewJob(plan, model.name, options);
  const absl::Time load_started = Now();
  for (const std::string& uuid : model.devices) {
    WS_RETURN_IF_ERROR(AllocateReplica(model, *FindTarget(uuid), *job));
  }
  absl::Status filled = job->Fill();
  absl::StatusOr<std::vector<LoadedModel>> loaded =
      filled.ok() ? job->Publish() : filled;
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat("loading model ", model.name, " onto ",
                                     absl::StrJoin(model.devices, ", "), ": ",
                                     loaded.status().message()));
  }
  const double seconds = absl::ToDoubleSeconds(Now() - load_started);
  const uint64_t per_device = model.bytes_total / model.devices.size();
  for (const std::string& uuid : model.devices) {
    metrics_->load_duration->WithLabels({model.name, uuid})->Observe(seconds);
    if (seconds > 0) {
      metrics_->read_throughput->WithLabels({model.name, uuid})
          ->Observe(static_cast<double>(per_device) / seconds);
    }
  }
  // Packed once here, outside the lock, so that an acquire sends these
  // bytes instead of building a message per tensor.
  absl::StatusOr<std::string> table = PackTensorTable(loaded->front().tensors);
  if (!table.ok()) {
    return absl::Status(
        table.status().code(),
        absl::StrCat("model ", model.name, ": ", table.status().message()));
  }
  auto shared_table = std::make_shared<const std::string>(*std::move(table));
  {
    // The job has sealed the arenas: clients can only map them read-only.
    absl::MutexLock lock(&mutex_);
    model.replicas = *std::move(loaded);
    model.tensor_table = std::move(shared_table);
  }
  // The files were read through the descriptors fingerprinted when the
  // load was asked for; make sure nothing rewrote them meanwhile.
  WS_ASSIGN_OR_RETURN(Fingerprint now, FingerprintPlan(plan));
  const std::string change = DescribeChange(model.fingerprint, now);
  if (!change.empty()) {
    return absl::DataLossError(absl::StrCat(
        "model ", model.name, ": files changed while loading: ", change));
  }
  return absl::OkStatus();
}

absl::Status Registry::AllocateReplica(Model& model,
                                       const RegistryTarget& target,
                                       LoadJob& job) {
  const std::string& uuid = target.device->uuid();
  std::vector<LoadedModel> evicted;
  {
    absl::MutexLock lock(&mutex_);
    WS_RETURN_IF_ERROR(
        ReserveLocked(target, model.arena_bytes, model, evicted));
  }
  evicted.clear();
  while (true) {
    absl::Status allocated = job.Allocate(target.device);
    if (allocated.ok()) return allocated;
    // The device itself is full: make room the way a budget would.
    bool made_room = false;
    if (IsDeviceFull(allocated) && !model.cancel) {
      absl::MutexLock lock(&mutex_);
      made_room = EvictOneLocked(uuid, model, evicted);
    }
    evicted.clear();
    if (!made_room) {
      return absl::Status(allocated.code(),
                          absl::StrCat("loading model ", model.name, " onto ",
                                       uuid, ": ", allocated.message()));
    }
  }
}

uint64_t Registry::ResidentBytesLocked(const std::string& uuid) const {
  uint64_t bytes = 0;
  for (const auto& [name, model] : models_) {
    if (model->state != v1::FAILED && model->reserved_on.count(uuid) > 0) {
      bytes += model->arena_bytes;
    }
  }
  for (const std::shared_ptr<Model>& model : detached_) {
    if (model->reserved_on.count(uuid) > 0) bytes += model->arena_bytes;
  }
  return bytes;
}

uint64_t Registry::LoadingBytesLocked(const std::string& uuid,
                                      const Model* except) const {
  uint64_t bytes = 0;
  for (const auto& [name, model] : models_) {
    if (model.get() != except && model->state == v1::LOADING &&
        model->reserved_on.count(uuid) > 0) {
      bytes += model->arena_bytes;
    }
  }
  return bytes;
}

absl::Status Registry::ReserveLocked(const RegistryTarget& target,
                                     uint64_t bytes, Model& model,
                                     std::vector<LoadedModel>& evicted) {
  const std::string& uuid = target.device->uuid();
  // Read under the lock: two loads reserving at once see each other's
  // reservations, so they cannot both take the same free memory (the old
  // per-allocation check let them).
  const DeviceMemory memory = target.device->Memory();
  const uint64_t resident = ResidentBytesLocked(uuid);
  // Memory clients keep after their model went counts against the
  // configured budget too (the device's own figure already holds it).
  const uint64_t retained =
      memory.shared_bytes > resident ? memory.shared_bytes - resident : 0;
  // What the device allows the registry's models in all: what they hold
  // now plus what is free, less the loads in progress whose pages are not
  // all in the device's usage yet (counted twice at worst: refusing a load
  // that might have fitted beats an OOM kill).
  uint64_t device_budget = std::numeric_limits<uint64_t>::max();
  if (memory.free_bytes.has_value()) {
    const uint64_t loading = LoadingBytesLocked(uuid, &model);
    device_budget =
        resident +
        (*memory.free_bytes > loading ? *memory.free_bytes - loading : 0);
  }
  while (true) {
    const uint64_t held = ResidentBytesLocked(uuid);
    const bool over_budget = target.budget_bytes != 0 &&
                             held + retained + bytes > target.budget_bytes;
    const bool over_device = held + bytes > device_budget;
    if (!over_budget && !over_device) break;
    if (EvictOneLocked(uuid, model, evicted)) continue;
    if (over_budget) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "model ", model.name, " needs ", bytes, " bytes on ", uuid,
          "; the budget is ", target.budget_bytes, " bytes and ", held,
          " are held by models that are pinned, leased or loading",
          retained == 0
              ? ""
              : absl::StrCat(", ", retained,
                             " by clients still mapping models already "
                             "unloaded")));
    }
    return absl::ResourceExhaustedError(
        absl::StrCat("model ", model.name, " needs ", bytes, " bytes on ", uuid,
                     "; ", *memory.free_bytes, " bytes are free under ",
                     memory.source, ", ", LoadingBytesLocked(uuid, &model),
                     " of them reserved by loads in progress, and ", held,
                     " are held by models that are pinned, leased or loading"));
  }
  model.reserved_on.insert(uuid);
  UpdateGaugesLocked();
  return absl::OkStatus();
}

bool Registry::EvictOneLocked(const std::string& uuid, const Model& loading,
                              std::vector<LoadedModel>& evicted) {
  const Model* victim = nullptr;
  for (const auto& [name, model] : models_) {
    if (model.get() == &loading || model->state != v1::READY ||
        model->leases > 0 || model->pinned ||
        std::find(model->devices.begin(), model->devices.end(), uuid) ==
            model->devices.end()) {
      continue;
    }
    if (victim == nullptr || model->last_used < victim->last_used) {
      victim = model.get();
    }
  }
  if (victim == nullptr) return false;
  Logger("registry")
      ->info(
          "evicting model {} ({} bytes on {}, unused for {:.1f} s) to make "
          "room "
          "for {}",
          victim->name, victim->arena_bytes, uuid,
          absl::ToDoubleSeconds(Now() - victim->last_used), loading.name);
  metrics_->evictions->Add();
  for (LoadedModel& replica : RemoveLocked(victim->name)) {
    evicted.push_back(std::move(replica));
  }
  return true;
}

std::vector<LoadedModel> Registry::RemoveLocked(const std::string& name) {
  auto it = models_.find(name);
  std::shared_ptr<Model> model = std::move(it->second);
  models_.erase(it);
  ChangedLocked(*model);
  UpdateGaugesLocked();
  // The memory goes with the caller, not with the last reference to the
  // Model (a load thread may still hold one for a moment).
  std::vector<LoadedModel> replicas;
  replicas.swap(model->replicas);
  return replicas;
}

void Registry::ChangedLocked(Model& model) {
  model.version = next_version_++;
  changed_.SignalAll();
}

std::vector<std::thread> Registry::TakeFinishedThreadsLocked() {
  std::vector<std::thread> finished;
  for (const std::thread::id& id : finished_threads_) {
    auto it = threads_.find(id);
    finished.push_back(std::move(it->second));
    threads_.erase(it);
  }
  finished_threads_.clear();
  return finished;
}

void Registry::UpdateGaugesLocked() {
  metrics_->models->Set(static_cast<int64_t>(models_.size()));
  metrics_->leases->Set(static_cast<int64_t>(leases_.size()));
  uint64_t resident = 0;
  std::map<LabelValues, int64_t> per_device;
  for (const RegistryTarget& target : options_.targets) {
    const uint64_t bytes = ResidentBytesLocked(target.device->uuid());
    per_device[{target.device->uuid()}] = static_cast<int64_t>(bytes);
    resident += bytes;
  }
  metrics_->resident_bytes->Set(static_cast<int64_t>(resident));
  metrics_->device_resident_bytes->ReplaceAll(std::move(per_device));
  // Per-model series go with their model: a name unloaded stops being
  // exported instead of staying at its last value.
  std::map<LabelValues, int64_t> leases;
  std::map<LabelValues, int64_t> ready;
  std::map<LabelValues, int64_t> resident_per_model;
  for (const auto& [name, model] : models_) {
    leases[{name}] = model->leases;
    ready[{name}] = model->state == v1::READY ? 1 : 0;
    for (const std::string& uuid : model->devices) {
      resident_per_model[{name, uuid}] =
          static_cast<int64_t>(model->arena_bytes);
    }
  }
  metrics_->model_leases->ReplaceAll(std::move(leases));
  metrics_->model_ready->ReplaceAll(std::move(ready));
  metrics_->model_resident_bytes->ReplaceAll(std::move(resident_per_model));
}

v1::ModelStatus Registry::StatusLocked(const Model& model) const {
  v1::ModelStatus status;
  status.set_name(model.name);
  status.set_path(model.path);
  status.set_state(model.state);
  status.set_bytes_loaded(model.state == v1::READY ? model.bytes_total
                                                   : model.bytes_loaded);
  status.set_bytes_total(model.bytes_total);
  const double seconds = model.state == v1::LOADING
                             ? absl::ToDoubleSeconds(Now() - model.started)
                             : model.load_seconds;
  if (seconds > 0) {
    status.set_bytes_per_second(static_cast<double>(status.bytes_loaded()) /
                                seconds);
  }
  status.set_error(model.error);
  status.set_error_code(static_cast<int32_t>(model.error_code));
  status.set_leases(static_cast<uint32_t>(model.leases));
  status.set_pinned(model.pinned);
  for (const std::string& uuid : model.devices) status.add_devices(uuid);
  status.set_tensor_count(model.tensor_count);
  status.set_resident_bytes(model.arena_bytes);
  status.set_load_seconds(model.load_seconds);
  status.set_layout(model.layout == ModelLayout::kFileImage ? v1::FILE_IMAGE
                                                            : v1::PACKED);
  return status;
}

absl::StatusOr<v1::ModelStatus> Registry::WaitLoaded(const std::string& name,
                                                     absl::Time deadline) {
  WS_RETURN_IF_ERROR(CheckName(name));
  absl::MutexLock lock(&mutex_);
  while (true) {
    auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(absl::StrCat("no model named ", name));
    }
    if (it->second->state != v1::LOADING) return StatusLocked(*it->second);
    if (changed_.WaitWithDeadline(&mutex_, deadline)) {
      it = models_.find(name);
      if (it == models_.end()) continue;
      return StatusLocked(*it->second);
    }
  }
}

absl::StatusOr<v1::ModelStatus> Registry::WaitForChange(const std::string& name,
                                                        uint64_t* version,
                                                        absl::Time deadline) {
  WS_RETURN_IF_ERROR(CheckName(name));
  absl::MutexLock lock(&mutex_);
  while (true) {
    auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(absl::StrCat("no model named ", name));
    }
    const bool timed_out = it->second->version > *version
                               ? false
                               : changed_.WaitWithDeadline(&mutex_, deadline);
    it = models_.find(name);
    if (it == models_.end()) continue;
    if (it->second->version > *version || timed_out) {
      *version = it->second->version;
      return StatusLocked(*it->second);
    }
  }
}

absl::StatusOr<LeaseGrant> Registry::Acquire(const std::string& name,
                                             const std::string& session,
                                             absl::Time deadline,
                                             TensorListing listing) {
  WS_RETURN_IF_ERROR(CheckName(name));
  const absl::Time requested = Now();
  absl::MutexLock lock(&mutex_);
  while (true) {
    if (leasing_stopped_) {
      return absl::UnavailableError(
          "the daemon is shutting down and grants no new leases");
    }
    auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(absl::StrCat("no model named ", name));
    }
    Model& model = *it->second;
    if (model.state != v1::LOADING) break;
    if (changed_.WaitWithDeadline(&mutex_, deadline)) {
      it = models_.find(name);
      if (it != models_.end() && it->second->state == v1::LOADING) {
        return absl::DeadlineExceededError(
            absl::StrFormat("model %s is still loading (%d of %d bytes)", name,
                            it->second->bytes_loaded, it->second->bytes_total));
      }
    }
  }
  const std::shared_ptr<Model>& model = models_.at(name);
  if (model->state == v1::FAILED) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", name, " failed to load: ", model->error));
  }
  if (model->state == v1::UNLOADING) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", name, " is being unloaded"));
  }
  LeaseGrant grant;
  grant.lease_id = RandomId();
  ++model->leases;
  model->last_used = Now();
  leases_[grant.lease_id] = Lease{session, model};
  ChangedLocked(*model);
  UpdateGaugesLocked();
  metrics_->leases_granted->Add();
  metrics_->acquire_latency->WithLabels({name})->Observe(
      absl::ToDoubleSeconds(Now() - requested));
  grant.model = StatusLocked(*model);
  if (listing == TensorListing::kTensors) {
    grant.tensors = model->replicas.front().tensors;
  }
  grant.tensor_table = model->tensor_table;
  grant.metadata_json = model->replicas.front().metadata_json;
  for (size_t i = 0; i < model->devices.size(); ++i) {
    grant.memory.push_back(
        {model->devices[i], model->replicas[i].arena->Export()});
  }
  return grant;
}

absl::Status Registry::Release(const std::string& lease_id,
                               const std::string& session) {
  std::vector<LoadedModel> freed;
  absl::MutexLock lock(&mutex_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "no lease \"", absl::CHexEscape(lease_id.substr(0, 64)), "\""));
  }
  if (it->second.session != session) {
    return absl::PermissionDeniedError(
        absl::StrCat("lease ", lease_id, " belongs to another session"));
  }
  std::shared_ptr<Model> model = std::move(it->second.model);
  leases_.erase(it);
  --model->leases;
  model->last_used = Now();
  ChangedLocked(*model);
  if (model->state == v1::UNLOADING && model->leases == 0) {
    auto listed = models_.find(model->name);
    if (listed != models_.end() && listed->second == model) {
      freed = RemoveLocked(model->name);
      Logger("registry")
          ->info("model {} unloaded: its last lease is released", model->name);
    }
    auto detached = std::find(detached_.begin(), detached_.end(), model);
    if (detached != detached_.end()) {
      freed.swap(model->replicas);
      detached_.erase(detached);
      Logger("registry")
          ->info(
              "memory of model {}, unloaded by force, freed: its last "
              "lease is released",
              model->name);
    }
  }
  UpdateGaugesLocked();
  // The mutex is released before `freed` (declared first) frees the memory.
  return absl::OkStatus();
}

std::map<std::string, int> Registry::LeasesBySession() const {
  std::map<std::string, int> counts;
  absl::MutexLock lock(&mutex_);
  for (const auto& [id, lease] : leases_) ++counts[lease.session];
  return counts;
}

std::optional<uint32_t> Registry::LoadedBy(const std::string& name) const {
  absl::MutexLock lock(&mutex_);
  auto it = models_.find(name);
  if (it == models_.end()) return std::nullopt;
  return it->second->loaded_by_uid;
}

int Registry::ReleaseSession(const std::string& session) {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [id, lease] : leases_) {
      if (lease.session == session) ids.push_back(id);
    }
  }
  int released = 0;
  for (const std::string& id : ids) {
    if (Release(id, session).ok()) ++released;
  }
  return released;
}

absl::StatusOr<v1::ModelStatus> Registry::Unload(const std::string& name,
                                                 bool force) {
  WS_RETURN_IF_ERROR(CheckName(name));
  std::vector<LoadedModel> freed;
  absl::MutexLock lock(&mutex_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("no model named ", name));
  }
  Model& model = *it->second;
  switch (model.state) {
    case v1::LOADING:
      // The load thread sees the flag between chunks and removes the model.
      model.cancel = true;
      model.state = v1::UNLOADING;
      ChangedLocked(model);
      return StatusLocked(model);
    case v1::UNLOADING:
      return StatusLocked(model);
    case v1::READY:
      if (model.leases > 0) {
        if (!force) {
          return absl::FailedPreconditionError(absl::StrCat(
              "model ", name, " has ", model.leases,
              " lease(s); unload --force stops new leases and frees it once "
              "they are released"));
        }
        model.state = v1::UNLOADING;
        ChangedLocked(model);
        // The name is freed now: a holder that never releases (stopped,
        // hung) must not keep it. The memory stays with the leases.
        v1::ModelStatus last = StatusLocked(model);
        detached_.push_back(std::move(it->second));
        models_.erase(it);
        UpdateGaugesLocked();
        Logger("registry")
            ->info(
                "model {} unloaded by force: its name is free; its memory "
                "goes when its {} lease(s) are released",
                name, last.leases());
        return last;
      }
      break;
    default:
      break;
  }
  v1::ModelStatus last = StatusLocked(model);
  last.set_state(v1::UNLOADING);
  freed = RemoveLocked(name);
  Logger("registry")->info("model {} unloaded", name);
  return last;
}

absl::Status Registry::SetPinned(const std::string& name, bool pinned) {
  WS_RETURN_IF_ERROR(CheckName(name));
  absl::MutexLock lock(&mutex_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("no model named ", name));
  }
  it->second->pinned = pinned;
  ChangedLocked(*it->second);
  return absl::OkStatus();
}

absl::StatusOr<v1::ModelStatus> Registry::Get(const std::string& name) const {
  WS_RETURN_IF_ERROR(CheckName(name));
  absl::MutexLock lock(&mutex_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("no model named ", name));
  }
  return StatusLocked(*it->second);
}

std::vector<v1::ModelStatus> Registry::List() const {
  absl::MutexLock lock(&mutex_);
  std::vector<v1::ModelStatus> list;
  for (const auto& [name, model] : models_)
    list.push_back(StatusLocked(*model));
  return list;
}

RegistryStats Registry::Stats() const {
  absl::MutexLock lock(&mutex_);
  RegistryStats stats;
  stats.models = static_cast<uint32_t>(models_.size());
  stats.leases = static_cast<uint32_t>(leases_.size());
  for (const RegistryTarget& target : options_.targets) {
    RegistryStats::DeviceUse use;
    use.uuid = target.device->uuid();
    use.resident_bytes = ResidentBytesLocked(use.uuid);
    use.budget_bytes = target.budget_bytes;
    const DeviceMemory memory = target.device->Memory();
    use.free_bytes = memory.free_bytes.value_or(0);
    use.retained_bytes = memory.shared_bytes > use.resident_bytes
                             ? memory.shared_bytes - use.resident_bytes
                             : 0;
    stats.devices.push_back(std::move(use));
  }
  return stats;
}

void Registry::StopLeasing() {
  absl::MutexLock lock(&mutex_);
  leasing_stopped_ = true;
  changed_.SignalAll();
}

int Registry::WaitUntilUnleased(absl::Time deadline) {
  absl::MutexLock lock(&mutex_);
  while (!leases_.empty()) {
    if (changed_.WaitWithDeadline(&mutex_, deadline)) break;
  }
  return static_cast<int>(leases_.size());
}

}  // namespace warmstart
