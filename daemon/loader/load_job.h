// A load as a job: a LoadPlan made once per model (the checks, the arena
// layout, the reads, the files opened once), then a LoadJob that runs its
// named steps against one or more devices:
//
//   LoadPlan::Make -> LoadPlan::OpenFiles -> LoadJob::Allocate (per device)
//   -> LoadJob::Fill -> LoadJob::Publish
//
// Fill reads every chunk of the files once into a staging slab and copies
// it to every device's arena: a model placed on N devices is read from its
// files once, not N times.
//
// All or nothing: a job destroyed before Publish has returned frees every
// arena it allocated; a failed Fill has waited for every read and copy and
// returned every slab.
#ifndef WARMSTART_DAEMON_LOADER_LOAD_JOB_H_
#define WARMSTART_DAEMON_LOADER_LOAD_JOB_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/device/device.h"
#include "daemon/formats/manifest.h"
#include "daemon/formats/tensor_data.h"
#include "daemon/io/read_engine.h"
#include "daemon/io/read_file.h"
#include "daemon/loader/layout.h"
#include "daemon/loader/loader.h"
#include "daemon/remote/remote_source.h"
#include "daemon/staging/staging_pool.h"

namespace warmstart {

// What a load of one manifest reads and where the bytes go, the same for
// every device. Move-only: owns the descriptors of the opened files.
// Thread safety: const methods may be called from any thread.
class LoadPlan {
 public:
  // Checks that `manifest` can be loaded in `layout` (see Loader::Load),
  // lays out its arena with `alignment` and plans its reads in chunks that
  // fit staging slabs of `slab_bytes`. Opens nothing. `manifest` is not
  // copied and must outlive the plan. Errors: InvalidArgument naming the
  // file and the reason (big-endian GGUF, what a file image cannot hold, a
  // cipher chunk larger than a slab, slabs or `read_bytes` unusable).
  static absl::StatusOr<LoadPlan> Make(const Manifest& manifest,
                                       ModelLayout layout, uint64_t alignment,
                                       uint64_t slab_bytes,
                                       uint64_t read_bytes);

  LoadPlan(LoadPlan&&) = default;
  LoadPlan& operator=(LoadPlan&&) = default;

  // Opens every local file of the manifest once (O_DIRECT when
  // `options.direct_io`, through `options.opener`) and every remote object
  // that has bytes to read (checking its size and ETag against the
  // manifest). Errors: the opener's and errno's, naming the path;
  // FailedPrecondition for URLs without remote sources; DataLoss for a
  // remote object that changed since it was parsed.
  absl::Status OpenFiles(const LoadOptions& options);

  // The model's manifest, as given to Make.
  const Manifest& manifest() const { return *manifest_; }
  // What is read: the manifest itself (packed), or the whole file as one
  // tensor of bytes (file image).
  const Manifest& reads() const {
    return whole_file_.has_value() ? *whole_file_ : *manifest_;
  }
  ModelLayout layout() const { return layout_; }
  const ArenaLayout& arena() const { return arena_; }
  const std::vector<ReadChunk>& chunks() const { return chunks_; }
  // The bytes one device's arena takes and one device's load fills.
  const LoadSize& size() const { return size_; }
  // A loaded model without its arena: the tensor table and metadata.
  const LoadedModel& model() const { return model_; }

  // The opened local file of reads().files[index]; null for a remote one or
  // before OpenFiles.
  const ReadFile* local_file(size_t index) const;
  // The opened remote object of reads().files[index]; null when local or
  // with nothing to read.
  const RemoteObject* remote_file(size_t index) const;
  // Every opened local file, by index into manifest().files (which for a
  // file image is the one file of reads()).
  const std::map<size_t, ReadFile>& local_files() const { return local_; }

 private:
  LoadPlan() = default;

  const Manifest* manifest_ = nullptr;
  std::optional<Manifest> whole_file_;
  ModelLayout layout_ = ModelLayout::kPacked;
  ArenaLayout arena_;
  std::vector<ReadChunk> chunks_;
  LoadSize size_;
  LoadedModel model_;
  std::map<size_t, ReadFile> local_;
  std::map<size_t, std::unique_ptr<RemoteObject>> remote_;
};

// One load of a plan onto one or more devices. Not copyable or movable:
// reads and copies in flight point at it.
// Thread safety: one thread runs the steps, in order.
class LoadJob {
 public:
  // `engine`, `pool` and `plan` must outlive the job; `plan` has opened its
  // files. `options` gives layout-independent settings: read_bytes, keys,
  // verify_checksums, on_progress (bytes of every device together), cancel
  // and now (the clock for the progress rate).
  LoadJob(ReadEngine* engine, StagingPool* pool, const LoadPlan* plan,
          std::string label, LoadOptions options);
  ~LoadJob();
  LoadJob(const LoadJob&) = delete;
  LoadJob& operator=(const LoadJob&) = delete;

  // Step: allocates one zeroed arena on `device` (not owned; must outlive
  // the job), which Fill will fill. Errors: the device's (IsDeviceFull when
  // it has no room: the caller may make room and call again).
  // REQUIRES: Fill has not been called.
  absl::Status Allocate(Device* device);

  // Step: reads every chunk once and copies each to every arena, decrypting
  // and verifying once. On error every read and copy has completed and
  // every slab is back in the pool. REQUIRES: at least one Allocate.
  absl::Status Fill();

  // Step: seals every arena (read-only for clients) and, for a file image
  // with verify_checksums, checks the file's checksums on the image; then
  // hands out one model per device, in Allocate order.
  // REQUIRES: Fill returned OK.
  absl::StatusOr<std::vector<LoadedModel>> Publish();

 private:
  // One planned read and what became of it.
  struct ChunkSlot {
    StagingPool::Slab slab;
    uint64_t lead = 0;  // Where the chunk's bytes start in the slab.
    // Reads not yet completed: one per LoadOptions::read_bytes of a staged
    // chunk, one per piece for a chunk read in place.
    int pending_reads = 0;
    bool done = false;
    absl::Status status;
  };
  struct CopyErrors;

  absl::Status PrepareKeysAndVerifiers();
  void StartProgress();
  // Keeps chunks read ahead of chunk `i` as free slabs allow; sets
  // `*next_submit` past the last chunk submitted.
  absl::Status SubmitAhead(size_t i, size_t* next_submit);
  bool ReadsInPlace(const ReadChunk& chunk) const;
  void SubmitStaged(size_t i, StagingPool::Slab slab);
  void SubmitRemote(size_t i, const RemoteObject& remote,
                    StagingPool::Slab slab);
  absl::Status SubmitInPlace(size_t i);
  // Decrypts and verifies chunk `i` in its slab and copies it to every
  // arena; the slab goes back to the pool when the last copy completes.
  absl::Status ProcessChunk(size_t i);
  absl::Status DecryptAndVerify(const ReadChunk& chunk, char* base);
  void CopyToEveryArena(const ReadChunk& chunk, StagingPool::Slab slab,
                        const char* base);
  void ReportProgress();
  // Waits for the reads of chunks [0, submitted) and every copy.
  absl::Status WaitForEverything(size_t submitted);

  ReadEngine* const engine_;
  StagingPool* const pool_;
  const LoadPlan& plan_;
  const std::string label_;
  const LoadOptions options_;
  std::vector<Device*> devices_;
  std::vector<std::unique_ptr<DeviceAllocation>> arenas_;

  std::vector<const KeyMaterial*> keys_;
  std::vector<std::optional<ChecksumVerifier>> verifiers_;
  absl::Mutex mutex_;
  std::vector<ChunkSlot> slots_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<CopyErrors> copy_errors_;
  LoadProgress progress_;
  absl::Time start_;
  bool filled_ = false;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_LOADER_LOAD_JOB_H_
