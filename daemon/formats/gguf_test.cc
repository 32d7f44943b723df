#include "daemon/formats/gguf.h"

#include <dirent.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

using ::warmstart::testing::Sha256Hex;

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Expected = nlohmann::json;  // The fixtures' expected-values files.
using Json = nlohmann::ordered_json;

constexpr char kSourceName[] = "mem.gguf";

// GGUF value type ids (GGUF_FORMAT.md §4.1).
enum : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// ggml type ids used by the hand-built inputs.
enum : uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8 };

struct ValueTypeName {
  const char* expected_name;  // As the expected-values files spell it.
  uint32_t id;
  uint32_t size;  // 0 for string and array.
};

constexpr ValueTypeName kValueTypeNames[] = {
    {"uint8", kUint8, 1},     {"int8", kInt8, 1},     {"uint16", kUint16, 2},
    {"int16", kInt16, 2},     {"uint32", kUint32, 4}, {"int32", kInt32, 4},
    {"float32", kFloat32, 4}, {"bool", kBool, 1},     {"string", kString, 0},
    {"array", kArray, 0},     {"uint64", kUint64, 8}, {"int64", kInt64, 8},
    {"float64", kFloat64, 8},
};

const ValueTypeName& TypeNamed(const std::string& name) {
  for (const ValueTypeName& type : kValueTypeNames) {
    if (name == type.expected_name) return type;
  }
  ADD_FAILURE() << "unknown type name in expected values: " << name;
  return kValueTypeNames[0];
}

// Writes GGUF fields in a chosen version and byte order. Builds the
// malformed inputs and re-encodes parsed metadata to compare with the file.
class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t version = 3, bool big_endian = false)
      : version_(version), big_endian_(big_endian) {}

  uint64_t size() const { return bytes_.size(); }
  const std::string& bytes() const { return bytes_; }

  GgufBuilder& Raw(absl::string_view raw) {
    bytes_.append(raw.data(), raw.size());
    return *this;
  }
  GgufBuilder& Uint(uint64_t value, int width) {
    for (int i = 0; i < width; ++i) {
      const int shift = 8 * (big_endian_ ? width - 1 - i : i);
      bytes_.push_back(static_cast<char>((value >> shift) & 0xff));
    }
    return *this;
  }
  GgufBuilder& U8(uint8_t value) { return Uint(value, 1); }
  GgufBuilder& U32(uint32_t value) { return Uint(value, 4); }
  GgufBuilder& U64(uint64_t value) { return Uint(value, 8); }
  GgufBuilder& F32(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return U32(bits);
  }
  GgufBuilder& F64(double value) {
    uint64_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return U64(bits);
  }
  // A count or length: u32 in version 1, u64 later.
  GgufBuilder& Count(uint64_t value) {
    return Uint(value, version_ == 1 ? 4 : 8);
  }
  GgufBuilder& Str(absl::string_view text) {
    Count(text.size());
    return Raw(text);
  }
  GgufBuilder& Zeros(uint64_t n) {
    bytes_.append(n, '\0');
    return *this;
  }
  GgufBuilder& PadTo(uint64_t alignment) {
    return Zeros((alignment - bytes_.size() % alignment) % alignment);
  }

  GgufBuilder& Header(uint64_t tensor_count, uint64_t kv_count) {
    Raw("GGUF");
    U32(version_);
    Count(tensor_count);
    return Count(kv_count);
  }
  // A key and a value type; the value follows.
  GgufBuilder& Key(absl::string_view key, uint32_t type) {
    Str(key);
    return U32(type);
  }
  GgufBuilder& KvU32(absl::string_view key, uint32_t value) {
    Key(key, kUint32);
    return U32(value);
  }
  GgufBuilder& KvString(absl::string_view key, absl::string_view value) {
    Key(key, kString);
    return Str(value);
  }
  GgufBuilder& Tensor(absl::string_view name, const std::vector<uint64_t>& dims,
                      uint32_t type, uint64_t offset) {
    Str(name);
    U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t dim : dims) Count(dim);
    U32(type);
    return U64(offset);
  }

 private:
  uint32_t version_;
  bool big_endian_;
  std::string bytes_;
};

absl::StatusOr<FileManifest> ParseBytes(absl::string_view bytes,
                                        bool full_metadata = false) {
  MemoryByteSource source(kSourceName, bytes);
  ParseOptions options;
  options.full_metadata = full_metadata;
  return ParseGguf(source, options);
}

// --- Fixtures -------------------------------------------------------------

const char* const kValidFixtures[] = {
    "ggmlc-v3-alltypes",           "ggmlc-v3-empty",
    "ggmlc-v3-metaonly",           "ggufpy-v1-tensors",
    "ggufpy-v3-alltypes",          "ggufpy-v3-bigendian",
    "ggufpy-v3-nested-array",      "llamacpp-vocab-bert-bge-v3",
    "llamacpp-vocab-falcon-v2",    "llamacpp-vocab-gpt-2-v3",
    "llamacpp-vocab-llama-spm-v3", "llamacpp-vocab-llama-v1",
    "llamacpp-vocab-llama-v3",     "ollama-llama-2-tiny-random",
};

// Whether `actual` (parsed) holds the same value as `expected` (from the
// expected-values file), with integers compared exactly.
bool SameValue(const Json& actual, const Expected& expected) {
  if (expected.is_boolean()) {
    return actual.is_boolean() && actual.get<bool>() == expected.get<bool>();
  }
  if (expected.is_string()) {
    return actual.is_string() &&
           actual.get<std::string>() == expected.get<std::string>();
  }
  if (expected.is_number_float()) {
    return actual.is_number_float() &&
           actual.get<double>() == expected.get<double>();
  }
  if (expected.is_number_unsigned()) {
    if (actual.is_number_unsigned()) {
      return actual.get<uint64_t>() == expected.get<uint64_t>();
    }
    return actual.is_number_integer() && actual.get<int64_t>() >= 0 &&
           static_cast<uint64_t>(actual.get<int64_t>()) ==
               expected.get<uint64_t>();
  }
  if (expected.is_number_integer()) {
    return actual.is_number_integer() && !actual.is_number_unsigned() &&
           actual.get<int64_t>() == expected.get<int64_t>();
  }
  return false;
}

// Checks that a parsed scalar has the JSON kind its GGUF type maps to.
void ExpectKind(const Json& actual, const std::string& type,
                const std::string& where) {
  SCOPED_TRACE(where);
  if (type == "uint8" || type == "uint16" || type == "uint32" ||
      type == "uint64") {
    EXPECT_TRUE(actual.is_number_unsigned()) << actual.dump();
  } else if (type == "int8" || type == "int16" || type == "int32" ||
             type == "int64") {
    EXPECT_TRUE(actual.is_number_integer() && !actual.is_number_unsigned())
        << actual.dump();
  } else if (type == "float32" || type == "float64") {
    EXPECT_TRUE(actual.is_number_float()) << actual.dump();
  } else if (type == "bool") {
    EXPECT_TRUE(actual.is_boolean()) << actual.dump();
  } else if (type == "string") {
    EXPECT_TRUE(actual.is_string()) << actual.dump();
  } else if (type == "array") {
    EXPECT_TRUE(actual.is_array()) << actual.dump();
  } else {
    ADD_FAILURE() << "unknown type " << type;
  }
}

// Re-encodes the parsed elements of an array described by `expected` (whose
// nested "elements" give inner arrays' types) as the file stores them.
void EncodeElements(const Expected& expected, const Json& elements,
                    const std::string& where, GgufBuilder* out) {
  const std::string type = expected["array_type"].get<std::string>();
  const ValueTypeName& info = TypeNamed(type);
  ASSERT_TRUE(elements.is_array()) << where;
  ASSERT_EQ(elements.size(), expected["length"].get<uint64_t>()) << where;
  for (size_t i = 0; i < elements.size(); ++i) {
    const Json& element = elements[i];
    const std::string element_where = absl::StrCat(where, "[", i, "]");
    ExpectKind(element, type, element_where);
    switch (info.id) {
      case kUint8:
      case kUint16:
      case kUint32:
      case kUint64:
        out->Uint(element.get<uint64_t>(), static_cast<int>(info.size));
        break;
      case kInt8:
      case kInt16:
      case kInt32:
      case kInt64:
        out->Uint(static_cast<uint64_t>(element.get<int64_t>()),
                  static_cast<int>(info.size));
        break;
      case kFloat32:
        out->F32(static_cast<float>(element.get<double>()));
        break;
      case kFloat64:
        out->F64(element.get<double>());
        break;
      case kBool:
        out->U8(element.get<bool>() ? 1 : 0);
        break;
      case kString:
        out->Str(element.get<std::string>());
        break;
      case kArray: {
        const Expected& inner = expected["elements"][i];
        out->U32(TypeNamed(inner["array_type"].get<std::string>()).id);
        out->Count(element.size());
        EncodeElements(inner, element, element_where, out);
        break;
      }
    }
  }
}

// Checks the summary statistics the expected-values file gives for an array.
void ExpectArrayStatistics(const Expected& expected, const Json& elements,
                           const std::string& where) {
  SCOPED_TRACE(where);
  if (elements.empty()) return;
  if (expected.contains("first")) {
    EXPECT_TRUE(SameValue(elements.front(), expected["first"]))
        << elements.front().dump();
  }
  if (expected.contains("last")) {
    EXPECT_TRUE(SameValue(elements.back(), expected["last"]))
        << elements.back().dump();
  }
  if (expected.contains("min")) {
    EXPECT_TRUE(SameValue(*std::min_element(elements.begin(), elements.end()),
                          expected["min"]));
  }
  if (expected.contains("max")) {
    EXPECT_TRUE(SameValue(*std::max_element(elements.begin(), elements.end()),
                          expected["max"]));
  }
  if (expected.contains("count_true")) {
    EXPECT_EQ(static_cast<uint64_t>(
                  std::count(elements.begin(), elements.end(), Json(true))),
              expected["count_true"].get<uint64_t>());
  }
  if (expected.contains("max_element_nbytes")) {
    size_t longest = 0;
    for (const Json& element : elements) {
      longest = std::max(longest, element.get<std::string>().size());
    }
    EXPECT_EQ(longest, expected["max_element_nbytes"].get<uint64_t>());
  }
}

// Checks one array (at any depth) of a full_metadata parse against the file:
// its elements re-encoded must equal the file's bytes exactly.
void ExpectFullArray(const Expected& expected, const Json& elements,
                     const std::string& file, uint32_t version, bool big_endian,
                     const std::string& where) {
  GgufBuilder encoded(version, big_endian);
  EncodeElements(expected, elements, where, &encoded);
  const uint64_t body_offset = expected["body_offset"].get<uint64_t>();
  const uint64_t body_nbytes = expected["body_nbytes"].get<uint64_t>();
  const std::string body = file.substr(body_offset, body_nbytes);
  EXPECT_TRUE(encoded.bytes() == body) << where << ": re-encoded elements "
                                       << "differ from the file's bytes";
  if (expected.contains("elements_sha256")) {
    const std::string sha = expected["elements_sha256"].get<std::string>();
    EXPECT_EQ(Sha256Hex(body), sha) << where;
    EXPECT_EQ(Sha256Hex(encoded.bytes()), sha) << where;
  }
  ExpectArrayStatistics(expected, elements, where);
  if (expected["array_type"] == "array") {
    for (size_t i = 0; i < elements.size(); ++i) {
      ExpectFullArray(expected["elements"][i], elements[i], file, version,
                      big_endian, absl::StrCat(where, "[", i, "]"));
    }
  }
}

void ExpectScalar(const Expected& expected, const Json& actual,
                  const std::string& where) {
  const std::string type = expected["type"].get<std::string>();
  ExpectKind(actual, type, where);
  EXPECT_TRUE(SameValue(actual, expected["value"]))
      << where << ": " << actual.dump() << " vs " << expected["value"].dump();
  if (expected.contains("bits")) {
    const uint64_t bits =
        std::stoull(expected["bits"].get<std::string>().substr(2), nullptr, 16);
    if (type == "float32") {
      const float value = static_cast<float>(actual.get<double>());
      uint32_t actual_bits;
      std::memcpy(&actual_bits, &value, sizeof(actual_bits));
      EXPECT_EQ(actual_bits, bits) << where;
    } else {
      const double value = actual.get<double>();
      uint64_t actual_bits;
      std::memcpy(&actual_bits, &value, sizeof(actual_bits));
      EXPECT_EQ(actual_bits, bits) << where;
    }
  }
  if (type == "string") {
    EXPECT_EQ(actual.get<std::string>().size(),
              expected["nbytes"].get<uint64_t>())
        << where;
  }
}

class GgufFixtureTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    path_ = testing::FixturePath(absl::StrCat("gguf/", GetParam(), ".gguf"));
    file_ = testing::ReadFileOrDie(path_);
    expected_ = Expected::parse(
        testing::ReadFileOrDie(
            testing::FixturePath(absl::StrCat("gguf/", GetParam(), ".json"))),
        nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(expected_.is_discarded()) << "bad expected-values file";
    ASSERT_EQ(file_.size(), expected_["file_size"].get<uint64_t>());
    ASSERT_EQ(Sha256Hex(file_), expected_["sha256"].get<std::string>());
  }

  absl::StatusOr<FileManifest> Parse(bool full_metadata) {
    absl::StatusOr<std::unique_ptr<FileByteSource>> source =
        FileByteSource::Open(path_);
    if (!source.ok()) return source.status();
    ParseOptions options;
    options.full_metadata = full_metadata;
    return ParseGguf(**source, options);
  }

  std::string path_;
  std::string file_;
  Expected expected_;
};

TEST_P(GgufFixtureTest, HeaderMatches) {
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, Parse(false));
  EXPECT_EQ(manifest.path, path_);
  EXPECT_EQ(manifest.format, Format::kGguf);
  EXPECT_EQ(manifest.format_version,
            std::optional<uint32_t>(expected_["version"].get<uint32_t>()));
  EXPECT_EQ(manifest.file_size, expected_["file_size"].get<uint64_t>());
  EXPECT_EQ(manifest.big_endian, expected_["endianness"] == "big");
  EXPECT_EQ(manifest.metadata.size(),
            expected_["metadata_kv_count"].get<uint64_t>());
  EXPECT_EQ(manifest.tensors.size(), expected_["tensor_count"].get<uint64_t>());

  const uint64_t alignment = expected_["alignment"].get<uint64_t>();
  if (expected_["alignment_explicit"].get<bool>()) {
    EXPECT_EQ(manifest.metadata["general.alignment"], Json(alignment));
  } else {
    EXPECT_FALSE(manifest.metadata.contains("general.alignment"));
  }
  if (manifest.tensors.empty()) return;  // No data section to check.
  const uint64_t data_start = expected_["data_section_offset"].get<uint64_t>();
  for (const TensorEntry& tensor : manifest.tensors) {
    EXPECT_EQ(tensor.offset % alignment, 0u) << tensor.name;
    EXPECT_GE(tensor.offset, data_start) << tensor.name;
  }
}

TEST_P(GgufFixtureTest, MetadataMatches) {
  ASSERT_OK_AND_ASSIGN(FileManifest summary, Parse(false));
  ASSERT_OK_AND_ASSIGN(FileManifest full, Parse(true));
  const uint32_t version = expected_["version"].get<uint32_t>();
  const bool big_endian = expected_["endianness"] == "big";
  const Expected& entries = expected_["metadata"];
  ASSERT_EQ(summary.metadata.size(), entries.size());
  ASSERT_EQ(full.metadata.size(), entries.size());

  auto summary_it = summary.metadata.items().begin();
  auto full_it = full.metadata.items().begin();
  for (const Expected& entry : entries) {
    const std::string key = entry["key"].get<std::string>();
    const std::string where = absl::StrCat(GetParam(), ": ", key);
    EXPECT_EQ(summary_it.key(), key);
    EXPECT_EQ(full_it.key(), key);
    if (entry["type"] == "array") {
      Json expected_summary = Json::object();
      expected_summary["type"] =
          absl::AsciiStrToUpper(entry["array_type"].get<std::string>());
      expected_summary["len"] = entry["length"].get<uint64_t>();
      EXPECT_EQ(summary_it.value(), expected_summary) << where;
      ExpectFullArray(entry, full_it.value(), file_, version, big_endian,
                      where);
    } else {
      ExpectScalar(entry, summary_it.value(), where);
      EXPECT_EQ(summary_it.value(), full_it.value()) << where;
    }
    ++summary_it;
    ++full_it;
  }
}

TEST_P(GgufFixtureTest, TensorsMatch) {
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, Parse(false));
  const Expected& tensors = expected_["tensors"];
  ASSERT_EQ(manifest.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Expected& expected = tensors[i];
    const TensorEntry& tensor = manifest.tensors[i];
    SCOPED_TRACE(expected["name"].get<std::string>());
    EXPECT_EQ(tensor.name, expected["name"].get<std::string>());
    std::vector<uint64_t> dims = expected["dims"].get<std::vector<uint64_t>>();
    EXPECT_EQ(dims.size(), expected["n_dims"].get<uint64_t>());
    std::reverse(dims.begin(), dims.end());
    EXPECT_EQ(tensor.shape, dims);
    EXPECT_EQ(tensor.dtype, expected["type"].get<std::string>());
    const DTypeInfo* dtype = FindDType(tensor.dtype);
    ASSERT_NE(dtype, nullptr);
    EXPECT_EQ(dtype->block_elements, expected["block_size"].get<uint32_t>());
    EXPECT_EQ(dtype->block_bytes, expected["type_size"].get<uint32_t>());
    ASSERT_OK_AND_ASSIGN(uint64_t elements, ElementCount(tensor.shape));
    EXPECT_EQ(elements, expected["n_elements"].get<uint64_t>());
    EXPECT_EQ(tensor.offset, expected["absolute_offset"].get<uint64_t>());
    EXPECT_EQ(tensor.nbytes, expected["nbytes"].get<uint64_t>());
    EXPECT_EQ(tensor.stored_bytes, tensor.nbytes);
    EXPECT_TRUE(tensor.checksums.empty());
    EXPECT_FALSE(tensor.encryption.has_value());
    ASSERT_LE(tensor.offset + tensor.nbytes, file_.size());
    EXPECT_EQ(Sha256Hex(absl::string_view(file_).substr(tensor.offset,
                                                        tensor.nbytes)),
              expected["sha256"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(AllValid, GgufFixtureTest,
                         ::testing::ValuesIn(kValidFixtures),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(GgufFixtures, EveryFixtureIsCovered) {
  const std::string dir = testing::FixturePath("gguf");
  DIR* handle = ::opendir(dir.c_str());
  ASSERT_NE(handle, nullptr) << dir;
  std::set<std::string> on_disk;
  while (const dirent* entry = ::readdir(handle)) {
    const std::string name = entry->d_name;
    if (absl::EndsWith(name, ".gguf")) {
      on_disk.insert(name.substr(0, name.size() - 5));
    }
  }
  ::closedir(handle);
  const std::set<std::string> listed(std::begin(kValidFixtures),
                                     std::end(kValidFixtures));
  EXPECT_EQ(on_disk, listed);
}

TEST(GgufFixtures, CorruptedVocabularyIsRejected) {
  const std::string path =
      testing::FixturePath("gguf/invalid/ushure-corrupted-vocab-bert-bge.gguf");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<FileByteSource> source,
                       FileByteSource::Open(path));
  for (bool full_metadata : {false, true}) {
    ParseOptions options;
    options.full_metadata = full_metadata;
    EXPECT_THAT(
        ParseGguf(*source, options),
        StatusIs(absl::StatusCode::kInvalidArgument,
                 absl::StrCat(path,
                              ": at byte 212: kv 5 key: key length 1572864 "
                              "exceeds the 627333 bytes left in the file")));
  }
}

// --- Malformed input --------------------------------------------------------

struct BadInput {
  std::string bytes;
  uint64_t at;  // The byte the error must point at.
};

struct MalformedCase {
  const char* name;
  std::function<BadInput()> build;
  const char* message;  // A substring of the error, after "at byte N: ".
};

// Appends `levels` array headers, each an array of one array.
void NestArrays(GgufBuilder* b, int levels) {
  for (int i = 0; i < levels; ++i) b->U32(kArray).U64(1);
}

std::vector<MalformedCase> MalformedCases() {
  constexpr uint64_t kHeader = 24;  // Version 2 and 3.
  return {
      {"empty_file",
       [] {
         return BadInput{"", 0};
       },
       "magic: file is truncated: needs 4 bytes, only 0 left"},
      {"bad_magic",
       [] {
         GgufBuilder b;
         b.Raw("GGML").U32(3).U64(0).U64(0);
         return BadInput{b.bytes(), 0};
       },
       "magic: expected \"GGUF\", found \"GGML\""},
      {"version_0",
       [] {
         GgufBuilder b(0);
         b.Header(0, 0);
         return BadInput{b.bytes(), 4};
       },
       "version: unsupported GGUF version 0"},
      {"version_4",
       [] {
         GgufBuilder b(4);
         b.Header(0, 0);
         return BadInput{b.bytes(), 4};
       },
       "version: unsupported GGUF version 4"},
      {"big_endian_version_2",
       [] {
         GgufBuilder b(2, /*big_endian=*/true);
         b.Header(0, 0);
         return BadInput{b.bytes(), 4};
       },
       "version: big-endian version 2"},
      {"truncated_in_header",
       [] {
         GgufBuilder b;
         b.Raw("GGUF").U32(3).Raw("abc");
         return BadInput{b.bytes(), 8};
       },
       "tensor_count: file is truncated: needs 8 bytes, only 3 left"},
      {"truncated_in_v1_header",
       [] {
         GgufBuilder b(1);
         b.Raw("GGUF").U32(1).U32(0).Raw("ab");
         return BadInput{b.bytes(), 12};
       },
       "kv_count: file is truncated: needs 4 bytes, only 2 left"},
      {"huge_kv_count",
       [] {
         GgufBuilder b;
         b.Header(0, uint64_t{1} << 40);
         return BadInput{b.bytes(), 16};
       },
       "kv_count 1099511627776 cannot fit"},
      {"huge_tensor_count",
       [] {
         GgufBuilder b;
         b.Header(uint64_t{1} << 63, 0);
         return BadInput{b.bytes(), 8};
       },
       "tensor_count 9223372036854775808 cannot fit"},
      {"truncated_in_key",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Count(20).Raw("genera");
         return BadInput{b.bytes(), kHeader};
       },
       "kv 0 key: key length 20 exceeds the 6 bytes left in the file"},
      {"truncated_in_value_type",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Str("abcdef").Raw("xy");
         return BadInput{b.bytes(), kHeader + 14};
       },
       "key \"abcdef\" value type: file is truncated: needs 4 bytes, only 2 "
       "left"},
      {"truncated_in_value",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("a", kUint32).Raw("xy");
         return BadInput{b.bytes(), kHeader + 13};
       },
       "key \"a\": file is truncated: needs 4 bytes, only 2 left"},
      {"truncated_in_string_value",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("s", kString).Count(10).Raw("abc");
         return BadInput{b.bytes(), kHeader + 13};
       },
       "key \"s\": string length 10 exceeds the 3 bytes left in the file"},
      {"huge_string_length",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("a", kString).U64(~uint64_t{0});
         return BadInput{b.bytes(), kHeader + 13};
       },
       "string length 18446744073709551615 exceeds the 0 bytes left"},
      {"huge_array_length",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("a", kArray).U32(kUint32).U64(uint64_t{1} << 62);
         return BadInput{b.bytes(), kHeader + 17};
       },
       "key \"a\" array length: array length 4611686018427387904 of UINT32 "
       "exceeds what the 0 bytes left in the file can hold"},
      {"unknown_value_type",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("a", 13).U32(0);
         return BadInput{b.bytes(), kHeader + 9};
       },
       "key \"a\" value type: unknown value type 13"},
      {"unknown_array_element_type",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("a", kArray).U32(200).U64(0);
         return BadInput{b.bytes(), kHeader + 13};
       },
       "key \"a\" array element type: unknown value type 200"},
      {"v1_uint64_value",
       [] {
         GgufBuilder b(1);
         b.Header(0, 1).Key("a", kUint64).U64(1);
         return BadInput{b.bytes(), 16 + 5};
       },
       "value type 10 (UINT64) does not exist in GGUF version 1"},
      {"empty_key",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("", kUint8).U8(0).Zeros(1);
         return BadInput{b.bytes(), kHeader};
       },
       "kv 0 key: empty key"},
      {"key_too_long",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key(std::string(65536, 'k'), kUint8).U8(0);
         return BadInput{b.bytes(), kHeader};
       },
       "key length 65536 exceeds the limit of 65535 bytes"},
      {"non_ascii_key",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("caf\xc3\xa9", kUint8).U8(0);
         return BadInput{b.bytes(), kHeader + 8 + 3};
       },
       "key is not ASCII (byte 0xc3 at position 3)"},
      {"invalid_utf8_key",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("a\xc0\x80", kUint8).U8(0);
         return BadInput{b.bytes(), kHeader + 8 + 1};
       },
       "key is not valid UTF-8 (byte 0xc0 at position 1)"},
      {"duplicate_key",
       [] {
         GgufBuilder b;
         b.Header(0, 2).KvU32("a", 1).KvU32("a", 2);
         return BadInput{b.bytes(), kHeader + 17};
       },
       "kv 1 key: duplicate key \"a\" (first at byte 24)"},
      {"invalid_utf8_string",
       [] {
         GgufBuilder b;
         b.Header(0, 1).KvString("s",
                                 "a\xff"
                                 "b");
         return BadInput{b.bytes(), kHeader + 21 + 1};
       },
       "key \"s\": string is not valid UTF-8 (byte 0xff at position 1)"},
      {"invalid_utf8_string_element",
       [] {
         GgufBuilder b;
         b.Header(0, 1)
             .Key("v", kArray)
             .U32(kString)
             .U64(2)
             .Str("ok")
             .Str("\x80");
         return BadInput{b.bytes(), kHeader + 25 + 10 + 8};
       },
       "key \"v\"[1]: string is not valid UTF-8 (byte 0x80 at position 0)"},
      {"bool_not_0_or_1",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("b", kBool).U8(2);
         return BadInput{b.bytes(), kHeader + 13};
       },
       "key \"b\": BOOL value 2 is neither 0 nor 1"},
      {"bool_element_not_0_or_1",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("b", kArray).U32(kBool).U64(3).U8(0).U8(1).U8(7);
         return BadInput{b.bytes(), kHeader + 25 + 2};
       },
       "key \"b\"[2]: BOOL value 7 is neither 0 nor 1"},
      {"arrays_nested_too_deep",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("n", kArray);
         NestArrays(&b, kGgufMaxArrayDepth);
         const uint64_t at = b.size();
         b.U32(kUint8).U64(0);
         return BadInput{b.bytes(), at};
       },
       "arrays nested deeper than 16 levels"},
      {"alignment_not_uint32",
       [] {
         GgufBuilder b;
         b.Header(0, 1).Key("general.alignment", kUint64).U64(32);
         return BadInput{b.bytes(), kHeader + 25};
       },
       "general.alignment must be UINT32, not UINT64"},
      {"alignment_zero",
       [] {
         GgufBuilder b;
         b.Header(0, 1).KvU32("general.alignment", 0);
         return BadInput{b.bytes(), kHeader + 29};
       },
       "key \"general.alignment\": alignment must be non-zero"},
      {"alignment_not_power_of_two",
       [] {
         GgufBuilder b;
         b.Header(0, 1).KvU32("general.alignment", 48);
         return BadInput{b.bytes(), kHeader + 29};
       },
       "alignment 48 is not a power of two"},
      {"tensor_name_too_long",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor(std::string(64, 'n'), {32}, kF32, 0);
         return BadInput{b.bytes(), kHeader};
       },
       "tensor 0 name: tensor name length 64 exceeds the limit of 63 bytes"},
      {"invalid_utf8_tensor_name",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("w\xed\xa0\x80", {32}, kF32, 0);
         return BadInput{b.bytes(), kHeader + 8 + 1};
       },
       "tensor name is not valid UTF-8 (byte 0xed at position 1)"},
      {"truncated_in_tensor_info",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Str("tensor.name.x").U32(1).Raw("abc");
         return BadInput{b.bytes(), kHeader + 21 + 4};
       },
       "tensor \"tensor.name.x\" dims[0]: file is truncated: needs 8 bytes, "
       "only 3 left"},
      {"too_many_dims",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {1, 1, 1, 1, 1}, kF32, 0);
         return BadInput{b.bytes(), kHeader + 9};
       },
       "n_dims 5 exceeds the maximum of 4"},
      {"dim_too_large",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {4, uint64_t{1} << 63}, kF32, 0);
         return BadInput{b.bytes(), kHeader + 13 + 8};
       },
       "dims[1]: dimension 9223372036854775808 exceeds 2^63 - 1"},
      {"unknown_ggml_type",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {4}, 43, 0);
         return BadInput{b.bytes(), kHeader + 21};
       },
       "tensor \"t\" type: unknown ggml type 43"},
      {"removed_ggml_type",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {32}, 4, 0);
         return BadInput{b.bytes(), kHeader + 21};
       },
       "ggml type 4 (Q4_2) was removed"},
      {"unsupported_ggml_type",
       [] {
         // Q2_0 is in ggml but not in gguf-py 0.19, the reference followed.
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {64}, 42, 0);
         return BadInput{b.bytes(), kHeader + 21};
       },
       "ggml type 42 (Q2_0) is not supported"},
      {"row_not_whole_blocks",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {33, 2}, kQ4_0, 0);
         return BadInput{b.bytes(), kHeader + 13};
       },
       "dims[0] = 33 is not a multiple of the Q4_0 block size 32"},
      {"element_count_overflow",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {uint64_t{1} << 32, uint64_t{1} << 32},
                               kF32, 0);
         return BadInput{b.bytes(), kHeader + 13};
       },
       "tensor \"t\" dims: element count overflows int64"},
      {"byte_size_overflow",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {uint64_t{1} << 62}, kF32, 0);
         return BadInput{b.bytes(), kHeader + 13};
       },
       "byte size of 4611686018427387904 elements of F32 overflows int64"},
      {"offset_not_aligned",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {4}, kF32, 8);
         return BadInput{b.bytes(), kHeader + 25};
       },
       "offset 8 is not a multiple of the alignment 32"},
      {"duplicate_tensor_name",
       [] {
         GgufBuilder b;
         b.Header(2, 0).Tensor("a", {4}, kF32, 0).Tensor("a", {4}, kF32, 32);
         b.PadTo(32).Zeros(64);
         return BadInput{b.bytes(), kHeader + 33};
       },
       "tensor 1 name: duplicate tensor name \"a\" (also tensor 0)"},
      {"truncated_before_data_section",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {4}, kF32, 0);
         return BadInput{b.bytes(), kHeader + 33};
       },
       "data section: starts at byte 64 after padding to the alignment 32, "
       "past the end of the file (57 bytes)"},
      {"tensor_past_end_of_file",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {16}, kF32, 0).PadTo(32).Zeros(32);
         return BadInput{b.bytes(), kHeader + 25};
       },
       "data [64, 128) runs past the end of the file (96 bytes)"},
      {"offset_past_end_of_file",
       [] {
         GgufBuilder b;
         b.Header(1, 0).Tensor("t", {4}, kF32, uint64_t{1} << 40);
         b.PadTo(32).Zeros(32);
         return BadInput{b.bytes(), kHeader + 25};
       },
       "offset 1099511627776 points past the end of the file"},
      {"overlapping_tensors",
       [] {
         GgufBuilder b;
         b.Header(2, 0).Tensor("a", {16}, kF32, 0).Tensor("b", {8}, kF32, 32);
         b.PadTo(32).Zeros(96);
         return BadInput{b.bytes(), kHeader + 33 + 25};
       },
       "tensor \"b\" offset: data [128, 160) overlaps tensor \"a\" [96, 160)"},
  };
}

class GgufMalformedTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(GgufMalformedTest, IsRejectedAtTheRightByte) {
  const MalformedCase& test_case = GetParam();
  const BadInput input = test_case.build();
  for (bool full_metadata : {false, true}) {
    EXPECT_THAT(ParseBytes(input.bytes, full_metadata),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(StartsWith(absl::StrCat(
                                   kSourceName, ": at byte ", input.at, ": ")),
                               HasSubstr(test_case.message))));
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, GgufMalformedTest, ::testing::ValuesIn(MalformedCases()),
    [](const ::testing::TestParamInfo<MalformedCase>& info) {
      return std::string(info.param.name);
    });

TEST(GgufMalformed, CasesAreDistinct) {
  std::set<std::string> messages;
  for (const MalformedCase& test_case : MalformedCases()) {
    EXPECT_TRUE(messages.insert(test_case.message).second) << test_case.name;
  }
  EXPECT_GE(messages.size(), 18u);
}

TEST(GgufMalformed, EveryTruncationOfARealFileIsRejected) {
  const std::string file = testing::ReadFileOrDie(
      testing::FixturePath("gguf/ggufpy-v3-alltypes.gguf"));
  ASSERT_OK_AND_ASSIGN(FileManifest whole, ParseBytes(file));
  const TensorEntry& last = whole.tensors.back();
  // Everything up to the end of the last tensor's data is needed.
  for (size_t size = 0; size < last.offset + last.nbytes; ++size) {
    EXPECT_THAT(ParseBytes(absl::string_view(file).substr(0, size)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         StartsWith(absl::StrCat(kSourceName, ": at byte "))))
        << "size " << size;
  }
}

// --- Accepted edge cases ----------------------------------------------------

TEST(GgufParse, ZeroDimsIsAScalar) {
  GgufBuilder b;
  b.Header(1, 0).Tensor("s", {}, kF32, 0).PadTo(32).Zeros(32);
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(b.bytes()));
  ASSERT_EQ(manifest.tensors.size(), 1u);
  EXPECT_TRUE(manifest.tensors[0].shape.empty());
  EXPECT_EQ(manifest.tensors[0].nbytes, 4u);
  EXPECT_EQ(manifest.tensors[0].offset, 64u);
}

TEST(GgufParse, EmptyTensorsAndNamesAreAccepted) {
  GgufBuilder b;
  b.Header(3, 0)
      .Tensor("", {0, 3}, kQ4_0, 0)
      .Tensor("w", {32, 2}, kQ8_0, 0)
      .Tensor("z", {4, 0}, kF16, 64);
  b.PadTo(32).Zeros(96);
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(b.bytes()));
  ASSERT_EQ(manifest.tensors.size(), 3u);
  EXPECT_EQ(manifest.tensors[0].name, "");
  EXPECT_EQ(manifest.tensors[0].shape, (std::vector<uint64_t>{3, 0}));
  EXPECT_EQ(manifest.tensors[0].nbytes, 0u);
  EXPECT_EQ(manifest.tensors[1].dtype, "Q8_0");
  EXPECT_EQ(manifest.tensors[1].shape, (std::vector<uint64_t>{2, 32}));
  EXPECT_EQ(manifest.tensors[1].nbytes, 68u);
  EXPECT_EQ(manifest.tensors[2].nbytes, 0u);
}

TEST(GgufParse, NoTensorsWithOrWithoutPaddingAndTrailingBytes) {
  GgufBuilder unpadded;
  unpadded.Header(0, 1).KvString("general.architecture", "x");
  EXPECT_OK(ParseBytes(unpadded.bytes()));
  GgufBuilder padded = unpadded;
  padded.PadTo(32);
  EXPECT_OK(ParseBytes(padded.bytes()));

  GgufBuilder trailing;
  trailing.Header(1, 0).Tensor("t", {4}, kF32, 0).PadTo(32).Zeros(32);
  trailing.Raw("trailing bytes");
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(trailing.bytes()));
  EXPECT_EQ(manifest.tensors[0].offset, 64u);
}

TEST(GgufParse, ExplicitAlignmentPlacesData) {
  GgufBuilder b;
  b.Header(2, 1).KvU32("general.alignment", 64);
  b.Tensor("a", {5}, kF32, 0).Tensor("b", {3}, kF32, 64);
  const uint64_t info_end = b.size();
  b.PadTo(64).Zeros(128);
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(b.bytes()));
  const uint64_t data_start = (info_end + 63) / 64 * 64;
  EXPECT_EQ(manifest.tensors[0].offset, data_start);
  EXPECT_EQ(manifest.tensors[1].offset, data_start + 64);
  EXPECT_EQ(manifest.metadata["general.alignment"], Json(64u));

  GgufBuilder unaligned;
  unaligned.Header(1, 1).KvU32("general.alignment", 64);
  unaligned.Tensor("a", {5}, kF32, 32).PadTo(64).Zeros(128);
  EXPECT_THAT(ParseBytes(unaligned.bytes()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("offset 32 is not a multiple of the "
                                 "alignment 64")));
}

TEST(GgufParse, NonFiniteFloatsBecomeStrings) {
  GgufBuilder b;
  b.Header(0, 4);
  b.Key("nan", kFloat32).F32(std::numeric_limits<float>::quiet_NaN());
  b.Key("inf", kFloat64).F64(std::numeric_limits<double>::infinity());
  b.Key("-inf", kFloat32).F32(-std::numeric_limits<float>::infinity());
  b.Key("a", kArray)
      .U32(kFloat64)
      .U64(2)
      .F64(-0.0)
      .F64(std::numeric_limits<double>::quiet_NaN());
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseBytes(b.bytes(), /*full_metadata=*/true));
  EXPECT_EQ(manifest.metadata["nan"], Json("nan"));
  EXPECT_EQ(manifest.metadata["inf"], Json("inf"));
  EXPECT_EQ(manifest.metadata["-inf"], Json("-inf"));
  EXPECT_EQ(manifest.metadata["a"].dump(), "[-0.0,\"nan\"]");
}

TEST(GgufParse, ArraysSummarisedOrInFull) {
  GgufBuilder b;
  b.Header(0, 3);
  b.Key("empty", kArray).U32(kString).U64(0);
  b.Key("u64", kArray).U32(kUint64).U64(2).U64(~uint64_t{0}).U64(7);
  b.Key("nested", kArray).U32(kArray).U64(2);
  b.U32(kInt8).U64(1).U8(0xff);
  b.U32(kArray).U64(1).U32(kBool).U64(1).U8(1);
  ASSERT_OK_AND_ASSIGN(FileManifest summary, ParseBytes(b.bytes()));
  EXPECT_EQ(summary.metadata.dump(), R"({"empty":{"type":"STRING","len":0},)"
                                     R"("u64":{"type":"UINT64","len":2},)"
                                     R"("nested":{"type":"ARRAY","len":2}})");
  ASSERT_OK_AND_ASSIGN(FileManifest full,
                       ParseBytes(b.bytes(), /*full_metadata=*/true));
  EXPECT_EQ(full.metadata.dump(),
            R"({"empty":[],"u64":[18446744073709551615,7],)"
            R"("nested":[[-1],[[true]]]})");
}

TEST(GgufParse, BigEndianSyntheticFile) {
  GgufBuilder b(3, /*big_endian=*/true);
  b.Header(1, 2).KvU32("u", 0x01020304);
  b.Key("s", kArray).U32(kInt16).U64(2).Uint(0xfffe, 2).Uint(0x0102, 2);
  b.Tensor("t", {8, 2}, kF16, 0).PadTo(32).Zeros(32);
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseBytes(b.bytes(), /*full_metadata=*/true));
  EXPECT_TRUE(manifest.big_endian);
  EXPECT_EQ(manifest.metadata.dump(), R"({"u":16909060,"s":[-2,258]})");
  EXPECT_EQ(manifest.tensors[0].shape, (std::vector<uint64_t>{2, 8}));
  EXPECT_EQ(manifest.tensors[0].nbytes, 32u);
}

// --- Reading behaviour ------------------------------------------------------

// Forwards to a MemoryByteSource, counting reads; can fail the N-th read or
// claim a larger size than it has.
class TestSource : public ByteSource {
 public:
  TestSource(absl::string_view data, uint64_t claimed_size)
      : memory_(kSourceName, data), claimed_size_(claimed_size) {}

  const std::string& name() const override { return memory_.name(); }
  uint64_t size() const override { return claimed_size_; }
  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      char* out) const override {
    ++reads_;
    bytes_read_ += length;
    if (reads_ == fail_read_) return absl::DataLossError("injected EIO");
    return memory_.ReadAt(offset, length, out);
  }

  int reads() const { return reads_; }
  uint64_t bytes_read() const { return bytes_read_; }
  void FailRead(int n) { fail_read_ = n; }

 private:
  MemoryByteSource memory_;
  uint64_t claimed_size_;
  int fail_read_ = 0;
  mutable int reads_ = 0;
  mutable uint64_t bytes_read_ = 0;
};

// A vocabulary-only file like llama.cpp's, with `tokens` strings.
std::string VocabularyFile(int tokens) {
  GgufBuilder b;
  b.Header(0, 3).KvString("general.architecture", "llama");
  b.Key("tokenizer.ggml.tokens", kArray).U32(kString).U64(tokens);
  for (int i = 0; i < tokens; ++i) b.Str(absl::StrCat("\xe2\x96\x81tok", i));
  b.Key("tokenizer.ggml.scores", kArray).U32(kFloat32).U64(tokens);
  for (int i = 0; i < tokens; ++i) b.F32(static_cast<float>(-i));
  return b.bytes();
}

TEST(GgufReading, LargeVocabularyIsReadInWindows) {
  const std::string file = VocabularyFile(150000);
  for (bool full_metadata : {false, true}) {
    TestSource source(file, file.size());
    ParseOptions options;
    options.full_metadata = full_metadata;
    ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseGguf(source, options));
    EXPECT_EQ(manifest.metadata["tokenizer.ggml.tokens"].size(),
              full_metadata ? 150000u : 2u);
    // One read per 64 KiB window, give or take a refill per window.
    EXPECT_LE(source.reads(), 2 * static_cast<int>(file.size() / 65536 + 2));
  }
}

TEST(GgufReading, SkippedNumbersAreNotRead) {
  const std::string file = VocabularyFile(150000);
  TestSource source(file, file.size());
  ASSERT_OK(ParseGguf(source, ParseOptions()));
  // The 600,000 bytes of scores in the summary need no reading.
  EXPECT_LT(source.bytes_read(), file.size() - 500000);
}

TEST(GgufReading, ReadErrorsPassThrough) {
  const std::string file = VocabularyFile(100000);
  TestSource source(file, file.size());
  source.FailRead(3);
  EXPECT_THAT(ParseGguf(source, ParseOptions()),
              StatusIs(absl::StatusCode::kDataLoss, "injected EIO"));
}

TEST(GgufReading, SourceShorterThanItsSizeIsTruncation) {
  GgufBuilder b;
  b.Header(0, 1).KvString("general.architecture", "llama");
  TestSource source(b.bytes(), b.size() + 100);
  EXPECT_THAT(ParseGguf(source, ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith("mem.gguf: at byte 0: magic: "),
                             HasSubstr("file is truncated"))));
}

TEST(GgufReading, TensorDataIsNeverRead) {
  GgufBuilder b;
  b.Header(1, 0).Tensor("big", {1 << 20}, kF32, 0).PadTo(32);
  const uint64_t data_start = b.size();
  b.Zeros(4 << 20);
  TestSource source(b.bytes(), b.size());
  ASSERT_OK(ParseGguf(source, ParseOptions()));
  EXPECT_LE(source.bytes_read(), 65536u);
  EXPECT_LT(data_start, 128u);
}

}  // namespace
}  // namespace warmstart
