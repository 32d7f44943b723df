// Parsing of tensorizer `.tensors` files (data versions 1 to 4) into a
// FileManifest. See spec/TENSORIZER_FORMAT.md.
//
// A tensorizer file is a 73-byte file header, a metadata index (one entry per
// tensor: name, type, dtype, shape, header and data offsets, data length),
// then one record per tensor (a header holding the same fields plus the
// module index, stored hashes and, in encrypted files, the encryption
// parameters; then the data), then a u64 0 end marker.
#ifndef WARMSTART_DAEMON_FORMATS_TENSORIZER_H_
#define WARMSTART_DAEMON_FORMATS_TENSORIZER_H_

#include "absl/status/statusor.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

// Parses `source` as a tensorizer file and checks every rule of section 9 of
// the format notes, plus a few that follow from how the reference reader
// walks a file: records must follow each other without gaps (the first right
// after the metadata index), and the u64 0 end marker must follow the last
// record. Bytes after the end marker are ignored, as the reference reader
// ignores them. Names must be UTF-8; a name starting with 0x1E must be a JSON
// array of strings and non-negative integers and belong to a STATE_DICT
// tensor. Features must not appear in a version older than the one that
// introduced them (opaque dtypes need 2, encryption 3, meta tensors 4).
//
// Reads the file header, the metadata index and every tensor header (a
// bounded window at a time); never reads tensor data.
//
// The result: format kTensorizer, format_version = the data version,
// metadata = {}, tensors in file order with
//   name          the stored name, byte for byte (a structured name keeps its
//                 leading 0x1E);
//   dtype         a dtype.h name (numpy strings and torch names of opaque
//                 dtypes are mapped; any other is an "unknown dtype" error);
//   nbytes        prod(shape) * itemsize;
//   offset        the absolute offset of the stored data;
//   stored_bytes  the stored data length: nbytes, or 0 for a meta tensor;
//   checksums     CRC32 and/or SHA-256, each with `prefix` = the tensor's
//                 header without its crypt_info block and with every hash
//                 value zeroed (the bytes tensorizer hashes before the data);
//   encryption    set when the tensor's data is encrypted.
// The module index and tensor type (PARAM/BUFFER/STATE_DICT) are checked but
// not kept.
//
// Errors: malformed or truncated input is InvalidArgument with a message
// "<source name>: at byte N: <field>: <reason>", where <field> names the
// tensor once it is known (`tensor "x": dtype`). Read failures other than
// reading past the end (EIO and the like) are returned as ReadAt gave them.
//
// Thread safety: safe to call concurrently, also on one source (ReadAt is).
// `options` is accepted for symmetry with the other formats; tensorizer has
// nothing it changes.
absl::StatusOr<FileManifest> ParseTensorizer(const ByteSource& source,
                                             const ParseOptions& options);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_TENSORIZER_H_
