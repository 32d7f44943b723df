// Checkpoint: turns what a user names (a weight file, a Hugging Face shard
// index, or a directory) into a Manifest, detecting each file's format.
//
// Everything here reads headers only (and the whole of an index file), never
// tensor data. Functions are safe to call concurrently; they share no state.
#ifndef WARMSTART_DAEMON_FORMATS_CHECKPOINT_H_
#define WARMSTART_DAEMON_FORMATS_CHECKPOINT_H_

#include <string>

#include "absl/status/statusor.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

// The largest shard index file OpenCheckpoint reads. Real ones are a few
// hundred KiB.
inline constexpr uint64_t kMaxIndexFileBytes = 100'000'000;

// Tells the format of `source` from its first bytes (at most 9):
// "|TZR|" is tensorizer, "GGUF" is GGUF (both byte orders), and a plausible
// little-endian header length followed by '{' at byte 8 is safetensors.
// Detection does not validate the file; the parsers do.
// Errors: InvalidArgument "<name>: not a safetensors, tensorizer or GGUF
// file"; read errors as ReadAt returns them.
absl::StatusOr<Format> DetectFormat(const ByteSource& source);

// Detects the format of `source` and parses its header with
// ParseSafetensors, ParseTensorizer or ParseGguf.
absl::StatusOr<FileManifest> ParseFile(const ByteSource& source,
                                       const ParseOptions& options);

// Opens the checkpoint at `path`, which is one of:
//  - a weight file (any of the three formats);
//  - a Hugging Face shard index, a file whose name ends in ".index.json":
//    {"metadata": {...}, "weight_map": {"tensor": "shard file", ...}}. Each
//    shard is a plain file name in the index's directory (no '/', not "."
//    or ".."), parsed once, in sorted order; weight_map and the shards'
//    contents must agree exactly, tensor by tensor;
//  - a directory: its one "*.index.json" file if it holds exactly one, or
//    else every regular file in it ending in ".safetensors", ".tensors" or
//    ".gguf", in name order (at least one).
//  - a URL (IsRemoteUrl: http://, https://, s3://), opened through
//    options.remote: a weight file, or a shard index (a name ending in
//    ".index.json") whose shards are objects beside it (the same URL up to
//    the last '/'); each remote FileManifest records the object's version
//    (ETag); or a prefix ending in '/' ("s3://bucket/dir/"), listed and
//    chosen from as a directory is. Without options.remote a URL fails with
//    FailedPrecondition.
// The result lists one FileManifest per file, in the order above; tensor
// names are unique across all of them.
//
// Errors: a missing or unreadable path, shard or directory gives the errno
// status (NotFound, PermissionDenied, ...); malformed or inconsistent input
// gives InvalidArgument "<path>: <where>: <what>".
absl::StatusOr<Manifest> OpenCheckpoint(const std::string& path,
                                        const ParseOptions& options);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_CHECKPOINT_H_
