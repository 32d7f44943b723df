#include "daemon/formats/tensor_data.h"

#include <openssl/evp.h>
#include <sodium.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/key_source.h"
#include "daemon/formats/tensorizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::Each;
using ::testing::HasSubstr;
using ::testing::Le;
using ::testing::SizeIs;

constexpr char kFixtureKeyHex[] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

std::string ReadFixture(const std::string& name) {
  return testing::ReadFileOrDie(testing::FixturePath("tensorizer/" + name));
}

FileManifest ParseOrDie(const ByteSource& source) {
  absl::StatusOr<FileManifest> manifest =
      ParseTensorizer(source, ParseOptions());
  EXPECT_OK(manifest);
  return manifest.ok() ? *std::move(manifest) : FileManifest();
}

KeyMaterial FixtureKey() { return *KeyFromHex(kFixtureKeyHex); }

std::string Sha256Hex(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), length));
}

// Collects what ReadTensorPlaintext streams, and the size of each piece.
struct Collected {
  std::string bytes;
  std::vector<size_t> pieces;
};

absl::StatusOr<Collected> Collect(const ByteSource& source,
                                  const TensorEntry& tensor,
                                  const KeyMaterial* key) {
  Collected out;
  absl::Status status =
      ReadTensorPlaintext(source, tensor, key, [&out](absl::string_view piece) {
        out.bytes.append(piece.data(), piece.size());
        out.pieces.push_back(piece.size());
        return absl::OkStatus();
      });
  if (!status.ok()) return status;
  return out;
}

std::string RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 random(seed);
  std::string out(size, '\0');
  for (char& c : out) c = static_cast<char>(random());
  return out;
}

TEST(ReadTensorPlaintextTest, MetaTensorYieldsZeros) {
  const std::string bytes = ReadFixture("meta_tensors_v4.tensors");
  MemoryByteSource source("meta.tensors", bytes);
  const FileManifest manifest = ParseOrDie(source);
  const TensorEntry& meta = manifest.tensors.at(2);  // f32 [2, 3, 4]
  ASSERT_TRUE(meta.is_meta());
  ASSERT_OK_AND_ASSIGN(Collected got, Collect(source, meta, nullptr));
  EXPECT_EQ(got.bytes, std::string(96, '\0'));
}

TEST(ReadTensorPlaintextTest, LargeTensorsArriveInBoundedPieces) {
  const std::string data = RandomBytes(9 * 1024 * 1024 + 3, 1);
  const std::string file = "head" + data + "tail";
  MemoryByteSource source("big.bin", file);
  TensorEntry tensor;
  tensor.name = "big";
  tensor.dtype = "U8";
  tensor.shape = {data.size()};
  tensor.nbytes = tensor.stored_bytes = data.size();
  tensor.offset = 4;
  ASSERT_OK_AND_ASSIGN(Collected got, Collect(source, tensor, nullptr));
  EXPECT_EQ(got.bytes, data);
  EXPECT_THAT(got.pieces, SizeIs(3));
  EXPECT_THAT(got.pieces, Each(Le(kPlaintextPieceBytes)));
  ASSERT_OK_AND_ASSIGN(const std::string sha256,
                       TensorSha256Hex(source, tensor, nullptr));
  EXPECT_EQ(sha256, Sha256Hex(data));
}

TEST(ReadTensorPlaintextTest, LargeMetaTensorArrivesInBoundedPieces) {
  MemoryByteSource source("empty.bin", "");
  TensorEntry tensor;
  tensor.name = "zeros";
  tensor.nbytes = 10 * 1024 * 1024;
  ASSERT_OK_AND_ASSIGN(Collected got, Collect(source, tensor, nullptr));
  EXPECT_EQ(got.bytes, std::string(tensor.nbytes, '\0'));
  EXPECT_THAT(got.pieces, Each(Le(kPlaintextPieceBytes)));
}

TEST(ReadTensorPlaintextTest, SinkErrorsStopTheRead) {
  const std::string bytes = ReadFixture("module_simple_v1.tensors");
  MemoryByteSource source("simple.tensors", bytes);
  const FileManifest manifest = ParseOrDie(source);
  EXPECT_THAT(ReadTensorPlaintext(source, manifest.tensors.at(0), nullptr,
                                  [](absl::string_view) {
                                    return absl::CancelledError("enough");
                                  }),
              StatusIs(absl::StatusCode::kCancelled, "enough"));
}

TEST(ReadTensorPlaintextTest, EncryptedTensorWithoutKeyIsFailedPrecondition) {
  const std::string bytes = ReadFixture("encrypted_key_v3.tensors");
  MemoryByteSource source("enc.tensors", bytes);
  const FileManifest manifest = ParseOrDie(source);
  EXPECT_THAT(
      TensorSha256Hex(source, manifest.tensors.at(0), nullptr),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               "enc.tensors: tensor \"enc.f32\" is encrypted: a key is needed "
               "(--key-hex, --key-file, --password or --password-file)"));
  EXPECT_THAT(VerifyStoredChecksums(source, manifest.tensors.at(0), nullptr),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("a key is needed")));
}

TEST(ReadTensorPlaintextTest, WrongKeyFailsClearly) {
  const std::string bytes = ReadFixture("encrypted_key_v3.tensors");
  MemoryByteSource source("enc.tensors", bytes);
  const FileManifest manifest = ParseOrDie(source);
  ASSERT_OK_AND_ASSIGN(KeyMaterial wrong, KeyFromHex(std::string(64, '7')));
  EXPECT_THAT(TensorSha256Hex(source, manifest.tensors.at(1), &wrong),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("enc.tensors: tensor \"enc.f16\": decryption "
                                 "failed: wrong key or corrupted data")));
}

TEST(ReadTensorPlaintextTest, ChangedCiphertextFailsDecryption) {
  std::string bytes = ReadFixture("encrypted_key_v3.tensors");
  {
    MemoryByteSource source("enc.tensors", bytes);
    const FileManifest manifest = ParseOrDie(source);
    bytes[manifest.tensors.at(2).offset + 3] ^= 0x01;
  }
  MemoryByteSource source("enc.tensors", bytes);
  const FileManifest manifest = ParseOrDie(source);
  const KeyMaterial key = FixtureKey();
  EXPECT_THAT(VerifyStoredChecksums(source, manifest.tensors.at(2), &key),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("decryption failed: wrong key or corrupted "
                                 "data")));
}

// Encrypts `plaintext` as tensorizer does: chunk i sealed with the initial
// nonce incremented i times.
TensorEntry EncryptedEntry(const std::string& plaintext, uint64_t chunk_size,
                           const std::array<uint8_t, 24>& nonce,
                           const KeyMaterial& key, std::string* file) {
  TensorEntry tensor;
  tensor.name = "sealed";
  tensor.dtype = "U8";
  tensor.shape = {plaintext.size()};
  tensor.nbytes = tensor.stored_bytes = plaintext.size();
  tensor.offset = 7;
  TensorEncryption encryption;
  encryption.chunk_size = chunk_size;
  encryption.nonce = nonce;
  std::array<uint8_t, 24> chunk_nonce = nonce;
  std::string ciphertext(plaintext.size(), '\0');
  for (uint64_t begin = 0; begin < plaintext.size(); begin += chunk_size) {
    const uint64_t length =
        std::min<uint64_t>(chunk_size, plaintext.size() - begin);
    std::array<uint8_t, 16> mac;
    crypto_secretbox_detached(
        reinterpret_cast<unsigned char*>(&ciphertext[begin]), mac.data(),
        reinterpret_cast<const unsigned char*>(&plaintext[begin]), length,
        chunk_nonce.data(), key.data());
    encryption.macs.push_back(mac);
    sodium_increment(chunk_nonce.data(), chunk_nonce.size());
  }
  tensor.encryption = encryption;
  *file = std::string(7, 'x') + ciphertext + "end";
  return tensor;
}

TEST(ReadTensorPlaintextTest, DecryptsManyChunksWithIncrementedNonces) {
  const KeyMaterial key = FixtureKey();
  std::array<uint8_t, 24> nonce{};
  nonce[0] = 0xfe;  // Incrementing carries into byte 1 after two chunks.
  const std::string plaintext = RandomBytes(5 * 1024 + 100, 2);
  std::string file;
  const TensorEntry tensor = EncryptedEntry(plaintext, 1024, nonce, key, &file);
  ASSERT_THAT(tensor.encryption->macs, SizeIs(6));
  MemoryByteSource source("sealed.bin", file);
  ASSERT_OK_AND_ASSIGN(Collected got, Collect(source, tensor, &key));
  EXPECT_EQ(got.bytes, plaintext);
}

TEST(ReadTensorPlaintextTest, CipherChunksLargerThanAPieceAreSplit) {
  const KeyMaterial key = FixtureKey();
  const std::string plaintext = RandomBytes(9 * 1024 * 1024, 3);
  std::string file;
  const TensorEntry tensor =
      EncryptedEntry(plaintext, 8 * 1024 * 1024, {}, key, &file);
  MemoryByteSource source("sealed.bin", file);
  ASSERT_OK_AND_ASSIGN(Collected got, Collect(source, tensor, &key));
  EXPECT_EQ(got.bytes, plaintext);
  EXPECT_THAT(got.pieces, Each(Le(kPlaintextPieceBytes)));
}

TEST(ReadTensorPlaintextTest, RejectsInconsistentEncryption) {
  const KeyMaterial key = FixtureKey();
  const std::string plaintext = RandomBytes(3000, 4);
  std::string file;
  TensorEntry tensor = EncryptedEntry(plaintext, 1024, {}, key, &file);
  MemoryByteSource source("sealed.bin", file);

  TensorEntry missing_mac = tensor;
  missing_mac.encryption->macs.pop_back();
  EXPECT_THAT(Collect(source, missing_mac, &key),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("2 MACs for 3 chunks")));

  TensorEntry huge_chunks = tensor;
  huge_chunks.encryption->chunk_size = kMaxCipherChunkBytes + 64;
  huge_chunks.encryption->macs.resize(1);
  EXPECT_THAT(Collect(source, huge_chunks, &key),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("chunk_size: 67108928 is not between 1 and")));
}

TEST(ReadTensorPlaintextTest, RejectsInconsistentSizes) {
  MemoryByteSource source("x.bin", "abcdef");
  TensorEntry tensor;
  tensor.name = "x";
  tensor.nbytes = 4;
  tensor.stored_bytes = 2;
  EXPECT_THAT(
      Collect(source, tensor, nullptr),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("stored_bytes 2 is neither nbytes (4) nor 0")));
}

class ChangedFileTest : public ::testing::Test {
 protected:
  // Parses module_simple_v1 with byte `at` (relative to the first tensor's
  // record or data) changed after parsing. Returns the first tensor.
  TensorEntry ChangeAndParse(bool in_data, uint64_t at) {
    bytes_ = ReadFixture("module_simple_v1.tensors");
    MemoryByteSource clean("simple.tensors", bytes_);
    TensorEntry tensor = ParseOrDie(clean).tensors.at(0);
    const uint64_t header = 262217;
    bytes_[(in_data ? tensor.offset : header) + at] ^= 0x40;
    return tensor;
  }

  std::string bytes_;
};

TEST_F(ChangedFileTest, ChangedDataByteFailsBothChecksums) {
  const TensorEntry tensor = ChangeAndParse(/*in_data=*/true, 5);
  MemoryByteSource source("simple.tensors", bytes_);
  EXPECT_THAT(
      VerifyStoredChecksums(source, tensor, nullptr),
      StatusIs(absl::StatusCode::kDataLoss,
               AllOf(HasSubstr("simple.tensors: tensor \".running\": CRC32 "
                               "mismatch: expected 591575b4, actual "),
                     HasSubstr("SHA-256 mismatch: expected "
                               "c3159f3c2e9d1a367df0c2546d2d5d957b2c57584f"
                               "966164f08f8ef76bfd4a3e, actual "))));
}

TEST_F(ChangedFileTest, ChangedDataByteFailsSha256Alone) {
  TensorEntry tensor = ChangeAndParse(/*in_data=*/true, 0);
  tensor.checksums.erase(tensor.checksums.begin());  // Keep only SHA-256.
  MemoryByteSource source("simple.tensors", bytes_);
  EXPECT_THAT(VerifyStoredChecksums(source, tensor, nullptr),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr("SHA-256 mismatch"),
                             ::testing::Not(HasSubstr("CRC32")))));
}

// The hashes cover the header too. module_idx is checked by nothing else,
// so a change there shows whether the prefix is what the writer hashed.
TEST_F(ChangedFileTest, ChangedHeaderByteFailsChecksums) {
  ChangeAndParse(/*in_data=*/false, 8);
  MemoryByteSource source("simple.tensors", bytes_);
  const FileManifest manifest = ParseOrDie(source);
  EXPECT_THAT(VerifyStoredChecksums(source, manifest.tensors.at(0), nullptr),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("CRC32")));
}

TEST(VerifyStoredChecksumsTest, EncryptedTensorsVerifyAgainstPlaintext) {
  const std::string bytes = ReadFixture("encrypted_meta_v4_flag.tensors");
  MemoryByteSource source("enc.tensors", bytes);
  const FileManifest manifest = ParseOrDie(source);
  const KeyMaterial key = FixtureKey();
  for (const TensorEntry& tensor : manifest.tensors) {
    EXPECT_OK(VerifyStoredChecksums(source, tensor, &key)) << tensor.name;
  }
  // The meta tensor has nothing encrypted: no key is needed for it.
  EXPECT_OK(VerifyStoredChecksums(source, manifest.tensors.at(1), nullptr));
}

TEST(VerifyStoredChecksumsTest, NoChecksumsIsOk) {
  MemoryByteSource source("plain.bin", "abcd");
  TensorEntry tensor;
  tensor.name = "plain";
  tensor.nbytes = tensor.stored_bytes = 4;
  EXPECT_OK(VerifyStoredChecksums(source, tensor, nullptr));
}

TEST(VerifyStoredChecksumsTest, ChecksumWithPrefixOnly) {
  // An empty prefix and data "abc": the well-known CRC32 and SHA-256.
  MemoryByteSource source("abc.bin", "abc");
  TensorEntry tensor;
  tensor.name = "abc";
  tensor.nbytes = tensor.stored_bytes = 3;
  StoredChecksum crc{StoredChecksum::Kind::kCrc32, "", ""};
  StoredChecksum sha{StoredChecksum::Kind::kSha256, "", ""};
  sha.digest = absl::HexStringToBytes(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  crc.digest = absl::HexStringToBytes("352441c2");
  tensor.checksums = {crc, sha};
  EXPECT_OK(VerifyStoredChecksums(source, tensor, nullptr));
  // The same bytes split as prefix "ab" + data "c".
  MemoryByteSource tail("c.bin", "c");
  tensor.nbytes = tensor.stored_bytes = 1;
  tensor.checksums[0].prefix = tensor.checksums[1].prefix = "ab";
  EXPECT_OK(VerifyStoredChecksums(tail, tensor, nullptr));
}

}  // namespace
}  // namespace warmstart
