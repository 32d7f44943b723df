#include "daemon/formats/tensor_data.h"

#include <openssl/evp.h>
#include <sodium.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <memory>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "daemon/formats/text_util.h"

namespace warmstart {

constexpr size_t kSha256Bytes = 32;

// Incremental SHA-256 through OpenSSL's EVP interface, which uses the
// CPU's SHA extensions where libsodium's portable code does not.
class Sha256Digest {
 public:
  static absl::StatusOr<Sha256Digest> Create() {
    Sha256Digest sha;
    if (sha.context_ == nullptr ||
        EVP_DigestInit_ex(sha.context_.get(), EVP_sha256(), nullptr) != 1) {
      return absl::InternalError("OpenSSL: cannot start a SHA-256 digest");
    }
    return sha;
  }

  absl::Status Update(absl::string_view data) {
    if (EVP_DigestUpdate(context_.get(), data.data(), data.size()) != 1) {
      return absl::InternalError("OpenSSL: SHA-256 update failed");
    }
    return absl::OkStatus();
  }

  // The raw 32-byte digest.
  absl::StatusOr<std::string> Finish() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(context_.get(), digest, &length) != 1 ||
        length != kSha256Bytes) {
      return absl::InternalError("OpenSSL: SHA-256 final failed");
    }
    return std::string(reinterpret_cast<const char*>(digest), length);
  }

 private:
  struct Free {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
  };

  Sha256Digest() : context_(EVP_MD_CTX_new()) {}

  std::unique_ptr<EVP_MD_CTX, Free> context_;
};

namespace {

static_assert(std::tuple_size<decltype(TensorEncryption::nonce)>::value ==
                  crypto_secretbox_NONCEBYTES,
              "tensorizer nonces are XSalsa20 nonces");
static_assert(
    std::tuple_size<decltype(TensorEncryption::macs)::value_type>::value ==
        crypto_secretbox_MACBYTES,
    "tensorizer MACs are Poly1305 tags");

constexpr size_t kCrc32Bytes = 4;

std::string Where(absl::string_view file_name, const TensorEntry& tensor) {
  return absl::StrCat(file_name, ": tensor ", Quote(tensor.name));
}

std::string Where(const ByteSource& source, const TensorEntry& tensor) {
  return Where(source.name(), tensor);
}

// Streams the stored bytes (the `stored_bytes` at `offset`) unencrypted.
absl::Status StreamPlain(const ByteSource& source, const TensorEntry& tensor,
                         const PlaintextSink& sink) {
  std::string buffer(std::min(tensor.stored_bytes, kPlaintextPieceBytes), '\0');
  for (uint64_t done = 0; done < tensor.stored_bytes;) {
    const uint64_t length =
        std::min(tensor.stored_bytes - done, kPlaintextPieceBytes);
    WS_RETURN_IF_ERROR(
        source.ReadAt(tensor.offset + done, length, buffer.data()));
    WS_RETURN_IF_ERROR(sink(absl::string_view(buffer.data(), length)));
    done += length;
  }
  return absl::OkStatus();
}

// Streams the stored bytes decrypted. Each cipher chunk is read whole and
// authenticated before any of it is passed on, so a sink never sees
// plaintext that a wrong key or a changed byte produced.
absl::Status StreamDecrypted(const ByteSource& source,
                             const TensorEntry& tensor, const KeyMaterial* key,
                             const PlaintextSink& sink) {
  const uint64_t chunk_size = tensor.encryption->chunk_size;
  std::vector<char> buffer(
      std::min({chunk_size, tensor.stored_bytes, kMaxCipherChunkBytes}));
  for (uint64_t begin = 0; begin < tensor.stored_bytes; begin += chunk_size) {
    const uint64_t length = std::min(chunk_size, tensor.stored_bytes - begin);
    if (length > buffer.size()) {
      // DecryptInPlace rejects the chunk size; let it say so.
      return DecryptInPlace(source.name(), tensor, key, begin, nullptr, length);
    }
    WS_RETURN_IF_ERROR(
        source.ReadAt(tensor.offset + begin, length, buffer.data()));
    WS_RETURN_IF_ERROR(DecryptInPlace(source.name(), tensor, key, begin,
                                      buffer.data(), length));
    for (uint64_t done = 0; done < length;) {
      const uint64_t piece = std::min(length - done, kPlaintextPieceBytes);
      WS_RETURN_IF_ERROR(sink(absl::string_view(buffer.data() + done, piece)));
      done += piece;
    }
  }
  return absl::OkStatus();
}

// Streams the plaintext of what is stored: `stored_bytes` bytes, which for
// a meta tensor is nothing. Stored checksums cover exactly this.
absl::Status StreamStored(const ByteSource& source, const TensorEntry& tensor,
                          const KeyMaterial* key, const PlaintextSink& sink) {
  if (tensor.stored_bytes != tensor.nbytes && tensor.stored_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(source, tensor), ": stored_bytes ", tensor.stored_bytes,
        " is neither nbytes (", tensor.nbytes, ") nor 0 (a meta tensor)"));
  }
  if (tensor.stored_bytes == 0) return absl::OkStatus();
  if (tensor.encryption.has_value()) {
    return StreamDecrypted(source, tensor, key, sink);
  }
  return StreamPlain(source, tensor, sink);
}

// zlib's crc32 takes a 32-bit length; pieces are at most 4 MiB.
static_assert(kPlaintextPieceBytes <= 0xffffffffu,
              "a piece must fit zlib's uInt length");

uLong Crc32Update(uLong crc, absl::string_view data) {
  return crc32(crc, reinterpret_cast<const Bytef*>(data.data()),
               static_cast<uInt>(data.size()));
}

std::string Crc32BigEndian(uLong crc) {
  std::string out(kCrc32Bytes, '\0');
  for (size_t i = 0; i < kCrc32Bytes; ++i) {
    out[i] = static_cast<char>((crc >> (8 * (kCrc32Bytes - 1 - i))) & 0xff);
  }
  return out;
}

}  // namespace

absl::Status ReadTensorPlaintext(const ByteSource& source,
                                 const TensorEntry& tensor,
                                 const KeyMaterial* key,
                                 const PlaintextSink& sink) {
  if (!tensor.is_meta()) return StreamStored(source, tensor, key, sink);
  const std::string zeros(std::min(tensor.nbytes, kPlaintextPieceBytes), '\0');
  for (uint64_t done = 0; done < tensor.nbytes;) {
    const uint64_t length =
        std::min(tensor.nbytes - done, kPlaintextPieceBytes);
    WS_RETURN_IF_ERROR(sink(absl::string_view(zeros.data(), length)));
    done += length;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TensorSha256Hex(const ByteSource& source,
                                            const TensorEntry& tensor,
                                            const KeyMaterial* key) {
  WS_ASSIGN_OR_RETURN(Sha256Digest sha, Sha256Digest::Create());
  WS_RETURN_IF_ERROR(ReadTensorPlaintext(
      source, tensor, key,
      [&sha](absl::string_view piece) { return sha.Update(piece); }));
  WS_ASSIGN_OR_RETURN(const std::string digest, sha.Finish());
  return absl::BytesToHexString(digest);
}

absl::Status DecryptInPlace(absl::string_view file_name,
                            const TensorEntry& tensor, const KeyMaterial* key,
                            uint64_t tensor_offset, char* data,
                            uint64_t length) {
  if (!tensor.encryption.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(file_name, tensor), " is not encrypted"));
  }
  const TensorEncryption& encryption = *tensor.encryption;
  if (key == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        file_name, ": tensor ", Quote(tensor.name),
        " is encrypted: a key is needed (--key-hex, --key-file, --password "
        "or --password-file)"));
  }
  const uint64_t chunk_size = encryption.chunk_size;
  if (chunk_size == 0 || chunk_size > kMaxCipherChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(file_name, tensor), ": encryption chunk_size: ", chunk_size,
        " is not between 1 and the ", kMaxCipherChunkBytes,
        " bytes this reader holds in memory at once"));
  }
  const uint64_t chunks = tensor.stored_bytes / chunk_size +
                          (tensor.stored_bytes % chunk_size != 0 ? 1 : 0);
  if (encryption.macs.size() != chunks) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(file_name, tensor), ": encryption: ", encryption.macs.size(),
        " MACs for ", chunks, " chunks"));
  }
  if (tensor_offset % chunk_size != 0 || tensor_offset > tensor.stored_bytes ||
      length > tensor.stored_bytes - tensor_offset ||
      (length % chunk_size != 0 &&
       tensor_offset + length != tensor.stored_bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(file_name, tensor), ": bytes ", tensor_offset,
                     " to ", tensor_offset + length,
                     " are not whole cipher chunks of ", chunk_size));
  }
  // Chunk i uses the initial nonce incremented i times, little-endian.
  std::array<unsigned char, crypto_secretbox_NONCEBYTES> nonce =
      encryption.nonce;
  uint64_t first = tensor_offset / chunk_size;
  unsigned carry = 0;
  for (size_t i = 0; i < nonce.size(); ++i) {
    const unsigned sum = nonce[i] + (first & 0xff) + carry;
    nonce[i] = static_cast<unsigned char>(sum);
    carry = sum >> 8;
    first >>= 8;
  }
  for (uint64_t done = 0; done < length; done += chunk_size) {
    const uint64_t chunk = (tensor_offset + done) / chunk_size;
    const uint64_t bytes = std::min(chunk_size, length - done);
    auto* text = reinterpret_cast<unsigned char*>(data + done);
    // Decrypting in place is supported by libsodium.
    if (crypto_secretbox_open_detached(text, text,
                                       encryption.macs[chunk].data(), bytes,
                                       nonce.data(), key->data()) != 0) {
      const uint64_t at = tensor.offset + tensor_offset + done;
      return absl::InvalidArgumentError(absl::StrCat(
          Where(file_name, tensor),
          ": decryption failed: wrong key or corrupted data (cipher chunk ",
          chunk, ", file bytes ", at, " to ", at + bytes, ")"));
    }
    sodium_increment(nonce.data(), nonce.size());
  }
  return absl::OkStatus();
}

absl::StatusOr<ChecksumVerifier> ChecksumVerifier::Start(
    absl::string_view file_name, const TensorEntry& tensor) {
  ChecksumVerifier verifier;
  verifier.where_ = Where(file_name, tensor);
  for (const StoredChecksum& stored : tensor.checksums) {
    Running check;
    check.stored = &stored;
    const size_t digest_bytes = stored.kind == StoredChecksum::Kind::kCrc32
                                    ? kCrc32Bytes
                                    : kSha256Bytes;
    if (stored.digest.size() != digest_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(verifier.where_, ": a stored checksum is ",
                       stored.digest.size(), " bytes, not ", digest_bytes));
    }
    if (stored.kind == StoredChecksum::Kind::kCrc32) {
      check.crc = Crc32Update(crc32(0, nullptr, 0), stored.prefix);
    } else {
      WS_ASSIGN_OR_RETURN(Sha256Digest sha, Sha256Digest::Create());
      check.sha = std::make_shared<Sha256Digest>(std::move(sha));
      WS_RETURN_IF_ERROR(check.sha->Update(stored.prefix));
    }
    verifier.running_.push_back(std::move(check));
  }
  return verifier;
}

absl::Status ChecksumVerifier::Update(absl::string_view plaintext) {
  for (uint64_t done = 0; done < plaintext.size();) {
    const absl::string_view piece =
        plaintext.substr(done, kPlaintextPieceBytes);
    for (Running& check : running_) {
      if (check.sha != nullptr) {
        WS_RETURN_IF_ERROR(check.sha->Update(piece));
      } else {
        check.crc = Crc32Update(check.crc, piece);
      }
    }
    done += piece.size();
  }
  return absl::OkStatus();
}

absl::Status ChecksumVerifier::Finish() {
  // Report every mismatch, not only the first: whether all stored checksums
  // disagree (changed bytes) or only one (a damaged stored value) is a clue.
  std::vector<std::string> mismatches;
  for (Running& check : running_) {
    std::string actual;
    absl::string_view kind;
    if (check.sha != nullptr) {
      WS_ASSIGN_OR_RETURN(actual, check.sha->Finish());
      kind = "SHA-256";
    } else {
      actual = Crc32BigEndian(check.crc);
      kind = "CRC32";
    }
    if (actual != check.stored->digest) {
      mismatches.push_back(
          absl::StrCat(kind, " mismatch: expected ",
                       absl::BytesToHexString(check.stored->digest),
                       ", actual ", absl::BytesToHexString(actual)));
    }
  }
  if (!mismatches.empty()) {
    absl::Status status = absl::DataLossError(
        absl::StrCat(where_, ": ", absl::StrJoin(mismatches, "; ")));
    status.SetPayload(kChecksumMismatchPayload, absl::Cord());
    return status;
  }
  return absl::OkStatus();
}

bool IsChecksumMismatch(const absl::Status& status) {
  return status.code() == absl::StatusCode::kDataLoss &&
         status.GetPayload(kChecksumMismatchPayload).has_value();
}

absl::Status VerifyStoredChecksums(const ByteSource& source,
                                   const TensorEntry& tensor,
                                   const KeyMaterial* key) {
  if (tensor.checksums.empty()) return absl::OkStatus();
  WS_ASSIGN_OR_RETURN(ChecksumVerifier verifier,
                      ChecksumVerifier::Start(source.name(), tensor));
  WS_RETURN_IF_ERROR(StreamStored(
      source, tensor, key,
      [&verifier](absl::string_view piece) { return verifier.Update(piece); }));
  return verifier.Finish();
}

}  // namespace warmstart
