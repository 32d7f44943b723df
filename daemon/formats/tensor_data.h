// Reading a tensor's plaintext bytes, for hashing and verification.
//
// Works on a TensorEntry of any format: safetensors and GGUF entries simply
// have no encryption and no stored checksums. Data is streamed in bounded
// pieces, never held whole. Encrypted data (tensorizer's XSalsa20-Poly1305
// in independent chunks) is decrypted one cipher chunk at a time, and a
// chunk reaches the caller only after its MAC has been verified.
//
// Thread safety: all functions are safe to call concurrently, also on one
// source (ReadAt is) and with one key.
#ifndef WARMSTART_DAEMON_FORMATS_TENSOR_DATA_H_
#define WARMSTART_DAEMON_FORMATS_TENSOR_DATA_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/key_source.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

// The most bytes handed to a sink in one call.
inline constexpr uint64_t kPlaintextPieceBytes = uint64_t{4} << 20;
// The largest cipher chunk accepted. A chunk must be held whole until its
// MAC is checked, so this bounds the memory a hostile file can make a reader
// allocate. tensorizer writes 2 MiB chunks.
inline constexpr uint64_t kMaxCipherChunkBytes = uint64_t{64} << 20;

// Receives consecutive pieces of plaintext (non-empty, at most
// kPlaintextPieceBytes each; the view is valid only during the call). A
// non-OK return stops the read and is returned as is.
using PlaintextSink = std::function<absl::Status(absl::string_view piece)>;

// Streams the `tensor.nbytes` bytes of `tensor`'s plaintext to `sink`, in
// order: a meta tensor yields zeros; encrypted data is decrypted with `key`.
// When the file stores a key derivation (tensor.encryption->key_derivation)
// and the user gave a password, derive `key` first with DeriveKey (once per
// distinct derivation: it is deliberately slow).
//
// Errors:
//   FailedPrecondition  the data is encrypted and `key` is null;
//   InvalidArgument     a MAC does not verify ("decryption failed: wrong key
//                       or corrupted data"), or `tensor`'s sizes or
//                       encryption parameters are inconsistent (a cipher
//                       chunk over kMaxCipherChunkBytes included);
//   as ReadAt reports   read failures.
// REQUIRES: `tensor` came from parsing `source`, or at least describes a
// range of it. `key` (nullable) outlives the call.
absl::Status ReadTensorPlaintext(const ByteSource& source,
                                 const TensorEntry& tensor,
                                 const KeyMaterial* key,
                                 const PlaintextSink& sink);

// The SHA-256 of `tensor`'s plaintext (as ReadTensorPlaintext yields it) in
// lowercase hex. Errors as ReadTensorPlaintext.
absl::StatusOr<std::string> TensorSha256Hex(const ByteSource& source,
                                            const TensorEntry& tensor,
                                            const KeyMaterial* key);

// Checks every stored checksum of `tensor` in one pass over its data: each
// digest must match its prefix followed by the stored plaintext (for a meta
// tensor nothing is stored, so the prefix alone). OK when there are none.
// A mismatch is DataLoss naming the file, the tensor, the checksum kind and
// the expected and actual values; other errors as ReadTensorPlaintext.
absl::Status VerifyStoredChecksums(const ByteSource& source,
                                   const TensorEntry& tensor,
                                   const KeyMaterial* key);

// Decrypts in place the stored bytes [tensor_offset, tensor_offset +
// length) of encrypted `tensor`, held at `data`: whole cipher chunks
// (tensor_offset a multiple of the chunk size; length whole chunks or up to
// the end). For loaders that read encrypted data in their own units. Errors
// as ReadTensorPlaintext, naming `file_name`; InvalidArgument when the range
// is not whole chunks or the tensor is not encrypted.
absl::Status DecryptInPlace(absl::string_view file_name,
                            const TensorEntry& tensor, const KeyMaterial* key,
                            uint64_t tensor_offset, char* data,
                            uint64_t length);

class Sha256Digest;  // An incremental SHA-256; defined in tensor_data.cc.

// The payload type ChecksumVerifier::Finish (and VerifyStoredChecksums) puts
// on a mismatch, which tells it apart from other DataLoss errors such as
// EIO.
inline constexpr char kChecksumMismatchPayload[] =
    "type.warmstart.dev/checksum_mismatch";

// True for a status that reports a stored checksum that does not match.
bool IsChecksumMismatch(const absl::Status& status);

// Recomputes `tensor`'s stored checksums from its stored plaintext given in
// order, in pieces of any size. Move-only.
class ChecksumVerifier {
 public:
  // Errors: InvalidArgument when a stored digest has the wrong size.
  // REQUIRES: `tensor` outlives the verifier.
  static absl::StatusOr<ChecksumVerifier> Start(absl::string_view file_name,
                                                const TensorEntry& tensor);
  // The next bytes of the stored plaintext.
  absl::Status Update(absl::string_view plaintext);
  // DataLoss naming the file, the tensor, each mismatching kind, expected
  // and actual values; OK when every checksum matches (or there are none).
  absl::Status Finish();

 private:
  struct Running {
    const StoredChecksum* stored = nullptr;
    unsigned long crc = 0;  // zlib's uLong.
    std::shared_ptr<Sha256Digest> sha;
  };
  ChecksumVerifier() = default;
  ChecksumVerifier(const ChecksumVerifier&) = delete;
  ChecksumVerifier& operator=(const ChecksumVerifier&) = delete;

 public:
  ChecksumVerifier(ChecksumVerifier&&) = default;
  ChecksumVerifier& operator=(ChecksumVerifier&&) = default;

 private:
  std::string where_;
  std::vector<Running> running_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_TENSOR_DATA_H_
