// Where each tensor of a manifest goes in the device arena, and which file
// ranges are read, in what units, to get it there.
//
// Pure functions of the manifest: no I/O.
#ifndef WARMSTART_DAEMON_LOADER_LAYOUT_H_
#define WARMSTART_DAEMON_LOADER_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

struct TensorPlacement {
  size_t file_index = 0;    // Into Manifest::files.
  size_t tensor_index = 0;  // Into FileManifest::tensors.
  uint64_t arena_offset = 0;
};

struct ArenaLayout {
  uint64_t total_bytes = 0;
  // One per tensor, in manifest order (file by file).
  std::vector<TensorPlacement> placements;
};

// Places every tensor at an offset aligned to max(`alignment`, its element
// size), in manifest order, whatever the file's own alignment.
// REQUIRES: `alignment` is a power of two.
// Errors: InvalidArgument for a dtype unknown to dtype.h or a total size
// that overflows.
absl::StatusOr<ArenaLayout> LayoutArena(const Manifest& manifest,
                                        uint64_t alignment);

// A part of one tensor that arrives in one read.
struct Piece {
  size_t placement = 0;        // Into ArenaLayout::placements.
  uint64_t tensor_offset = 0;  // Where in the tensor's bytes it starts.
  uint64_t length = 0;
  uint64_t chunk_offset = 0;  // Where in the chunk's bytes it starts.
};

// One read: a contiguous range of one file, at most `max_chunk_bytes` long,
// holding whole pieces. Encrypted tensors are cut only at their cipher
// chunk boundaries, so every piece decrypts on its own.
struct ReadChunk {
  size_t file_index = 0;
  uint64_t file_offset = 0;
  uint64_t length = 0;
  std::vector<Piece> pieces;
};

// Plans the reads of every stored byte (meta tensors need none), file by
// file in offset order. Errors: InvalidArgument when an encrypted tensor's
// cipher chunk is larger than `max_chunk_bytes` (the staging slab is too
// small for it), naming the file, tensor and sizes.
absl::StatusOr<std::vector<ReadChunk>> PlanReads(const Manifest& manifest,
                                                 const ArenaLayout& layout,
                                                 uint64_t max_chunk_bytes);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_LOADER_LAYOUT_H_
