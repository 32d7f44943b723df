// libFuzzer target: ParseTensorizer on arbitrary bytes, then
// ReadTensorPlaintext and VerifyStoredChecksums on what it accepted. Besides
// crashes and sanitizer reports, it aborts when an accepted file's manifest
// breaks the format's guarantees, when a rejection is not a well-formed
// InvalidArgument naming the source, or when streaming a tensor does not
// yield exactly its bytes in bounded pieces.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/check.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/dtype.h"
#include "daemon/formats/key_source.h"
#include "daemon/formats/manifest.h"
#include "daemon/formats/tensor_data.h"
#include "daemon/formats/tensorizer.h"

namespace {

constexpr char kName[] = "fuzz.tensors";
// The file header plus the end marker.
constexpr uint64_t kFileHeaderBytes = 73;
constexpr uint64_t kEndMarkerBytes = 8;
// Meta tensors stand for zeros the file does not hold; stream only those
// small enough to keep an iteration fast.
constexpr uint64_t kMaxStreamedBytes = uint64_t{16} << 20;

void CheckTensor(const warmstart::TensorEntry& tensor, uint32_t version) {
  const warmstart::DTypeInfo* dtype = warmstart::FindDType(tensor.dtype);
  WS_CHECK(dtype != nullptr) << "known dtype";
  absl::StatusOr<uint64_t> count = warmstart::ElementCount(tensor.shape);
  WS_CHECK(count.ok()) << "element count";
  absl::StatusOr<uint64_t> size = warmstart::ByteSize(*dtype, *count);
  WS_CHECK(size.ok() && *size == tensor.nbytes)
      << "size matches dtype and shape";
  WS_CHECK(tensor.stored_bytes == tensor.nbytes ||
           (tensor.stored_bytes == 0 && version >= 4))
      << "stored bytes are nbytes, or 0 for a version 4 meta tensor";
  for (const warmstart::StoredChecksum& checksum : tensor.checksums) {
    const size_t digest =
        checksum.kind == warmstart::StoredChecksum::Kind::kCrc32 ? 4 : 32;
    WS_CHECK(checksum.digest.size() == digest) << "digest size";
    WS_CHECK(checksum.prefix.size() >= 26) << "prefix holds the fixed fields";
  }
  if (tensor.encryption.has_value()) {
    const warmstart::TensorEncryption& encryption = *tensor.encryption;
    WS_CHECK(version >= 3) << "encryption needs version 3";
    WS_CHECK(tensor.stored_bytes > 0) << "only stored data is encrypted";
    WS_CHECK(encryption.chunk_size >= 1024 && encryption.chunk_size % 64 == 0)
        << "cipher chunk size";
    const uint64_t chunks =
        (tensor.stored_bytes - 1) / encryption.chunk_size + 1;
    WS_CHECK(encryption.macs.size() == chunks) << "one MAC per chunk";
  }
}

void CheckManifest(const warmstart::FileManifest& manifest,
                   absl::string_view bytes) {
  WS_CHECK(manifest.path == kName) << "path is the source name";
  WS_CHECK(manifest.format == warmstart::Format::kTensorizer) << "format";
  WS_CHECK(manifest.format_version.has_value() &&
           *manifest.format_version >= 1 && *manifest.format_version <= 4)
      << "format version 1 to 4";
  WS_CHECK(manifest.file_size == bytes.size()) << "file size";
  WS_CHECK(manifest.metadata.is_object() && manifest.metadata.empty())
      << "metadata is {}";
  // Records follow the index in order, each header before its data, and the
  // end marker after the last.
  uint64_t next = kFileHeaderBytes;
  std::set<std::string> names;
  for (const warmstart::TensorEntry& tensor : manifest.tensors) {
    WS_CHECK(names.insert(tensor.name).second) << "names are unique";
    WS_CHECK(tensor.offset > next) << "data follows the previous record";
    WS_CHECK(tensor.offset <= bytes.size() &&
             tensor.stored_bytes <= bytes.size() - tensor.offset)
        << "data inside the file";
    CheckTensor(tensor, *manifest.format_version);
    next = tensor.offset + tensor.stored_bytes;
  }
  WS_CHECK(bytes.size() - next >= kEndMarkerBytes) << "room for the end marker";
}

void StreamTensor(const warmstart::ByteSource& source,
                  const warmstart::TensorEntry& tensor,
                  const warmstart::KeyMaterial& key) {
  if (tensor.nbytes > kMaxStreamedBytes) return;
  uint64_t total = 0;
  const absl::Status status = warmstart::ReadTensorPlaintext(
      source, tensor, &key, [&total](absl::string_view piece) {
        WS_CHECK(!piece.empty() &&
                 piece.size() <= warmstart::kPlaintextPieceBytes)
            << "pieces are non-empty and bounded";
        total += piece.size();
        return absl::OkStatus();
      });
  if (tensor.encryption.has_value()) {
    // The fuzzer's key is not the writer's: decryption fails cleanly.
    WS_CHECK(status.ok() || absl::IsInvalidArgument(status))
        << "decryption fails as InvalidArgument";
    return;
  }
  WS_CHECK(status.ok()) << "unencrypted data streams";
  WS_CHECK(total == tensor.nbytes) << "streamed exactly nbytes";
  const absl::Status verified =
      warmstart::VerifyStoredChecksums(source, tensor, &key);
  WS_CHECK(verified.ok() || absl::IsDataLoss(verified))
      << "verification passes or reports DataLoss";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const warmstart::KeyMaterial* const kKey = [] {
    absl::StatusOr<warmstart::KeyMaterial> key =
        warmstart::KeyMaterial::FromBytes(std::string(32, '\x5a'));
    WS_CHECK(key.ok()) << "key";
    return new warmstart::KeyMaterial(*std::move(key));
  }();
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  warmstart::MemoryByteSource source(kName, bytes);
  absl::StatusOr<warmstart::FileManifest> manifest =
      warmstart::ParseTensorizer(source, warmstart::ParseOptions());
  if (!manifest.ok()) {
    WS_CHECK(absl::IsInvalidArgument(manifest.status()))
        << "rejections are InvalidArgument";
    WS_CHECK(absl::StartsWith(manifest.status().message(),
                              std::string(kName) + ": "))
        << "rejections name the source";
    return 0;
  }
  CheckManifest(*manifest, bytes);
  for (const warmstart::TensorEntry& tensor : manifest->tensors) {
    StreamTensor(source, tensor, *kKey);
  }
  return 0;
}
