// Manifest: what a checkpoint holds, parsed from headers only.
//
// A Manifest lists files; each file lists its tensors with dtype, C-order
// shape, logical size and the absolute byte range of the stored data, plus
// any checksums and encryption parameters the file stores. Nothing here
// reads tensor data. Values are plain data: copyable, no thread-safety
// concerns beyond those of std containers.
#ifndef WARMSTART_DAEMON_FORMATS_MANIFEST_H_
#define WARMSTART_DAEMON_FORMATS_MANIFEST_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "daemon/base/file_opener.h"
#include "daemon/formats/byte_source.h"
#include "nlohmann/json.hpp"

namespace warmstart {

enum class Format { kSafetensors, kTensorizer, kGguf };

// "safetensors", "tensorizer" or "gguf".
absl::string_view FormatName(Format format);

// A checksum stored in the file. The digest covers `prefix` followed by the
// tensor's plaintext bytes (tensorizer hashes part of its own header first;
// `prefix` is empty for formats that hash only data).
struct StoredChecksum {
  enum class Kind { kCrc32, kSha256 };
  Kind kind;
  std::string prefix;
  std::string
      digest;  // Raw bytes: 4 for CRC32 (big-endian value), 32 for SHA-256.
};

// Argon2id parameters for a key derived from a password (libsodium
// crypto_pwhash).
struct KeyDerivation {
  uint64_t opslimit = 0;
  uint64_t memlimit = 0;
  int32_t algorithm = 0;
  std::string salt;
};

// XSalsa20-Poly1305 in independent chunks, as tensorizer writes it: chunk i
// of `chunk_size` bytes is sealed with the initial nonce incremented i times
// (little-endian) and authenticated by macs[i].
struct TensorEncryption {
  std::optional<KeyDerivation> key_derivation;
  uint64_t chunk_size = 0;
  std::array<uint8_t, 24> nonce{};
  std::vector<std::array<uint8_t, 16>> macs;
};

struct TensorEntry {
  std::string name;
  std::string dtype;            // A name from dtype.h.
  std::vector<uint64_t> shape;  // C order: outermost dimension first.
  uint64_t nbytes = 0;          // Logical size of the tensor's bytes.
  uint64_t offset = 0;          // Absolute file offset of the stored data.
  // Bytes stored at `offset`: equal to nbytes, except 0 for a meta tensor,
  // which stands for nbytes of zeros.
  uint64_t stored_bytes = 0;
  std::vector<StoredChecksum> checksums;
  std::optional<TensorEncryption> encryption;  // Set when data is encrypted.
  // What the tensor is to its module, where the format records it:
  // tensorizer's tensor type as "parameter", "buffer" or "state_dict";
  // empty for formats that do not record one (safetensors, GGUF).
  std::string role;

  bool is_meta() const { return stored_bytes == 0 && nbytes > 0; }
};

struct FileManifest {
  std::string path;
  Format format = Format::kSafetensors;
  std::optional<uint32_t> format_version;  // None for safetensors.
  uint64_t file_size = 0;
  // For a file read from a URL: the object's version (HTTP ETag) when it was
  // parsed, which loads and fingerprints compare; empty for local files.
  std::string version;
  bool big_endian = false;  // Only GGUF files can be big-endian.
  // Format metadata in the shape `warmstartctl inspect --json` prints:
  // safetensors' __metadata__ object; GGUF keys to values (arrays summarised
  // as {"type","len"} unless ParseOptions::full_metadata); {} otherwise.
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  std::vector<TensorEntry> tensors;
};

struct Manifest {
  std::vector<FileManifest> files;
};

struct ParseOptions {
  // Keep every element of GGUF metadata arrays, not just type and length.
  bool full_metadata = false;
  // Opens every file and directory that OpenCheckpoint reads (weight files,
  // shards, index files, checkpoint directories); null means plain open(2).
  // Not owned: it must outlive the call.
  const FileOpener* opener = nullptr;
  // Opens paths that are URLs (IsRemoteUrl); null means URLs are refused.
  // Not owned: it must outlive the call.
  const UrlSourceOpener* remote = nullptr;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_MANIFEST_H_
