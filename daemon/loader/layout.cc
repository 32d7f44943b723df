#include "daemon/loader/layout.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "daemon/formats/dtype.h"

namespace warmstart {
namespace {

uint64_t ElementBytes(const DTypeInfo& dtype) {
  return dtype.block_elements == 1 ? dtype.block_bytes : 1;
}

}  // namespace

absl::StatusOr<ArenaLayout> LayoutArena(const Manifest& manifest,
                                        uint64_t alignment) {
  ArenaLayout layout;
  uint64_t end = 0;
  for (size_t f = 0; f < manifest.files.size(); ++f) {
    const FileManifest& file = manifest.files[f];
    for (size_t t = 0; t < file.tensors.size(); ++t) {
      const TensorEntry& tensor = file.tensors[t];
      const DTypeInfo* dtype = FindDType(tensor.dtype);
      if (dtype == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.path, ": tensor \"", tensor.name,
                         "\": unknown dtype ", tensor.dtype));
      }
      const uint64_t align = std::max(alignment, ElementBytes(*dtype));
      const uint64_t offset = (end + align - 1) / align * align;
      if (offset < end ||
          tensor.nbytes > std::numeric_limits<uint64_t>::max() - offset) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.path, ": the checkpoint's size overflows"));
      }
      layout.placements.push_back({f, t, offset});
      end = offset + tensor.nbytes;
    }
  }
  layout.total_bytes = end;
  return layout;
}

absl::StatusOr<std::vector<ReadChunk>> PlanReads(const Manifest& manifest,
                                                 const ArenaLayout& layout,
                                                 uint64_t max_chunk_bytes) {
  if (max_chunk_bytes == 0) {
    return absl::InvalidArgumentError("read chunks cannot be 0 bytes long");
  }
  // Placements of each file, in file offset order.
  std::vector<std::vector<size_t>> by_file(manifest.files.size());
  for (size_t p = 0; p < layout.placements.size(); ++p) {
    const TensorPlacement& placement = layout.placements[p];
    const TensorEntry& tensor =
        manifest.files[placement.file_index].tensors[placement.tensor_index];
    if (tensor.stored_bytes > 0) by_file[placement.file_index].push_back(p);
  }
  std::vector<ReadChunk> chunks;
  for (size_t f = 0; f < by_file.size(); ++f) {
    const FileManifest& file = manifest.files[f];
    auto tensor_of = [&](size_t p) -> const TensorEntry& {
      return file.tensors[layout.placements[p].tensor_index];
    };
    std::sort(by_file[f].begin(), by_file[f].end(), [&](size_t a, size_t b) {
      return tensor_of(a).offset < tensor_of(b).offset;
    });
    ReadChunk current;
    bool open = false;
    for (size_t p : by_file[f]) {
      const TensorEntry& tensor = tensor_of(p);
      // Encrypted data decrypts in whole cipher chunks; plain data can be
      // cut anywhere, so it fills what is left of a chunk.
      uint64_t unit = 1;
      if (tensor.encryption.has_value()) {
        unit = std::min(tensor.encryption->chunk_size, tensor.stored_bytes);
        if (unit > max_chunk_bytes) {
          return absl::InvalidArgumentError(
              absl::StrCat(file.path, ": tensor \"", tensor.name,
                           "\": its cipher chunks of ", unit,
                           " bytes do not fit staging slabs (", max_chunk_bytes,
                           " usable bytes): use a larger slab size"));
        }
      }
      uint64_t done = 0;
      while (done < tensor.stored_bytes) {
        const uint64_t file_offset = tensor.offset + done;
        if (open && (file_offset < current.file_offset + current.length ||
                     file_offset - current.file_offset >= max_chunk_bytes)) {
          chunks.push_back(std::move(current));
          open = false;
        }
        if (!open) {
          current = ReadChunk{f, file_offset, 0, {}};
          open = true;
        }
        const uint64_t room =
            max_chunk_bytes - (file_offset - current.file_offset);
        uint64_t length = std::min(tensor.stored_bytes - done, room);
        if (length < tensor.stored_bytes - done && length % unit != 0) {
          length -= length % unit;
        }
        if (length == 0) {
          // Not even one cipher chunk fits after what the chunk holds.
          chunks.push_back(std::move(current));
          open = false;
          continue;
        }
        current.pieces.push_back(
            {p, done, length, file_offset - current.file_offset});
        current.length = file_offset - current.file_offset + length;
        done += length;
      }
    }
    if (open) chunks.push_back(std::move(current));
  }
  return chunks;
}

}  // namespace warmstart
