// Loader: turns a Manifest into resident device memory.
//
// Reads go through a ReadEngine into StagingPool slabs (O_DIRECT on aligned
// supersets when wanted and allowed), encrypted data is decrypted in the
// slab, and each piece is copied to its place in one device allocation (the
// arena). Reading slab N+1 overlaps copying slab N; a slab goes back to the
// pool when the copy that reads it has completed. Chunks are processed in
// file order so that optional checksum verification sees each tensor's
// bytes in order.
//
// All or nothing: on any error or cancellation every read is waited for,
// every slab returned, and the arena freed; the error names the file and the
// offset. Nothing half-loaded is ever returned.
//
// Thread safety: Load may run concurrently for different models on one
// Loader; they share the engine, the pool and the device.
#ifndef WARMSTART_DAEMON_LOADER_LOADER_H_
#define WARMSTART_DAEMON_LOADER_LOADER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/base/file_opener.h"
#include "daemon/base/metrics.h"
#include "daemon/device/device.h"
#include "daemon/formats/key_provider.h"
#include "daemon/formats/manifest.h"
#include "daemon/io/read_engine.h"
#include "daemon/loader/layout.h"
#include "daemon/remote/remote_source.h"
#include "daemon/staging/staging_pool.h"

namespace warmstart {

// How a model's tensors lie in its arena.
enum class ModelLayout {
  // Tensors back to back at aligned offsets: the fewest bytes, any number
  // of files, every device, decrypted.
  kPacked,
  // The file's exact bytes (header, metadata and data at the file's own
  // offsets), so that code which maps a model file (llama.cpp,
  // gguf.GGUFReader, safetensors.safe_open) can map the resident copy as a
  // file. One plaintext file with no meta tensors, in host memory only.
  kFileImage,
};

// "packed" or "file_image".
absl::string_view ModelLayoutName(ModelLayout layout);

// What a load of a manifest in a layout takes.
struct LoadSize {
  uint64_t arena_bytes = 0;  // The arena, with any alignment padding.
  uint64_t load_bytes = 0;   // The bytes a load fills (its progress total).
};

// Sizes a load of `manifest` in `layout` with tensors aligned to
// `alignment` (packed). Errors: InvalidArgument, naming the file and the
// reason, for what cannot be held in `layout` (see Loader::Load).
absl::StatusOr<LoadSize> SizeLoad(const Manifest& manifest, ModelLayout layout,
                                  uint64_t alignment);

struct LoadedTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  uint64_t offset = 0;  // Within the arena.
  std::string role;     // TensorEntry::role: "parameter", ..., or empty.
};

// A model resident on a device. Move-only: owns its arena.
struct LoadedModel {
  std::unique_ptr<DeviceAllocation> arena;
  std::vector<LoadedTensor> tensors;  // In manifest order.
  uint64_t tensor_bytes = 0;          // Sum of nbytes.
  // The files' key-value metadata (FileManifest::metadata) as one JSON
  // object: the keys of every file, in file order; where files disagree on
  // a key, the first file's value.
  std::string metadata_json = "{}";
};

struct LoadProgress {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  double bytes_per_second = 0;
};

struct LoadOptions {
  ModelLayout layout = ModelLayout::kPacked;
  // Tensors start at multiples of max(alignment, element size) in the arena.
  uint64_t alignment = 256;
  // Recompute the checksums files store (tensorizer) while loading. Off by
  // default: it runs on the loading thread at SHA-256 plus CRC32 speed,
  // about 0.9 GB/s on this machine's cores (OpenSSL SHA-256 1.28 GB/s, zlib
  // CRC32 3.4 GB/s), which is about the cold disk rate and well below warm
  // loads (2.5-3 GB/s).
  bool verify_checksums = false;
  // O_DIRECT reads (falls back to buffered where refused), except for files
  // the page cache holds mostly (kMostlyCached), which are read through it:
  // from memory they load several times faster than O_DIRECT from the disk.
  bool direct_io = true;
  // With direct_io, read files the page cache mostly holds through the
  // cache (OpenFileForLoad). False: O_DIRECT whatever is cached (tests
  // that exercise the O_DIRECT path on files they just wrote).
  bool cached_files_buffered = true;
  // The most bytes one read of a staged chunk asks for: a slab is filled by
  // several reads in flight at once, which a disk serves faster than one
  // long read. REQUIRES: a non-zero multiple of 4096 (kDirectAlignment).
  uint64_t read_bytes = uint64_t{8} << 20;
  // Keys for encrypted tensors; null means none (they fail to load).
  KeyProvider* keys = nullptr;
  // Opens the manifest's files for reading; null means plain open(2). A
  // BeneathRootsOpener refuses files outside its roots (PermissionDenied).
  // Not owned: it must outlive the call.
  const FileOpener* opener = nullptr;
  // Reads the files whose paths are URLs (IsRemoteUrl): ranged GETs into the
  // staging slabs, each object checked against the size and version (ETag)
  // the manifest recorded. Null means URLs fail to load. Not owned: it must
  // outlive the call.
  const RemoteSources* remote = nullptr;
  // Called after each chunk lands, on the loading thread.
  std::function<void(const LoadProgress&)> on_progress;
  // Polled between chunks; when it becomes true the load stops with
  // Cancelled.
  const std::atomic<bool>* cancel = nullptr;
  // The clock the progress rate is measured with; null means absl::Now.
  std::function<absl::Time()> now;
  // Where files opened buffered because O_DIRECT was refused are counted.
  // Not owned; must outlive the call (and the plan). Null: not counted.
  Metrics* metrics = nullptr;
};

// Marks the ResourceExhausted errors that mean the device itself has no
// room for the arena (its allocation, or host memory that could not be
// reserved), as opposed to other exhausted resources (descriptors, disk):
// only those are worth freeing device memory and trying again for.
inline constexpr char kDeviceFullPayload[] = "type.warmstart.dev/device_full";
bool IsDeviceFull(const absl::Status& status);

class LoadPlan;
class LoadJob;

class Loader {
 public:
  // All three must outlive the loader.
  Loader(ReadEngine* engine, StagingPool* pool, Device* device)
      : engine_(engine), pool_(pool), device_(device) {}

  // Loads every tensor of `manifest` into one new allocation labelled
  // `label`, laid out as options.layout says; for kFileImage the
  // allocation is exactly the file's size and each tensor's offset is its
  // offset in the file. Errors: InvalidArgument for what cannot be loaded
  // (big-endian GGUF, a cipher chunk larger than a slab; as a file image,
  // several files, encrypted or meta tensors); FailedPrecondition for a
  // file image on a device that cannot hold one; the device's error when the
  // arena cannot be allocated (IsDeviceFull when it is out of memory); the
  // opener's refusals and the errno class of files that cannot be opened;
  // DataLoss (or the errno class) for read failures and files that changed
  // since they were parsed; the key and checksum errors of tensor_data.h;
  // Cancelled.
  absl::StatusOr<LoadedModel> Load(const Manifest& manifest,
                                   const std::string& label,
                                   const LoadOptions& options);

  // The bytes of one staging slab: the most one planned read holds.
  uint64_t slab_bytes() const { return pool_->slab_bytes(); }

  // The plan of a load of `manifest` with `options` (layout, alignment,
  // read_bytes; files opened with direct_io, opener and remote), sized for
  // this loader's slabs: made once, it serves a job onto any number of
  // devices. `manifest` must outlive the plan. Errors: those of
  // LoadPlan::Make and LoadPlan::OpenFiles.
  absl::StatusOr<LoadPlan> Plan(const Manifest& manifest,
                                const LoadOptions& options) const;

  // A job that loads `plan` through this loader's engine and slabs onto the
  // devices its caller allocates on. `plan` must outlive the job.
  std::unique_ptr<LoadJob> NewJob(const LoadPlan& plan,
                                  const std::string& label,
                                  const LoadOptions& options) const;

 private:
  ReadEngine* const engine_;
  StagingPool* const pool_;
  Device* const device_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_LOADER_LOADER_H_
