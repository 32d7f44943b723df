// Parsing of safetensors headers into a FileManifest.
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of
// UTF-8 JSON (an object, optionally followed by spaces), then the tensors'
// bytes back to back. See spec/SAFETENSORS_FORMAT.md.
#ifndef WARMSTART_DAEMON_FORMATS_SAFETENSORS_H_
#define WARMSTART_DAEMON_FORMATS_SAFETENSORS_H_

#include "absl/status/statusor.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

// The largest header length accepted, as in the reference reader.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Parses the header of the safetensors file `source` and checks it against
// every rule of the format, stricter than the reference reader: duplicate
// keys, unknown keys inside a tensor entry, anything but spaces after the
// JSON object, and bytes after the last tensor's data are all rejected.
//
// Reads only the first 8 + N bytes of `source` (N <= 100,000,000, and the
// whole header is held in memory while parsing); never reads tensor data.
// The result lists the tensors in file data order (by offset; empty tensors
// that share an offset by name), with absolute offsets and stored_bytes equal
// to nbytes; `metadata` is the __metadata__ object (empty when absent).
//
// Errors: malformed or truncated input is InvalidArgument with a message
// "<source name>: <where>: <what>", where <where> is "at byte N",
// `tensor "name": field` or `key "x"`. Read failures other than reading past
// the end (EIO and the like) are returned as ReadAt reported them.
//
// Thread safety: safe to call concurrently, also on one source (ReadAt is).
// `options` is accepted for symmetry with the other formats; safetensors
// has nothing it changes.
absl::StatusOr<FileManifest> ParseSafetensors(const ByteSource& source,
                                              const ParseOptions& options);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_SAFETENSORS_H_
