// Parsing of GGUF headers (llama.cpp / ggml model files) into a FileManifest.
//
// A GGUF file is a header (magic "GGUF", version, tensor and key/value
// counts), typed metadata key/value pairs, tensor-info records (name, ggml
// dims, ggml type, offset), zero padding to the alignment, then the tensor
// data. See spec/GGUF_FORMAT.md, which this parser follows.
#ifndef WARMSTART_DAEMON_FORMATS_GGUF_H_
#define WARMSTART_DAEMON_FORMATS_GGUF_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

// Arrays nested deeper than this (an array at the top level is depth 1) are
// rejected. gguf-py writes at most 3 levels; the limit bounds recursion on
// hostile input.
inline constexpr int kGgufMaxArrayDepth = 16;

// Parses the header of the GGUF file `source` (versions 1, 2 and 3; little-
// or, from version 3, big-endian, recognised by the version field) and checks
// it against every rule of GGUF_FORMAT.md §8, except that `general.alignment`
// need only be a non-zero power of two (as ggml requires) and nested arrays
// are accepted up to kGgufMaxArrayDepth levels (as the spec and gguf-py allow).
// Strings must be valid UTF-8 and keys non-empty ASCII of at most 65535 bytes;
// BOOL values must be 0 or 1; tensor names must be shorter than 64 bytes and
// unique; each tensor's ggml type must be one that dtype.h names (ids 0-3,
// 6-30, 34, 35, 39), dims[0] a multiple of its block size, its offset a
// multiple of the alignment, and its bytes inside the file and disjoint from
// every other tensor's. Bytes after the last tensor are allowed.
//
// Reads the header sequentially through a 64 KiB window (one ReadAt per
// window, not per field), so at most one window past the header's end and
// none of the rest of the tensor data; numeric arrays that are only
// summarised are skipped unread. Counts and lengths are checked against the
// bytes left in the file before anything is allocated.
//
// The result: format kGguf, format_version, file_size, big_endian; tensors
// in tensor-info order with dtype names from dtype.h, C-order shape (ggml's
// dims reversed, stored trailing 1s kept; n_dims 0 gives shape []), absolute
// offsets, stored_bytes equal to nbytes and no checksums; `metadata` an
// object of every key in file order. Integers are JSON integers (signed
// types as int64, unsigned as uint64, so 64-bit values are exact), floats are
// numbers except NaN and infinities ("nan", "inf", "-inf"), BOOL is a
// boolean, STRING a string. An array is {"type": <element type, e.g.
// "UINT32", "STRING", "ARRAY">, "len": N} unless options.full_metadata, which
// gives the list of its elements (nested arrays as nested lists).
//
// Errors: malformed or truncated input is InvalidArgument with a message
// "<source name>: at byte N: <field>: <reason>", where <field> names what
// was being read (e.g. "header tensor_count", `kv 5 key`, `key "x"[3]`,
// `tensor "blk.0.attn_q.weight" dims[1]`). Read failures other than reading
// past the end (EIO and the like) are returned as ReadAt reported them.
//
// Thread safety: safe to call concurrently, also on one source (ReadAt is).
absl::StatusOr<FileManifest> ParseGguf(const ByteSource& source,
                                       const ParseOptions& options);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_GGUF_H_
