#include "daemon/loader/load_job.h"

#include <algorithm>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

// Staged chunks read ahead of the one being processed, as free slabs allow.
// Each is read as several LoadOptions::read_bytes reads, so up to 12 x 16
// MiB / 8 MiB = 24 reads (192 MiB) are in flight. This machine's virtual
// disk gives more the more bytes are in flight: two whole-slab reads gave
// 0.83 GB/s, 4 chunks in 4 MiB reads 1.3-1.55, 12 in 8 MiB reads 1.9 (fio,
// 4 O_DIRECT streams at depth 16: 1.4-1.7).
constexpr size_t kStagedChunksInFlight = 12;
// Chunks read in place (buffered, into the host arena): their reads fault
// the arena's pages in, and more of them in flight only ran ahead of the
// prefault threads.
constexpr size_t kInPlaceChunksInFlight = 2;

// The copies issued from one slab: the slab goes back to the pool when the
// last of them completes.
struct SlabCopies {
  explicit SlabCopies(StagingPool::Slab slab) : slab(std::move(slab)) {}
  StagingPool::Slab slab;
  absl::Mutex mutex;
  int pending ABSL_GUARDED_BY(mutex) = 0;
};

// Opens the remote object `file` names and checks that it is still the
// object that was parsed: a replaced object would mix two versions.
absl::StatusOr<std::unique_ptr<RemoteObject>> OpenRemote(
    const FileManifest& file, const LoadOptions& options) {
  if (options.remote == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(file.path,
                     ": remote sources are not enabled here (remote_sources in "
                     "the config, --remote_source PREFIX)"));
  }
  WS_ASSIGN_OR_RETURN(std::unique_ptr<RemoteObject> object,
                      options.remote->Open(file.path));
  if (object->size() != file.file_size || object->etag() != file.version) {
    return absl::DataLossError(absl::StrCat(
        file.path, ": the object changed since it was parsed: size ",
        file.file_size, " -> ", object->size(), ", ETag ",
        file.version.empty() ? "(none)" : file.version, " -> ",
        object->etag().empty() ? "(none)" : object->etag()));
  }
  return object;
}

absl::Status CheckLoadable(const Manifest& manifest) {
  for (const FileManifest& file : manifest.files) {
    if (file.big_endian) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path,
          ": big-endian GGUF files cannot be loaded (their tensors would be "
          "byte-swapped on a little-endian machine); convert the file"));
    }
  }
  return absl::OkStatus();
}

// Why `manifest` cannot be held as a file image; OK when it can.
absl::Status CheckFileImage(const Manifest& manifest) {
  if (manifest.files.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        manifest.files.empty() ? "(no file)" : manifest.files[0].path,
        ": a file image holds one file and this checkpoint has ",
        manifest.files.size(), "; use the packed layout"));
  }
  const FileManifest& file = manifest.files[0];
  for (const TensorEntry& tensor : file.tensors) {
    if (tensor.encryption.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path, ": tensor \"", tensor.name,
          "\" is encrypted: a file image holds the file's bytes as stored, "
          "which would be ciphertext; use the packed layout, which decrypts"));
    }
    if (tensor.is_meta()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path, ": tensor \"", tensor.name,
          "\" is a meta tensor with no bytes in the file, so a file image "
          "cannot hold it; use the packed layout"));
    }
  }
  return absl::OkStatus();
}

// Slabs and read sizes the reads can be planned with.
absl::Status CheckReadUnits(uint64_t slab_bytes, uint64_t read_bytes) {
  // Room in a slab for the O_DIRECT lead before a chunk and the tail after
  // it.
  if (slab_bytes <= 2 * kDirectAlignment) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging slabs of ", slab_bytes,
        " bytes are too small: they need room for O_DIRECT alignment (",
        2 * kDirectAlignment, " bytes) and data"));
  }
  if (read_bytes == 0 || read_bytes % kDirectAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("read_bytes ", read_bytes,
                     " must be a non-zero multiple of ", kDirectAlignment));
  }
  return absl::OkStatus();
}

// The whole of `file` as one tensor of bytes at offset 0: what a file image
// reads, with the loader's ordinary machinery.
Manifest WholeFileManifest(const FileManifest& file) {
  FileManifest whole;
  whole.path = file.path;
  whole.format = file.format;
  whole.file_size = file.file_size;
  whole.version = file.version;
  TensorEntry bytes;
  bytes.name = "(file image)";
  bytes.dtype = "U8";
  bytes.shape = {file.file_size};
  bytes.nbytes = file.file_size;
  bytes.stored_bytes = file.file_size;
  whole.tensors.push_back(std::move(bytes));
  Manifest manifest;
  manifest.files.push_back(std::move(whole));
  return manifest;
}

// Checks the checksums `file` stores against the bytes of its image.
absl::Status VerifyImage(const FileManifest& file, const char* image) {
  for (const TensorEntry& tensor : file.tensors) {
    if (tensor.checksums.empty()) continue;
    WS_ASSIGN_OR_RETURN(ChecksumVerifier verifier,
                        ChecksumVerifier::Start(file.path, tensor));
    WS_RETURN_IF_ERROR(verifier.Update(
        absl::string_view(image + tensor.offset, tensor.stored_bytes)));
    WS_RETURN_IF_ERROR(verifier.Finish());
  }
  return absl::OkStatus();
}

// Every file's metadata as one JSON object; where files disagree on a key,
// the first file's value.
std::string MergedMetadataJson(const Manifest& manifest) {
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  for (const FileManifest& file : manifest.files) {
    for (const auto& [key, value] : file.metadata.items()) {
      if (!metadata.contains(key)) metadata[key] = value;
    }
  }
  // Replaces invalid UTF-8 (metadata strings come from the files) rather
  // than throwing.
  return metadata.dump(-1, ' ', false,
                       nlohmann::json::error_handler_t::replace);
}

// A device's ResourceExhausted, marked as the device being full.
absl::Status MarkedDeviceFull(absl::Status status) {
  if (absl::IsResourceExhausted(status)) {
    status.SetPayload(kDeviceFullPayload, absl::Cord());
  }
  return status;
}

// The tensor table of a loaded model: packed offsets from the layout, or
// the file's own offsets for a file image.
LoadedModel ModelTable(const Manifest& manifest, ModelLayout layout,
                       const ArenaLayout& arena) {
  LoadedModel model;
  if (layout == ModelLayout::kFileImage) {
    for (const TensorEntry& tensor : manifest.files[0].tensors) {
      model.tensors.push_back({tensor.name, tensor.dtype, tensor.shape,
                               tensor.nbytes, tensor.offset, tensor.role});
      model.tensor_bytes += tensor.nbytes;
    }
  } else {
    for (const TensorPlacement& placement : arena.placements) {
      const TensorEntry& tensor =
          manifest.files[placement.file_index].tensors[placement.tensor_index];
      model.tensors.push_back({tensor.name, tensor.dtype, tensor.shape,
                               tensor.nbytes, placement.arena_offset,
                               tensor.role});
      model.tensor_bytes += tensor.nbytes;
    }
  }
  model.metadata_json = MergedMetadataJson(manifest);
  return model;
}

}  // namespace

absl::StatusOr<LoadSize> SizeLoad(const Manifest& manifest, ModelLayout layout,
                                  uint64_t alignment) {
  WS_RETURN_IF_ERROR(CheckLoadable(manifest));
  LoadSize size;
  if (layout == ModelLayout::kFileImage) {
    WS_RETURN_IF_ERROR(CheckFileImage(manifest));
    size.arena_bytes = size.load_bytes = manifest.files[0].file_size;
    return size;
  }
  WS_ASSIGN_OR_RETURN(ArenaLayout arena, LayoutArena(manifest, alignment));
  size.arena_bytes = arena.total_bytes;
  for (const FileManifest& file : manifest.files) {
    for (const TensorEntry& tensor : file.tensors) {
      size.load_bytes += tensor.nbytes;
    }
  }
  return size;
}

absl::StatusOr<LoadPlan> LoadPlan::Make(const Manifest& manifest,
                                        ModelLayout layout, uint64_t alignment,
                                        uint64_t slab_bytes,
                                        uint64_t read_bytes) {
  WS_ASSIGN_OR_RETURN(LoadSize size, SizeLoad(manifest, layout, alignment));
  LoadPlan plan;
  plan.manifest_ = &manifest;
  plan.layout_ = layout;
  plan.size_ = size;
  if (layout == ModelLayout::kFileImage) {
    plan.whole_file_ = WholeFileManifest(manifest.files[0]);
    plan.arena_.total_bytes = manifest.files[0].file_size;
    plan.arena_.placements.push_back({0, 0, 0});
  } else {
    WS_ASSIGN_OR_RETURN(plan.arena_, LayoutArena(manifest, alignment));
  }
  WS_RETURN_IF_ERROR(CheckReadUnits(slab_bytes, read_bytes));
  WS_ASSIGN_OR_RETURN(
      plan.chunks_,
      PlanReads(plan.reads(), plan.arena_, slab_bytes - 2 * kDirectAlignment));
  plan.model_ = ModelTable(manifest, layout, plan.arena_);
  return plan;
}

absl::Status LoadPlan::OpenFiles(const LoadOptions& options) {
  const FileOpener& opener =
      options.opener != nullptr ? *options.opener : PlainFileOpener();
  std::vector<bool> has_reads(reads().files.size(), false);
  for (const ReadChunk& chunk : chunks_) has_reads[chunk.file_index] = true;
  for (size_t i = 0; i < reads().files.size(); ++i) {
    const FileManifest& file = reads().files[i];
    if (!IsRemoteUrl(file.path)) {
      // Every local file, read or not: the registry fingerprints them all
      // through these descriptors.
      WS_ASSIGN_OR_RETURN(ReadFile opened,
                          options.cached_files_buffered
                              ? OpenFileForLoad(file.path, options.direct_io,
                                                opener, options.metrics)
                              : OpenReadFile(file.path, options.direct_io,
                                             opener, options.metrics));
      local_.emplace(i, std::move(opened));
    } else if (has_reads[i]) {
      WS_ASSIGN_OR_RETURN(remote_[i], OpenRemote(file, options));
    }
  }
  return absl::OkStatus();
}

const ReadFile* LoadPlan::local_file(size_t index) const {
  auto it = local_.find(index);
  return it == local_.end() ? nullptr : &it->second;
}

const RemoteObject* LoadPlan::remote_file(size_t index) const {
  auto it = remote_.find(index);
  return it == remote_.end() ? nullptr : it->second.get();
}

// The first copy error, shared with the devices' completion callbacks
// (which may outlive a step, never the job: Fill waits for them).
struct LoadJob::CopyErrors {
  absl::Mutex mutex;
  absl::Status first ABSL_GUARDED_BY(mutex);
  void Record(absl::Status status) {
    absl::MutexLock lock(&mutex);
    if (first.ok()) first = std::move(status);
  }
  absl::Status Get() {
    absl::MutexLock lock(&mutex);
    return first;
  }
};

LoadJob::LoadJob(ReadEngine* engine, StagingPool* pool, const LoadPlan* plan,
                 std::string label, LoadOptions options)
    : engine_(engine),
      pool_(pool),
      plan_(*plan),
      label_(std::move(label)),
      options_(std::move(options)),
      copy_errors_(std::make_shared<CopyErrors>()) {}

LoadJob::~LoadJob() = default;

absl::Status LoadJob::Allocate(Device* device) {
  // Allocations come back zeroed, which is what meta tensors and padding
  // need.
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> arena =
      plan_.layout() == ModelLayout::kFileImage
          ? device->AllocateFileImage(plan_.size().arena_bytes, label_)
          : device->Allocate(std::max<uint64_t>(plan_.size().arena_bytes, 1),
                             label_);
  if (!arena.ok()) return MarkedDeviceFull(arena.status());
  devices_.push_back(device);
  arenas_.push_back(*std::move(arena));
  return absl::OkStatus();
}

absl::Status LoadJob::PrepareKeysAndVerifiers() {
  const Manifest& manifest = plan_.reads();
  const ArenaLayout& layout = plan_.arena();
  keys_.assign(layout.placements.size(), nullptr);
  verifiers_.clear();
  verifiers_.resize(layout.placements.size());
  // A file image's stored checksums cover tensors, not the file: they are
  // checked on the image once it is complete (Publish).
  const bool verify =
      options_.verify_checksums && plan_.layout() != ModelLayout::kFileImage;
  for (size_t p = 0; p < layout.placements.size(); ++p) {
    const TensorPlacement& placement = layout.placements[p];
    const FileManifest& file = manifest.files[placement.file_index];
    const TensorEntry& tensor = file.tensors[placement.tensor_index];
    if (tensor.encryption.has_value() && options_.keys != nullptr) {
      WS_ASSIGN_OR_RETURN(keys_[p], options_.keys->KeyFor(file.path, tensor));
    }
    if (verify && !tensor.checksums.empty()) {
      WS_ASSIGN_OR_RETURN(ChecksumVerifier verifier,
                          ChecksumVerifier::Start(file.path, tensor));
      if (tensor.stored_bytes == 0) {
        // A meta tensor's checksums cover its header alone.
        WS_RETURN_IF_ERROR(verifier.Finish());
      } else {
        verifiers_[p].emplace(std::move(verifier));
      }
    }
  }
  return absl::OkStatus();
}

void LoadJob::StartProgress() {
  start_ = options_.now ? options_.now() : absl::Now();
  progress_ = LoadProgress();
  const Manifest& manifest = plan_.reads();
  for (const TensorPlacement& placement : plan_.arena().placements) {
    const TensorEntry& tensor =
        manifest.files[placement.file_index].tensors[placement.tensor_index];
    progress_.bytes_total += tensor.nbytes * arenas_.size();
    // Meta tensors are zeros already: done before anything is read.
    if (tensor.stored_bytes == 0) {
      progress_.bytes_done += tensor.nbytes * arenas_.size();
    }
  }
}

absl::Status LoadJob::Fill() {
  WS_RETURN_IF_ERROR(PrepareKeysAndVerifiers());
  // The pool stays resident (touched, pinned, registered) while any load
  // holds it; an idle daemon returns it (StagingPool::ReleaseIfQuiet).
  WS_ASSIGN_OR_RETURN(StagingPool::Residency residency, pool_->MakeResident());
  StartProgress();
  {
    absl::MutexLock lock(&mutex_);
    slots_.clear();
    slots_.resize(plan_.chunks().size());
  }
  absl::Status status;
  size_t next_submit = 0;
  for (size_t i = 0; i < plan_.chunks().size() && status.ok(); ++i) {
    if (options_.cancel != nullptr && options_.cancel->load()) {
      status = absl::CancelledError(
          absl::StrCat("loading ", label_, " was cancelled"));
      break;
    }
    status = SubmitAhead(i, &next_submit);
    if (!status.ok()) break;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(&slots_[i].done));
    }
    status = ProcessChunk(i);
    if (status.ok()) status = copy_errors_->Get();
    if (status.ok()) ReportProgress();
  }
  absl::Status waited = WaitForEverything(next_submit);
  if (status.ok()) status = waited;
  WS_RETURN_IF_ERROR(status);
  if (options_.on_progress && plan_.chunks().empty()) {
    options_.on_progress(progress_);
  }
  filled_ = true;
  return absl::OkStatus();
}

absl::Status LoadJob::SubmitAhead(size_t i, size_t* next_submit) {
  // Keep chunks read ahead (kStagedChunksInFlight, or
  // kInPlaceChunksInFlight for reads into the arena), as free slabs allow.
  // When chunk i itself has not been submitted, nothing of this load waits
  // to be processed, so blocking for a slab cannot deadlock: slabs come back
  // as copies (ours or other loads') complete.
  const std::vector<ReadChunk>& chunks = plan_.chunks();
  while (*next_submit < chunks.size()) {
    const bool in_place = ReadsInPlace(chunks[*next_submit]);
    if (*next_submit >=
        i + (in_place ? kInPlaceChunksInFlight : kStagedChunksInFlight)) {
      break;
    }
    if (in_place) {
      WS_RETURN_IF_ERROR(SubmitInPlace(*next_submit));
      ++*next_submit;
      continue;
    }
    StagingPool::Slab slab =
        *next_submit == i ? pool_->Acquire() : pool_->TryAcquire();
    if (!slab.valid()) break;
    SubmitStaged((*next_submit)++, std::move(slab));
  }
  return absl::OkStatus();
}

bool LoadJob::ReadsInPlace(const ReadChunk& chunk) const {
  // The host arena is ordinary memory: buffered reads of plain data can land
  // in it directly, with no staging copy, unless the arena is written faster
  // through copies (4 KiB shared memory: a read into its mapping faults
  // every page, which costs more than the staging copy saves). With several
  // arenas the bytes are staged once and copied to each.
  if (arenas_.size() != 1) return false;
  DeviceAllocation& arena = *arenas_[0];
  const ReadFile* file = plan_.local_file(chunk.file_index);
  if (arena.host_data() == nullptr || arena.PrefersCopies() ||
      file == nullptr || file->direct) {
    return false;
  }
  for (const Piece& piece : chunk.pieces) {
    const TensorEntry& tensor =
        plan_.reads()
            .files[chunk.file_index]
            .tensors[plan_.arena().placements[piece.placement].tensor_index];
    if (tensor.encryption.has_value() || verifiers_[piece.placement]) {
      return false;
    }
  }
  return true;
}

void LoadJob::SubmitRemote(size_t i, const RemoteObject& remote,
                           StagingPool::Slab slab) {
  // Ranged GETs straight into the slab, in parallel parts.
  const ReadChunk& chunk = plan_.chunks()[i];
  char* const destination = slab.data();
  {
    absl::MutexLock lock(&mutex_);
    slots_[i].slab = std::move(slab);
    slots_[i].lead = 0;
    slots_[i].pending_reads = 1;
  }
  remote.ReadAsync(chunk.file_offset, chunk.length, destination,
                   [this, i](absl::Status status) {
                     absl::MutexLock lock(&mutex_);
                     slots_[i].status = std::move(status);
                     slots_[i].done = true;
                   });
}

void LoadJob::SubmitStaged(size_t i, StagingPool::Slab slab) {
  const ReadChunk& chunk = plan_.chunks()[i];
  if (const RemoteObject* remote = plan_.remote_file(chunk.file_index)) {
    SubmitRemote(i, *remote, std::move(slab));
    return;
  }
  const ReadFile& file = *plan_.local_file(chunk.file_index);
  ReadRequest request;
  request.fd = file.fd.get();
  request.file_name = file.path;
  request.destination = slab.data();
  uint64_t lead = 0;
  if (file.direct) {
    const AlignedRange range = AlignForDirect(chunk.file_offset, chunk.length);
    request.offset = range.aligned_offset;
    request.length = range.aligned_length;
    lead = range.lead;
  } else {
    request.offset = chunk.file_offset;
    request.length = chunk.length;
  }
  // One chunk is read as several smaller reads in flight at once: a virtual
  // disk serves parallel requests faster than one long one, and the bytes
  // still land in the same slab.
  const uint64_t needed = lead + chunk.length;
  const uint64_t part = options_.read_bytes;
  {
    absl::MutexLock lock(&mutex_);
    slots_[i].slab = std::move(slab);
    slots_[i].lead = lead;
    slots_[i].pending_reads =
        static_cast<int>((request.length + part - 1) / part);
  }
  for (uint64_t begin = 0; begin < request.length; begin += part) {
    ReadRequest sub = request;
    sub.offset = request.offset + begin;
    sub.length = std::min(part, request.length - begin);
    sub.destination = request.destination + begin;
    // The bytes this part must deliver: all of it but past the chunk's end,
    // where an O_DIRECT superset may run beyond the file.
    const uint64_t sub_needed =
        needed > begin ? std::min(sub.length, needed - begin) : 0;
    engine_->Submit(
        sub, [this, i, sub, sub_needed](absl::StatusOr<uint64_t> r) {
          absl::MutexLock lock(&mutex_);
          absl::Status status =
              r.ok() ? CheckReadCovers(sub, *r, sub_needed) : r.status();
          if (slots_[i].status.ok()) slots_[i].status = std::move(status);
          if (--slots_[i].pending_reads == 0) slots_[i].done = true;
        });
  }
}

absl::Status LoadJob::SubmitInPlace(size_t i) {
  const ReadChunk& chunk = plan_.chunks()[i];
  const ReadFile& file = *plan_.local_file(chunk.file_index);
  DeviceAllocation& arena = *arenas_[0];
  const std::vector<TensorPlacement>& placements = plan_.arena().placements;
  // The reads write the arena directly: its memory must be there first.
  // Pieces follow the file's order, the arena the layout's, so the end is
  // the furthest of them, not the last.
  uint64_t end = 0;
  for (const Piece& piece : chunk.pieces) {
    end = std::max(end, placements[piece.placement].arena_offset +
                            piece.tensor_offset + piece.length);
  }
  WS_RETURN_IF_ERROR(MarkedDeviceFull(arena.WaitWritable(end)));
  {
    absl::MutexLock lock(&mutex_);
    slots_[i].pending_reads = static_cast<int>(chunk.pieces.size());
  }
  for (const Piece& piece : chunk.pieces) {
    ReadRequest request;
    request.fd = file.fd.get();
    request.file_name = file.path;
    request.offset = chunk.file_offset + piece.chunk_offset;
    request.length = piece.length;
    request.destination = arena.host_data() +
                          placements[piece.placement].arena_offset +
                          piece.tensor_offset;
    engine_->Submit(request, [this, i, request](absl::StatusOr<uint64_t> r) {
      absl::MutexLock lock(&mutex_);
      absl::Status status =
          r.ok() ? CheckReadCovers(request, *r, request.length) : r.status();
      if (slots_[i].status.ok()) slots_[i].status = std::move(status);
      if (--slots_[i].pending_reads == 0) slots_[i].done = true;
    });
  }
  return absl::OkStatus();
}

absl::Status LoadJob::ProcessChunk(size_t i) {
  const ReadChunk& chunk = plan_.chunks()[i];
  StagingPool::Slab slab;
  uint64_t lead;
  {
    absl::MutexLock lock(&mutex_);
    WS_RETURN_IF_ERROR(slots_[i].status);
    slab = std::move(slots_[i].slab);
    lead = slots_[i].lead;
  }
  if (!slab.valid()) {
    // Read in place: the bytes are where they belong already.
    for (const Piece& piece : chunk.pieces) {
      progress_.bytes_done += piece.length;
    }
    return absl::OkStatus();
  }
  char* const base = slab.data() + lead;
  WS_RETURN_IF_ERROR(DecryptAndVerify(chunk, base));
  CopyToEveryArena(chunk, std::move(slab), base);
  return absl::OkStatus();
}

absl::Status LoadJob::DecryptAndVerify(const ReadChunk& chunk, char* base) {
  const FileManifest& file = plan_.reads().files[chunk.file_index];
  for (const Piece& piece : chunk.pieces) {
    const TensorEntry& tensor =
        file.tensors[plan_.arena().placements[piece.placement].tensor_index];
    char* data = base + piece.chunk_offset;
    if (tensor.encryption.has_value()) {
      WS_RETURN_IF_ERROR(
          DecryptInPlace(file.path, tensor, keys_[piece.placement],
                         piece.tensor_offset, data, piece.length));
    }
    if (auto& verifier = verifiers_[piece.placement]; verifier.has_value()) {
      WS_RETURN_IF_ERROR(
          verifier->Update(absl::string_view(data, piece.length)));
      if (piece.tensor_offset + piece.length == tensor.stored_bytes) {
        WS_RETURN_IF_ERROR(verifier->Finish());
      }
    }
  }
  return absl::OkStatus();
}

void LoadJob::CopyToEveryArena(const ReadChunk& chunk, StagingPool::Slab slab,
                               const char* base) {
  auto copies = std::make_shared<SlabCopies>(std::move(slab));
  {
    absl::MutexLock lock(&copies->mutex);
    copies->pending = static_cast<int>(chunk.pieces.size() * arenas_.size());
  }
  for (size_t d = 0; d < arenas_.size(); ++d) {
    // With several devices the error names the one that failed.
    std::string device_name =
        arenas_.size() > 1 ? absl::StrCat("onto ", devices_[d]->uuid(), ": ")
                           : "";
    for (const Piece& piece : chunk.pieces) {
      const uint64_t offset =
          plan_.arena().placements[piece.placement].arena_offset +
          piece.tensor_offset;
      devices_[d]->CopyFromHost(
          *arenas_[d], offset, base + piece.chunk_offset, piece.length,
          [copies, errors = copy_errors_, device_name](absl::Status status) {
            if (!status.ok()) {
              errors->Record(
                  device_name.empty()
                      ? std::move(status)
                      : absl::Status(
                            status.code(),
                            absl::StrCat(device_name, status.message())));
            }
            absl::MutexLock lock(&copies->mutex);
            if (--copies->pending == 0) copies->slab = StagingPool::Slab();
          });
      progress_.bytes_done += piece.length;
    }
  }
}

void LoadJob::ReportProgress() {
  if (!options_.on_progress) return;
  const absl::Time now = options_.now ? options_.now() : absl::Now();
  const double seconds = absl::ToDoubleSeconds(now - start_);
  progress_.bytes_per_second =
      seconds > 0 ? static_cast<double>(progress_.bytes_done) / seconds : 0;
  options_.on_progress(progress_);
}

absl::Status LoadJob::WaitForEverything(size_t submitted) {
  // Whatever happened, wait for every read still in flight (their callbacks
  // touch `slots_`) and for every copy (they read the slabs and write the
  // arenas), so nothing outlives the step.
  {
    absl::MutexLock lock(&mutex_);
    for (size_t i = 0; i < submitted; ++i) {
      mutex_.Await(absl::Condition(&slots_[i].done));
      slots_[i].slab = StagingPool::Slab();
    }
  }
  absl::Status status;
  for (Device* device : devices_) {
    absl::Status synchronized = device->Synchronize();
    if (status.ok()) status = synchronized;
  }
  if (status.ok()) status = copy_errors_->Get();
  return status;
}

absl::StatusOr<std::vector<LoadedModel>> LoadJob::Publish() {
  if (!filled_) {
    return absl::FailedPreconditionError(
        absl::StrCat("loading ", label_, ": published before it was filled"));
  }
  for (std::unique_ptr<DeviceAllocation>& arena : arenas_) {
    WS_RETURN_IF_ERROR(arena->Seal());
    if (plan_.layout() == ModelLayout::kFileImage &&
        options_.verify_checksums) {
      WS_RETURN_IF_ERROR(
          VerifyImage(plan_.manifest().files[0], arena->host_data()));
    }
  }
  std::vector<LoadedModel> models;
  for (std::unique_ptr<DeviceAllocation>& arena : arenas_) {
    LoadedModel model;
    model.tensors = plan_.model().tensors;
    model.tensor_bytes = plan_.model().tensor_bytes;
    model.metadata_json = plan_.model().metadata_json;
    model.arena = std::move(arena);
    models.push_back(std::move(model));
  }
  arenas_.clear();
  return models;
}

}  // namespace warmstart
