#include "daemon/formats/tensorizer.h"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/key_source.h"
#include "daemon/formats/tensor_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::StartsWith;

std::string FixturePath(const std::string& name) {
  return testing::FixturePath("tensorizer/" + name);
}

std::string ReadFixture(const std::string& name) {
  return testing::ReadFileOrDie(FixturePath(name));
}

nlohmann::json ReadExpected(const std::string& name) {
  return nlohmann::json::parse(ReadFixture(name + ".json"));
}

std::string HexOf(const unsigned char* data, size_t size) {
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(data), size));
}

// The dtype.h name the parser must give each torch dtype in the fixtures.
const std::map<std::string, std::string>& TorchToDType() {
  static const auto* const kMap = new std::map<std::string, std::string>{
      {"torch.float32", "F32"},   {"torch.float16", "F16"},
      {"torch.bfloat16", "BF16"}, {"torch.float64", "F64"},
      {"torch.complex64", "C64"}, {"torch.complex32", "C32"},
      {"torch.int64", "I64"},     {"torch.int32", "I32"},
      {"torch.int16", "I16"},     {"torch.int8", "I8"},
      {"torch.uint8", "U8"},      {"torch.bool", "BOOL"},
  };
  return *kMap;
}

// The key an encrypted fixture's expected-values file gives, or null.
std::unique_ptr<KeyMaterial> KeyFor(const nlohmann::json& expected,
                                    const FileManifest& manifest) {
  if (expected.contains("key_hex")) {
    absl::StatusOr<KeyMaterial> key =
        KeyFromHex(expected["key_hex"].get<std::string>());
    EXPECT_OK(key);
    return key.ok() ? std::make_unique<KeyMaterial>(std::move(*key)) : nullptr;
  }
  if (!expected.contains("password")) return nullptr;
  const TensorEntry& first = manifest.tensors.at(0);
  EXPECT_TRUE(first.encryption.has_value() &&
              first.encryption->key_derivation.has_value());
  const KeyDerivation& kdf = *first.encryption->key_derivation;
  EXPECT_EQ(absl::BytesToHexString(kdf.salt),
            expected["salt_hex"].get<std::string>());
  EXPECT_EQ(kdf.opslimit, expected["opslimit"].get<uint64_t>());
  EXPECT_EQ(kdf.memlimit, expected["memlimit"].get<uint64_t>());
  absl::StatusOr<KeyMaterial> key =
      DeriveKey(Password(expected["password"].get<std::string>()), kdf);
  EXPECT_OK(key);
  if (!key.ok()) return nullptr;
  EXPECT_EQ(HexOf(key->data(), KeyMaterial::kSize),
            expected["derived_key_hex"].get<std::string>());
  return std::make_unique<KeyMaterial>(std::move(*key));
}

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, MatchesExpectedValues) {
  const std::string name = GetParam();
  const nlohmann::json json = ReadExpected(name);
  const nlohmann::json& expected = json["expected"];
  const nlohmann::json& observed = json["observed_by_independent_parser"];
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<FileByteSource> source,
                       FileByteSource::Open(FixturePath(name)));
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseTensorizer(*source, ParseOptions()));

  EXPECT_EQ(manifest.path, FixturePath(name));
  EXPECT_EQ(manifest.format, Format::kTensorizer);
  EXPECT_EQ(manifest.format_version,
            expected["file_format_version"].get<uint32_t>());
  EXPECT_EQ(manifest.file_size, json["size"].get<uint64_t>());
  EXPECT_EQ(manifest.metadata, nlohmann::ordered_json::object());
  ASSERT_THAT(manifest.tensors, SizeIs(expected["tensor_count"].get<size_t>()));

  const std::unique_ptr<KeyMaterial> key = KeyFor(json, manifest);
  bool any_encrypted = false;
  for (size_t i = 0; i < manifest.tensors.size(); ++i) {
    const TensorEntry& tensor = manifest.tensors[i];
    const nlohmann::json& want = expected["tensors"][i];
    const nlohmann::json& seen = observed["tensors"][i];
    SCOPED_TRACE(want["name"].get<std::string>());
    EXPECT_EQ(tensor.name, want["name"].get<std::string>());
    EXPECT_EQ(tensor.dtype,
              TorchToDType().at(want["torch_dtype"].get<std::string>()));
    EXPECT_EQ(tensor.shape, want["shape"].get<std::vector<uint64_t>>());
    EXPECT_EQ(tensor.nbytes, want["nbytes"].get<uint64_t>());
    EXPECT_EQ(tensor.stored_bytes, want["on_disk_data_length"].get<uint64_t>());
    EXPECT_EQ(tensor.offset, seen["data_offset"].get<uint64_t>());
    // The writer's tensor type, as the role the lease carries.
    const char* const kRoles[] = {"parameter", "buffer", "state_dict"};
    EXPECT_EQ(tensor.role, kRoles[want["tensor_type"].get<int>()]);

    std::vector<int> hash_types;
    for (const StoredChecksum& checksum : tensor.checksums) {
      hash_types.push_back(checksum.kind == StoredChecksum::Kind::kCrc32 ? 0
                                                                         : 1);
    }
    EXPECT_EQ(hash_types, seen["stored_hash_types"].get<std::vector<int>>());

    if (tensor.encryption.has_value()) {
      any_encrypted = true;
      const nlohmann::json* cipher = nullptr;
      for (const nlohmann::json& chunk : seen["crypt_info"]) {
        if (chunk["type"] == 2) cipher = &chunk;
      }
      ASSERT_NE(cipher, nullptr);
      EXPECT_EQ(tensor.encryption->chunk_size,
                (*cipher)["chunk_size"].get<uint64_t>());
      EXPECT_EQ(HexOf(tensor.encryption->nonce.data(), 24),
                (*cipher)["nonce"].get<std::string>());
      ASSERT_EQ(tensor.encryption->macs.size(), (*cipher)["macs"].size());
      for (size_t m = 0; m < tensor.encryption->macs.size(); ++m) {
        EXPECT_EQ(HexOf(tensor.encryption->macs[m].data(), 16),
                  (*cipher)["macs"][m].get<std::string>());
      }
    }

    ASSERT_OK_AND_ASSIGN(const std::string sha256,
                         TensorSha256Hex(*source, tensor, key.get()));
    EXPECT_EQ(sha256, want["sha256"].get<std::string>());
    EXPECT_OK(VerifyStoredChecksums(*source, tensor, key.get()));
  }
  // Version 3 always encrypts; from version 4, flag bit 0 says so.
  const bool flagged = expected["feature_flags"].get<int>() == 1;
  EXPECT_EQ(any_encrypted, flagged || manifest.format_version == 3u);
}

INSTANTIATE_TEST_SUITE_P(
    AllFixtures, FixtureTest,
    ::testing::Values(
        "module_simple_v1.tensors", "module_mixed_v2.tensors",
        "state_dict_flat_v1.tensors", "state_dict_bf16_v2.tensors",
        "write_tensor_calls_v1.tensors", "meta_tensors_v4.tensors",
        "meta_bf16_v4.tensors", "opaque_empty_bf16_v2.tensors",
        "encrypted_key_v3.tensors", "encrypted_password_v3.tensors",
        "encrypted_meta_v4_flag.tensors", "old_writer_v2.0.0_v2.tensors"),
    [](const ::testing::TestParamInfo<std::string>& info) {
      std::string name = info.param.substr(0, info.param.find(".tensors"));
      for (char& c : name) {
        if (!absl::ascii_isalnum(c)) c = '_';
      }
      return name;
    });

TEST(TensorizerTest, MetaTensorsStandForZeros) {
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<FileByteSource> source,
      FileByteSource::Open(FixturePath("meta_tensors_v4.tensors")));
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseTensorizer(*source, ParseOptions()));
  const TensorEntry& meta = manifest.tensors.at(1);
  EXPECT_EQ(meta.name, "meta.f16");
  EXPECT_TRUE(meta.is_meta());
  EXPECT_EQ(meta.stored_bytes, 0u);
  EXPECT_EQ(meta.nbytes, 24u);
  EXPECT_FALSE(manifest.tensors.at(0).is_meta());
}

// The checksum prefix is the header with the hash values zeroed and no
// crypt_info: check it byte for byte on the first record of a plain file.
TEST(TensorizerTest, ChecksumPrefixIsTheHeaderWithHashValuesZeroed) {
  const std::string bytes = ReadFixture("module_simple_v1.tensors");
  MemoryByteSource source("simple.tensors", bytes);
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseTensorizer(source, ParseOptions()));
  const TensorEntry& tensor = manifest.tensors.at(0);
  ASSERT_THAT(tensor.checksums, SizeIs(2));
  constexpr uint64_t kHeader = 262217;
  std::string want = bytes.substr(kHeader, 81);
  std::fill(want.begin() + 35, want.begin() + 39, '\0');  // CRC32 value.
  std::fill(want.begin() + 41, want.begin() + 73, '\0');  // SHA-256 value.
  EXPECT_EQ(tensor.checksums[0].prefix, want);
  EXPECT_EQ(tensor.checksums[1].prefix, want);
  // CRC32 is stored little-endian and kept big-endian.
  EXPECT_EQ(absl::BytesToHexString(tensor.checksums[0].digest), "591575b4");
}

TEST(TensorizerTest, ChecksumPrefixLeavesOutCryptInfo) {
  const std::string bytes = ReadFixture("encrypted_key_v3.tensors");
  MemoryByteSource source("enc.tensors", bytes);
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseTensorizer(source, ParseOptions()));
  const TensorEntry& tensor = manifest.tensors.at(0);
  ASSERT_THAT(tensor.checksums, SizeIs(1));
  constexpr uint64_t kHeader = 262217;
  // Fields through the hash block (66 bytes), then data_length (last 8 of
  // the 150-byte header); the 76-byte crypt_info between them is left out.
  std::string want = bytes.substr(kHeader, 66) + bytes.substr(kHeader + 142, 8);
  std::fill(want.begin() + 34, want.begin() + 66, '\0');
  EXPECT_EQ(tensor.checksums[0].prefix, want);
}

std::string Le(uint64_t value, size_t bytes) {
  std::string out(bytes, '\0');
  for (size_t i = 0; i < bytes; ++i)
    out[i] = static_cast<char>(value >> (8 * i));
  return out;
}

void Put(std::string* bytes, uint64_t offset, const std::string& patch) {
  ASSERT_LE(offset + patch.size(), bytes->size());
  bytes->replace(offset, patch.size(), patch);
}

// Replaces the first occurrence of `from` (in the metadata index) and,
// when `both`, the second (in the record header) with `to`, which must be
// as long.
void Rename(std::string* bytes, const std::string& from, const std::string& to,
            bool both) {
  ASSERT_EQ(from.size(), to.size());
  size_t at = bytes->find(from);
  ASSERT_NE(at, std::string::npos);
  bytes->replace(at, to.size(), to);
  if (!both) return;
  at = bytes->find(from, at + 1);
  ASSERT_NE(at, std::string::npos);
  bytes->replace(at, to.size(), to);
}

TEST(TensorizerTest, AcceptsAWellFormedStructuredName) {
  std::string bytes = ReadFixture("state_dict_flat_v1.tensors");
  const std::string structured = "\x1e[\"model\",\"emb\",0]";
  Rename(&bytes, "model.embed.weight", structured, /*both=*/true);
  MemoryByteSource source("structured.tensors", bytes);
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseTensorizer(source, ParseOptions()));
  EXPECT_EQ(manifest.tensors.at(0).name, structured);
}

// Offsets in module_simple_v1.tensors (see its expected-values file).
// Index entry 0 (".running", BUFFER, <f4, [2]) starts at byte 73:
constexpr uint64_t kIndexType = 83;
constexpr uint64_t kIndexDType = 85;
constexpr uint64_t kIndexHeaderOffset = 93;
constexpr uint64_t kIndexDataOffset = 101;
constexpr uint64_t kIndexDataLength = 109;
// Its record header (81 bytes) starts at 262217:
constexpr uint64_t kHeader = 262217;
constexpr uint64_t kHeaderName = kHeader + 13;
constexpr uint64_t kHeaderNameLen = kHeader + 11;
constexpr uint64_t kHeaderShape = kHeader + 26;
constexpr uint64_t kHashBlockLen = kHeader + 30;
constexpr uint64_t kFirstHashType = kHeader + 33;
constexpr uint64_t kHeaderDataLength = kHeader + 73;
constexpr uint64_t kSimpleSize = 263359;
// encrypted_key_v3.tensors: the first header (150 bytes, "enc.f32") also
// starts at 262217; its XSalsa20 chunk's fields:
constexpr uint64_t kCipherChunkType = kHeader + 84;
constexpr uint64_t kCipherChunkSize = kHeader + 86;
constexpr uint64_t kCipherNumMacs = kHeader + 118;

struct MalformedCase {
  std::string name;
  std::string fixture;
  std::function<void(std::string*)> mutate;
  std::string message;  // A substring the error must contain.
};

std::vector<MalformedCase> MalformedCases() {
  const std::string simple = "module_simple_v1.tensors";
  const std::string flat = "state_dict_flat_v1.tensors";
  const std::string bf16 = "state_dict_bf16_v2.tensors";
  const std::string encrypted = "encrypted_key_v3.tensors";
  auto path_name = [](std::string to) {
    return [to](std::string* b) {
      Rename(b, "model.embed.weight", to, /*both=*/false);
    };
  };
  return {
      {"BadMagic", simple, [](std::string* b) { (*b)[1] = 'X'; },
       "at byte 0: magic: expected |TZR|"},
      {"TooShortForMagic", simple, [](std::string* b) { b->resize(3); },
       "too short for the tensorizer magic"},
      {"Version0", simple, [](std::string* b) { Put(b, 5, Le(0, 4)); },
       "at byte 5: data version: 0 is not supported"},
      {"Version5", simple, [](std::string* b) { Put(b, 5, Le(5, 4)); },
       "data version: 5 is not supported"},
      {"UnknownFlagBit", simple, [](std::string* b) { (*b)[9] = 0x02; },
       "feature_flags: unknown flag bits"},
      {"UnknownHighFlagBit", simple, [](std::string* b) { (*b)[40] = '\x80'; },
       "at byte 9: feature_flags: unknown"},
      {"EncryptedFlagInVersion1", simple, [](std::string* b) { (*b)[9] = 1; },
       "bit 0 (encrypted) is set, but encryption needs data version 3"},
      {"TruncatedFileHeader", simple, [](std::string* b) { b->resize(40); },
       "file header: the file is truncated"},
      {"MetadataLenPastEof", simple,
       [](std::string* b) { Put(b, 65, Le(uint64_t{1} << 40, 8)); },
       "metadata_len: 1099511627776 runs past the end of the file"},
      {"TensorCountTooLarge", simple,
       [](std::string* b) { Put(b, 57, Le(1000000, 8)); },
       "tensor_count: 1000000 entries cannot fit"},
      // Entries 0-2 take 136 bytes; entry 3 ("enc.0.bias") then loses its
      // data_length.
      {"IndexEntryPastMetadataLen", simple,
       [](std::string* b) { Put(b, 65, Le(174, 8)); },
       "\"enc.0.bias\": data_length: needs 8 bytes, but only 0 remain before "
       "the end of the metadata index"},
      {"NameLenPastHeader", simple,
       [](std::string* b) { Put(b, kHeaderNameLen, Le(60000, 2)); },
       "tensor \".running\": name: needs 60000 bytes"},
      {"UnknownDType", simple,
       [](std::string* b) { Put(b, kIndexDType, "<f3"); },
       "dtype: unknown dtype \"<f3\""},
      {"TwoNulsInDType", bf16,
       [](std::string* b) {
         Rename(b, "torch.bfloat16", std::string("\0orch.bfloat16", 14), false);
       },
       "more than one NUL in dtype"},
      {"OpaqueViewSizeMismatch", bf16,
       [](std::string* b) { Rename(b, "<V2", "<V4", false); },
       "the view is 4 bytes, but torch.bfloat16 elements are 2"},
      {"OpaqueDTypeInVersion1", bf16,
       [](std::string* b) { Put(b, 5, Le(1, 4)); },
       "needs data version 2; this file is version 1"},
      {"BadTensorType", simple, [](std::string* b) { (*b)[kIndexType] = 3; },
       "type: 3 is not PARAM (0), BUFFER (1) or STATE_DICT (2)"},
      {"NameNotUtf8", simple,
       [](std::string* b) { Rename(b, ".running", ".run\xff\xfeng", false); },
       "name: not valid UTF-8"},
      {"DuplicateName", "module_mixed_v2.tensors",
       [](std::string* b) {
         Rename(b, "tied_b.weight", "tied_a.weight", false);
       },
       "duplicate name: index entry 22 has the same name"},
      {"StructuredNameInParam", simple,
       [](std::string* b) {
         Rename(b, "enc.0.weight", "\x1e[\"enc\",0,1]", false);
       },
       "allowed only for STATE_DICT tensors"},
      {"StructuredNameNegative", flat, path_name("\x1e[\"model\",\"em\",-1]"),
       "path component 2 is a negative integer"},
      {"StructuredNameFloat", flat, path_name("\x1e[\"model\",1.5,\"x\"]"),
       "path component 1 is a non-integer number"},
      {"StructuredNameNewline", flat, path_name("\x1e[\"model\",\"em\n\",0]"),
       "must not contain CR or LF"},
      {"StructuredNameNotArray", flat, path_name("\x1e{\"model\":\"emb12\"}"),
       "must be a JSON array"},
      {"StructuredNameNested", flat, path_name("\x1e[\"model\",[\"e\",1]]"),
       "is a nested array"},
      {"StructuredNameBadJson", flat, path_name("\x1e[\"model\",\"embe\",]"),
       "not valid JSON"},
      {"HeaderSizeTooSmall", simple,
       [](std::string* b) { Put(b, kHeader, Le(10, 8)); },
       "header_size: 10 is smaller than the 26 bytes"},
      {"HeaderSizeZero", simple,
       [](std::string* b) { Put(b, kHeader, Le(0, 8)); },
       "header_size: 0 is the end marker"},
      {"HeaderSizeMismatch", simple,
       [](std::string* b) { Put(b, kHeader, Le(82, 8)); },
       "header_size: 82, but the header's fields and data_length take 81 "
       "bytes"},
      {"HeaderSizePastEof", simple,
       [](std::string* b) { Put(b, kHeader, Le(uint64_t{1} << 33, 8)); },
       "header_size: 8589934592 runs past the end of the file"},
      {"HashBlockLenMismatch", simple,
       [](std::string* b) { Put(b, kHashBlockLen, Le(40, 2)); },
       "hash_block_len: 40, but hash_count and its 2 entries take 41 bytes"},
      {"UnknownHashType", simple,
       [](std::string* b) { (*b)[kFirstHashType] = 7; },
       "hash 0 type: 7 is not CRC32 (0) or SHA-256 (1)"},
      {"NegativeDataLength", simple,
       [](std::string* b) { Put(b, kHeaderDataLength, Le(~uint64_t{7}, 8)); },
       "data_length: -8 is negative"},
      {"DataLengthNotShapeSize", simple,
       [](std::string* b) { Put(b, kIndexDataLength, Le(4, 8)); },
       "data_length: 4, but shape [2] of F32 needs 8 bytes"},
      {"MetaTensorBeforeVersion4", simple,
       [](std::string* b) { Put(b, kIndexDataLength, Le(0, 8)); },
       "a meta tensor, which stores no data, needs data version 4"},
      {"DataPastEof", simple,
       [](std::string* b) { b->resize(kSimpleSize - 12); },
       "data: 8 bytes run past the end of the file"},
      {"MissingEndMarker", simple,
       [](std::string* b) { b->resize(kSimpleSize - 8); },
       "end marker: missing"},
      {"WrongEndMarker", simple,
       [](std::string* b) { Put(b, kSimpleSize - 8, Le(1, 8)); },
       "end marker: expected a u64 0 after the last of 6 records, found 1"},
      {"IndexHeaderOffsetGap", simple,
       [](std::string* b) { Put(b, kIndexHeaderOffset, Le(kHeader + 1, 8)); },
       "header_offset: the metadata index says 262218"},
      {"IndexDataOffsetDisagrees", simple,
       [](std::string* b) { Put(b, kIndexDataOffset, Le(262299, 8)); },
       "data_offset: the metadata index says 262299, but the header"},
      {"IndexTypeDisagrees", simple,
       [](std::string* b) { (*b)[kIndexType] = 0; },
       "type: the header says 1, but the metadata index says 0"},
      {"IndexShapeDisagrees", simple,
       [](std::string* b) { Put(b, kHeaderShape, Le(3, 4)); },
       "shape: the header says [3], but the metadata index says [2]"},
      {"IndexNameDisagrees", simple,
       [](std::string* b) { (*b)[kHeaderName + 1] = 'x'; },
       "name: the header says \".xunning\""},
      {"IndexDTypeDisagrees", simple,
       [](std::string* b) { Put(b, kHeader + 22, "<i4"); },
       "dtype: the header says \"<i4\", but the metadata index says \"<f4\""},
      {"EncryptedFlagWithoutCryptInfo", "meta_tensors_v4.tensors",
       [](std::string* b) { (*b)[9] = 1; }, "crypt_info: missing"},
      {"CryptInfoWithoutEncryptedFlag", "encrypted_meta_v4_flag.tensors",
       [](std::string* b) { (*b)[9] = 0; },
       "header_size: 148, but the header's fields"},
      {"CipherChunkSizeNotMultipleOf64", encrypted,
       [](std::string* b) { Put(b, kCipherChunkSize, Le(2097152 + 1, 8)); },
       "chunk_size: 2097153 must be at least 1024 and a multiple of 64"},
      {"CipherChunkSizeTooSmall", encrypted,
       [](std::string* b) { Put(b, kCipherChunkSize, Le(512, 8)); },
       "chunk_size: 512 must be at least 1024"},
      {"NumMacsMismatch", encrypted,
       [](std::string* b) { Put(b, kCipherNumMacs, Le(2, 8)); },
       "num_macs: 2, but 4096 bytes in chunks of 2097152 need 1"},
      {"UnknownCryptChunkType", encrypted,
       [](std::string* b) { Put(b, kCipherChunkType, Le(9, 2)); },
       "type: 9 is not key derivation (1) or XSalsa20-Poly1305 (2)"},
      {"SequentialCipherUnsupported", encrypted,
       [](std::string* b) { Put(b, kCipherChunkType, Le(3, 2)); },
       "sequential XSalsa20) is not supported"},
  };
}

class MalformedTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedTest, IsRejectedClearly) {
  const MalformedCase& test = GetParam();
  std::string bytes = ReadFixture(test.fixture);
  test.mutate(&bytes);
  MemoryByteSource source("bad.tensors", bytes);
  EXPECT_THAT(
      ParseTensorizer(source, ParseOptions()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(StartsWith("bad.tensors: "), HasSubstr(test.message))));
}

INSTANTIATE_TEST_SUITE_P(
    AllCases, MalformedTest, ::testing::ValuesIn(MalformedCases()),
    [](const ::testing::TestParamInfo<MalformedCase>& info) {
      return info.param.name;
    });

TEST(MalformedCasesTest, MessagesAreDistinct) {
  std::set<std::string> messages;
  for (const MalformedCase& test : MalformedCases()) {
    EXPECT_TRUE(messages.insert(test.message).second) << test.name;
  }
}

// Every truncation of a file must be rejected as malformed (the end marker
// makes even a cut between records detectable), never crash.
TEST(TensorizerTest, EveryTruncationIsRejected) {
  const std::string bytes = ReadFixture("module_simple_v1.tensors");
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 200; ++n) lengths.push_back(n);
  for (size_t n = kHeader - 8; n < bytes.size(); ++n) lengths.push_back(n);
  for (size_t n : lengths) {
    MemoryByteSource source("cut.tensors",
                            absl::string_view(bytes).substr(0, n));
    EXPECT_THAT(ParseTensorizer(source, ParseOptions()),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         StartsWith("cut.tensors: ")))
        << "length " << n;
  }
}

// Random byte changes in the file header, index and record headers: the
// parser must return OK or InvalidArgument, and a successful parse must
// describe ranges inside the file.
TEST(TensorizerTest, RandomCorruptionNeverCrashes) {
  const std::string original = ReadFixture("encrypted_password_v3.tensors");
  std::mt19937 random(testing::TestSeed());
  std::vector<std::pair<size_t, size_t>> regions = {
      {0, 73}, {73, 73 + 102}, {262217, original.size()}};
  for (int iteration = 0; iteration < 2000; ++iteration) {
    std::string bytes = original;
    const int changes = 1 + static_cast<int>(random() % 4);
    for (int c = 0; c < changes; ++c) {
      const auto& region = regions[random() % regions.size()];
      const size_t at =
          region.first + random() % (region.second - region.first);
      bytes[at] = static_cast<char>(random());
    }
    MemoryByteSource source("random.tensors", bytes);
    absl::StatusOr<FileManifest> manifest =
        ParseTensorizer(source, ParseOptions());
    if (!manifest.ok()) {
      EXPECT_THAT(manifest, StatusIs(absl::StatusCode::kInvalidArgument,
                                     StartsWith("random.tensors: ")));
      continue;
    }
    for (const TensorEntry& tensor : manifest->tensors) {
      EXPECT_LE(tensor.offset + tensor.stored_bytes, bytes.size());
    }
  }
}

// A source whose reads fail: read errors other than running past the end
// must reach the caller unchanged.
class FailingSource : public ByteSource {
 public:
  explicit FailingSource(std::string data) : data_(std::move(data)) {}
  const std::string& name() const override { return name_; }
  uint64_t size() const override { return data_.size(); }
  absl::Status ReadAt(uint64_t offset, uint64_t, char*) const override {
    return absl::UnavailableError(
        absl::StrCat("failing.tensors: read at byte ", offset, ": EIO"));
  }

 private:
  std::string name_ = "failing.tensors";
  std::string data_;
};

TEST(TensorizerTest, ReadErrorsPassThrough) {
  FailingSource source(ReadFixture("module_simple_v1.tensors"));
  EXPECT_THAT(ParseTensorizer(source, ParseOptions()),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("EIO")));
}

}  // namespace
}  // namespace warmstart
