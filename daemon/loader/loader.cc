#include "daemon/loader/loader.h"

#include <algorithm>
#include <map>
#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "daemon/formats/tensor_data.h"
#include "daemon/io/read_file.h"
#include "daemon/loader/layout.h"
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

// The copies issued from one slab: the slab goes back to the pool when the
// last of them completes.
struct SlabCopies {
  explicit SlabCopies(StagingPool::Slab slab) : slab(std::move(slab)) {}
  StagingPool::Slab slab;
  absl::Mutex mutex;
  int pending ABSL_GUARDED_BY(mutex) = 0;
};

// The first copy error, shared with the device's completion callbacks.
struct CopyErrors {
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

}  // namespace

bool IsDeviceFull(const absl::Status& status) {
  return absl::IsResourceExhausted(status) &&
         status.GetPayload(kDeviceFullPayload).has_value();
}

absl::string_view ModelLayoutName(ModelLayout layout) {
  return layout == ModelLayout::kFileImage ? "file_image" : "packed";
}

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

absl::StatusOr<LoadedModel> Loader::Load(const Manifest& manifest,
                                         const std::string& label,
                                         const LoadOptions& options) {
  WS_RETURN_IF_ERROR(CheckLoadable(manifest));
  if (options.layout == ModelLayout::kFileImage) {
    return LoadFileImage(manifest, label, options);
  }
  return LoadPacked(manifest, label, options);
}

absl::StatusOr<LoadedModel> Loader::LoadFileImage(const Manifest& manifest,
                                                  const std::string& label,
                                                  const LoadOptions& options) {
  WS_RETURN_IF_ERROR(CheckFileImage(manifest));
  const FileManifest& file = manifest.files[0];
  LoadedModel model;
  for (const TensorEntry& tensor : file.tensors) {
    model.tensors.push_back({tensor.name, tensor.dtype, tensor.shape,
                             tensor.nbytes, tensor.offset, tensor.role});
    model.tensor_bytes += tensor.nbytes;
  }
  model.metadata_json = MergedMetadataJson(manifest);
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> arena =
      device_->AllocateFileImage(file.file_size, label);
  if (!arena.ok()) return MarkedDeviceFull(arena.status());
  model.arena = *std::move(arena);
  const Manifest whole = WholeFileManifest(file);
  ArenaLayout layout;
  layout.total_bytes = file.file_size;
  layout.placements.push_back({0, 0, 0});
  // The stored checksums cover tensors, not the file: checked on the image
  // once it is complete.
  LoadOptions whole_options = options;
  whole_options.verify_checksums = false;
  WS_RETURN_IF_ERROR(Fill(whole, layout, label, whole_options, *model.arena));
  if (options.verify_checksums) {
    WS_RETURN_IF_ERROR(VerifyImage(file, model.arena->host_data()));
  }
  return model;
}

absl::StatusOr<LoadedModel> Loader::LoadPacked(const Manifest& manifest,
                                               const std::string& label,
                                               const LoadOptions& options) {
  WS_ASSIGN_OR_RETURN(ArenaLayout layout,
                      LayoutArena(manifest, options.alignment));
  LoadedModel model;
  for (const TensorPlacement& placement : layout.placements) {
    const TensorEntry& tensor =
        manifest.files[placement.file_index].tensors[placement.tensor_index];
    model.tensors.push_back({tensor.name, tensor.dtype, tensor.shape,
                             tensor.nbytes, placement.arena_offset,
                             tensor.role});
    model.tensor_bytes += tensor.nbytes;
  }
  model.metadata_json = MergedMetadataJson(manifest);
  // Allocations come back zeroed, which is what meta tensors and padding
  // need.
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> arena =
      device_->Allocate(std::max<uint64_t>(layout.total_bytes, 1), label);
  if (!arena.ok()) return MarkedDeviceFull(arena.status());
  model.arena = *std::move(arena);
  WS_RETURN_IF_ERROR(Fill(manifest, layout, label, options, *model.arena));
  return model;
}

absl::Status Loader::Fill(const Manifest& manifest, const ArenaLayout& layout,
                          const std::string& label, const LoadOptions& options,
                          DeviceAllocation& arena) {
  // Room in a slab for the O_DIRECT lead before a chunk and the tail after
  // it.
  if (pool_->slab_bytes() <= 2 * kDirectAlignment) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging slabs of ", pool_->slab_bytes(),
        " bytes are too small: they need room for O_DIRECT alignment (",
        2 * kDirectAlignment, " bytes) and data"));
  }
  if (options.read_bytes == 0 || options.read_bytes % kDirectAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("read_bytes ", options.read_bytes,
                     " must be a non-zero multiple of ", kDirectAlignment));
  }
  const uint64_t max_chunk = pool_->slab_bytes() - 2 * kDirectAlignment;
  WS_ASSIGN_OR_RETURN(std::vector<ReadChunk> chunks,
                      PlanReads(manifest, layout, max_chunk));

  // Keys and checksum verifiers, per placement.
  std::vector<const KeyMaterial*> keys(layout.placements.size(), nullptr);
  std::vector<std::optional<ChecksumVerifier>> verifiers(
      layout.placements.size());
  for (size_t p = 0; p < layout.placements.size(); ++p) {
    const TensorPlacement& placement = layout.placements[p];
    const FileManifest& file = manifest.files[placement.file_index];
    const TensorEntry& tensor = file.tensors[placement.tensor_index];
    if (tensor.encryption.has_value() && options.keys != nullptr) {
      WS_ASSIGN_OR_RETURN(keys[p], options.keys->KeyFor(file.path, tensor));
    }
    if (options.verify_checksums && !tensor.checksums.empty()) {
      WS_ASSIGN_OR_RETURN(ChecksumVerifier verifier,
                          ChecksumVerifier::Start(file.path, tensor));
      if (tensor.stored_bytes == 0) {
        // A meta tensor's checksums cover its header alone.
        WS_RETURN_IF_ERROR(verifier.Finish());
      } else {
        verifiers[p].emplace(std::move(verifier));
      }
    }
  }

  const FileOpener& opener =
      options.opener != nullptr ? *options.opener : PlainFileOpener();
  std::map<size_t, ReadFile> files;
  std::map<size_t, std::unique_ptr<RemoteObject>> remotes;
  for (const ReadChunk& chunk : chunks) {
    if (files.count(chunk.file_index) || remotes.count(chunk.file_index)) {
      continue;
    }
    const FileManifest& manifest_file = manifest.files[chunk.file_index];
    const std::string& path = manifest_file.path;
    if (IsRemoteUrl(path)) {
      WS_ASSIGN_OR_RETURN(std::unique_ptr<RemoteObject> object,
                          OpenRemote(manifest_file, options));
      remotes.emplace(chunk.file_index, std::move(object));
      continue;
    }
    WS_ASSIGN_OR_RETURN(ReadFile file,
                        OpenReadFile(path, options.direct_io, opener));
    files.emplace(chunk.file_index, std::move(file));
  }

  absl::Mutex mutex;
  std::vector<ChunkSlot> slots(chunks.size());
  auto copy_errors = std::make_shared<CopyErrors>();
  const absl::Time start = absl::Now();
  LoadProgress progress;
  for (const TensorPlacement& placement : layout.placements) {
    const TensorEntry& tensor =
        manifest.files[placement.file_index].tensors[placement.tensor_index];
    progress.bytes_total += tensor.nbytes;
    // Meta tensors are zeros already: done before anything is read.
    if (tensor.stored_bytes == 0) progress.bytes_done += tensor.nbytes;
  }

  auto submit = [&](size_t i, StagingPool::Slab slab) {
    const ReadChunk& chunk = chunks[i];
    if (auto remote = remotes.find(chunk.file_index); remote != remotes.end()) {
      // Ranged GETs straight into the slab, in parallel parts.
      char* const destination = slab.data();
      {
        absl::MutexLock lock(&mutex);
        slots[i].slab = std::move(slab);
        slots[i].lead = 0;
        slots[i].pending_reads = 1;
      }
      remote->second->ReadAsync(chunk.file_offset, chunk.length, destination,
                                [&mutex, &slots, i](absl::Status status) {
                                  absl::MutexLock lock(&mutex);
                                  slots[i].status = std::move(status);
                                  slots[i].done = true;
                                });
      return;
    }
    const ReadFile& file = files.at(chunk.file_index);
    ReadRequest request;
    request.fd = file.fd.get();
    request.file_name = file.path;
    request.destination = slab.data();
    uint64_t lead = 0;
    if (file.direct) {
      const AlignedRange range =
          AlignForDirect(chunk.file_offset, chunk.length);
      request.offset = range.aligned_offset;
      request.length = range.aligned_length;
      lead = range.lead;
    } else {
      request.offset = chunk.file_offset;
      request.length = chunk.length;
    }
    // One chunk is read as several smaller reads in flight at once: a
    // virtual disk serves parallel requests faster than one long one, and
    // the bytes still land in the same slab.
    const uint64_t needed = lead + chunk.length;
    const uint64_t part = options.read_bytes;
    const int parts = static_cast<int>((request.length + part - 1) / part);
    {
      absl::MutexLock lock(&mutex);
      slots[i].slab = std::move(slab);
      slots[i].lead = lead;
      slots[i].pending_reads = parts;
    }
    for (uint64_t begin = 0; begin < request.length; begin += part) {
      ReadRequest sub = request;
      sub.offset = request.offset + begin;
      sub.length = std::min(part, request.length - begin);
      sub.destination = request.destination + begin;
      // The bytes this part must deliver: all of it but past the chunk's
      // end, where an O_DIRECT superset may run beyond the file.
      const uint64_t sub_needed =
          needed > begin ? std::min(sub.length, needed - begin) : 0;
      engine_->Submit(sub, [&mutex, &slots, i, sub,
                            sub_needed](absl::StatusOr<uint64_t> r) {
        absl::MutexLock lock(&mutex);
        absl::Status status =
            r.ok() ? CheckReadCovers(sub, *r, sub_needed) : r.status();
        if (slots[i].status.ok()) slots[i].status = std::move(status);
        if (--slots[i].pending_reads == 0) slots[i].done = true;
      });
    }
  };

  // The host arena is ordinary memory: buffered reads of plain data can land
  // in it directly, with no staging copy, unless the arena is written faster
  // through copies (4 KiB shared memory: a read into its mapping faults
  // every page, which costs more than the staging copy saves).
  const bool host_arena = arena.host_data() != nullptr;
  auto reads_in_place = [&](const ReadChunk& chunk) {
    if (!host_arena || arena.PrefersCopies() ||
        remotes.count(chunk.file_index) || files.at(chunk.file_index).direct) {
      return false;
    }
    for (const Piece& piece : chunk.pieces) {
      const TensorEntry& tensor =
          manifest.files[chunk.file_index]
              .tensors[layout.placements[piece.placement].tensor_index];
      if (tensor.encryption.has_value() || verifiers[piece.placement]) {
        return false;
      }
    }
    return true;
  };
  auto submit_in_place = [&](size_t i) -> absl::Status {
    const ReadChunk& chunk = chunks[i];
    const ReadFile& file = files.at(chunk.file_index);
    // The reads write the arena directly: its memory must be there first.
    const Piece& last = chunk.pieces.back();
    WS_RETURN_IF_ERROR(MarkedDeviceFull(
        arena.WaitWritable(layout.placements[last.placement].arena_offset +
                           last.tensor_offset + last.length)));
    {
      absl::MutexLock lock(&mutex);
      slots[i].pending_reads = static_cast<int>(chunk.pieces.size());
    }
    for (const Piece& piece : chunk.pieces) {
      ReadRequest request;
      request.fd = file.fd.get();
      request.file_name = file.path;
      request.offset = chunk.file_offset + piece.chunk_offset;
      request.length = piece.length;
      request.destination = arena.host_data() +
                            layout.placements[piece.placement].arena_offset +
                            piece.tensor_offset;
      engine_->Submit(request, [&mutex, &slots, i,
                                request](absl::StatusOr<uint64_t> r) {
        absl::MutexLock lock(&mutex);
        absl::Status status =
            r.ok() ? CheckReadCovers(request, *r, request.length) : r.status();
        if (slots[i].status.ok()) slots[i].status = std::move(status);
        if (--slots[i].pending_reads == 0) slots[i].done = true;
      });
    }
    return absl::OkStatus();
  };

  // Copies the pieces of chunk `i` out of its slab, decrypting and
  // verifying on the way.
  auto process = [&](size_t i) -> absl::Status {
    const ReadChunk& chunk = chunks[i];
    const std::string& path = manifest.files[chunk.file_index].path;
    StagingPool::Slab slab;
    uint64_t lead;
    {
      absl::MutexLock lock(&mutex);
      WS_RETURN_IF_ERROR(slots[i].status);
      slab = std::move(slots[i].slab);
      lead = slots[i].lead;
    }
    if (!slab.valid()) {
      // Read in place: the bytes are where they belong already.
      for (const Piece& piece : chunk.pieces) {
        progress.bytes_done += piece.length;
      }
      return absl::OkStatus();
    }
    char* const base = slab.data() + lead;
    for (const Piece& piece : chunk.pieces) {
      const TensorEntry& tensor =
          manifest.files[chunk.file_index]
              .tensors[layout.placements[piece.placement].tensor_index];
      char* data = base + piece.chunk_offset;
      if (tensor.encryption.has_value()) {
        WS_RETURN_IF_ERROR(DecryptInPlace(path, tensor, keys[piece.placement],
                                          piece.tensor_offset, data,
                                          piece.length));
      }
      if (auto& verifier = verifiers[piece.placement]; verifier.has_value()) {
        WS_RETURN_IF_ERROR(
            verifier->Update(absl::string_view(data, piece.length)));
        if (piece.tensor_offset + piece.length == tensor.stored_bytes) {
          WS_RETURN_IF_ERROR(verifier->Finish());
        }
      }
    }
    auto copies = std::make_shared<SlabCopies>(std::move(slab));
    {
      absl::MutexLock lock(&copies->mutex);
      copies->pending = static_cast<int>(chunk.pieces.size());
    }
    for (const Piece& piece : chunk.pieces) {
      const uint64_t offset =
          layout.placements[piece.placement].arena_offset + piece.tensor_offset;
      device_->CopyFromHost(arena, offset, base + piece.chunk_offset,
                            piece.length,
                            [copies, copy_errors](absl::Status status) {
                              if (!status.ok())
                                copy_errors->Record(std::move(status));
                              absl::MutexLock lock(&copies->mutex);
                              if (--copies->pending == 0)
                                copies->slab = StagingPool::Slab();
                            });
      progress.bytes_done += piece.length;
    }
    return absl::OkStatus();
  };

  absl::Status status;
  size_t next_submit = 0;
  for (size_t i = 0; i < chunks.size() && status.ok(); ++i) {
    if (options.cancel != nullptr && options.cancel->load()) {
      status = absl::CancelledError(
          absl::StrCat("loading ", label, " was cancelled"));
      break;
    }
    // Keep chunks read ahead (kStagedChunksInFlight, or
    // kInPlaceChunksInFlight for reads into the arena), as free slabs allow.
    // When chunk i itself has not been submitted, nothing of this load
    // waits to be processed, so blocking for a slab cannot deadlock: slabs
    // come back as copies (ours or other loads') complete.
    while (next_submit < chunks.size()) {
      const bool in_place = reads_in_place(chunks[next_submit]);
      if (next_submit >=
          i + (in_place ? kInPlaceChunksInFlight : kStagedChunksInFlight)) {
        break;
      }
      if (in_place) {
        status = submit_in_place(next_submit);
        if (!status.ok()) break;
        ++next_submit;
        continue;
      }
      StagingPool::Slab slab =
          next_submit == i ? pool_->Acquire() : pool_->TryAcquire();
      if (!slab.valid()) break;
      submit(next_submit++, std::move(slab));
    }
    if (!status.ok()) break;
    {
      absl::MutexLock lock(&mutex);
      mutex.Await(absl::Condition(&slots[i].done));
    }
    status = process(i);
    if (status.ok()) status = copy_errors->Get();
    if (status.ok() && options.on_progress) {
      const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
      progress.bytes_per_second =
          seconds > 0 ? static_cast<double>(progress.bytes_done) / seconds : 0;
      options.on_progress(progress);
    }
  }
  // Whatever happened, wait for every read still in flight (their callbacks
  // touch `slots`) and for every copy (they read the slabs and write the
  // arena), so nothing outlives this call.
  {
    absl::MutexLock lock(&mutex);
    for (size_t i = 0; i < next_submit; ++i) {
      mutex.Await(absl::Condition(&slots[i].done));
      slots[i].slab = StagingPool::Slab();
    }
  }
  absl::Status synchronized = device_->Synchronize();
  if (status.ok()) status = synchronized;
  if (status.ok()) status = copy_errors->Get();
  WS_RETURN_IF_ERROR(status);
  if (options.on_progress && chunks.empty()) options.on_progress(progress);
  return arena.Seal();
}

}  // namespace warmstart
