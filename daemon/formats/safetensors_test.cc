#include "daemon/formats/safetensors.h"

#include <openssl/sha.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
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

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::StartsWith;

// A safetensors file: the 8-byte little-endian length of `header`, the
// header, then `data`.
std::string File(absl::string_view header, absl::string_view data = "") {
  std::string out;
  for (int i = 0; i < 8; ++i) {
    out.push_back(
        static_cast<char>((uint64_t{header.size()} >> (8 * i)) & 0xff));
  }
  absl::StrAppend(&out, header, data);
  return out;
}

// Only the 8-byte length field, for lengths that do not match what follows.
std::string LengthField(uint64_t length) {
  std::string out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((length >> (8 * i)) & 0xff));
  return out;
}

absl::StatusOr<FileManifest> ParseBytes(absl::string_view bytes) {
  MemoryByteSource source("mem.safetensors", bytes);
  return ParseSafetensors(source, ParseOptions());
}

// ---------------------------------------------------------------------------
// Files written by the reference writers.

class FixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureTest, MatchesIndependentParse) {
  const std::string path =
      testing::FixturePath(absl::StrCat("safetensors/", GetParam()));
  const nlohmann::json expected =
      nlohmann::json::parse(testing::ReadFileOrDie(path + ".json"), nullptr,
                            /*allow_exceptions=*/false);
  ASSERT_TRUE(expected.is_object()) << path << ".json";
  const nlohmann::json& parse = expected["independent_parse"];
  const std::string bytes = testing::ReadFileOrDie(path);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<FileByteSource> source,
                       FileByteSource::Open(path));
  ASSERT_OK_AND_ASSIGN(FileManifest manifest,
                       ParseSafetensors(*source, ParseOptions()));

  EXPECT_EQ(manifest.path, path);
  EXPECT_EQ(manifest.format, Format::kSafetensors);
  EXPECT_FALSE(manifest.format_version.has_value());
  EXPECT_FALSE(manifest.big_endian);
  EXPECT_EQ(manifest.file_size, bytes.size());
  EXPECT_EQ(manifest.file_size, expected["size"].get<uint64_t>());

  const uint64_t data_start = 8 + parse["header_len"].get<uint64_t>();
  EXPECT_EQ(data_start, parse["data_start"].get<uint64_t>());

  // The expected metadata is null when the file has none; the manifest
  // holds an empty object then.
  const nlohmann::json& metadata = parse["metadata"];
  ASSERT_TRUE(manifest.metadata.is_object());
  if (metadata.is_null()) {
    EXPECT_TRUE(manifest.metadata.empty());
  } else {
    EXPECT_EQ(nlohmann::json(manifest.metadata), metadata);
  }

  const nlohmann::json& tensors = parse["tensors"];
  ASSERT_THAT(manifest.tensors, SizeIs(tensors.size()));
  for (const nlohmann::json& want : tensors) {
    const std::string name = want["name"].get<std::string>();
    SCOPED_TRACE(name);
    const TensorEntry* got = nullptr;
    for (const TensorEntry& tensor : manifest.tensors) {
      if (tensor.name == name) got = &tensor;
    }
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->dtype, want["dtype"].get<std::string>());
    EXPECT_EQ(got->shape, want["shape"].get<std::vector<uint64_t>>());
    EXPECT_EQ(got->nbytes, want["nbytes"].get<uint64_t>());
    EXPECT_EQ(got->stored_bytes, got->nbytes);
    EXPECT_EQ(got->offset, want["absolute_offset"].get<uint64_t>());
    const auto offsets = want["data_offsets"].get<std::vector<uint64_t>>();
    ASSERT_THAT(offsets, SizeIs(2));
    EXPECT_EQ(got->offset, data_start + offsets[0]);
    EXPECT_EQ(got->nbytes, offsets[1] - offsets[0]);
    EXPECT_TRUE(got->checksums.empty());
    EXPECT_FALSE(got->encryption.has_value());
    ASSERT_LE(got->offset + got->nbytes, bytes.size());
    EXPECT_EQ(
        Sha256Hex(absl::string_view(bytes).substr(got->offset, got->nbytes)),
        want["sha256"].get<std::string>());
  }
  // File data order: each tensor starts where the previous one ended.
  uint64_t next = data_start;
  for (const TensorEntry& tensor : manifest.tensors) {
    EXPECT_EQ(tensor.offset, next) << tensor.name;
    next = tensor.offset + tensor.nbytes;
  }
  EXPECT_EQ(next, bytes.size());
}

INSTANTIATE_TEST_SUITE_P(
    Safetensors, FixtureTest,
    ::testing::Values(
        "candle_whisper_mel_filters.safetensors",
        "coffeevampir3_save_model_f32_meta.safetensors",
        "fastsafetensors_a_f16_meta.safetensors", "golden_py_bf16.safetensors",
        "golden_py_i32_f16_alignment.safetensors",
        "golden_py_i32_metadata.safetensors", "golden_rs_empty.safetensors",
        "golden_rs_f32.safetensors", "golden_rs_f32_padded.safetensors",
        "golden_rs_f4_subbyte.safetensors",
        "golden_rs_metadata_only.safetensors"),
    [](const ::testing::TestParamInfo<const char*>& info) {
      std::string name = info.param;
      for (char& c : name) {
        if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });

TEST(SafetensorsFixtureTest, RejectsHeaderLengthPastEndOfFile) {
  const std::string path = testing::FixturePath(
      "safetensors/invalid/syoyo_abuse_attempt_1.safetensors");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<FileByteSource> source,
                       FileByteSource::Open(path));
  EXPECT_THAT(ParseSafetensors(*source, ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith(path + ": "),
                             HasSubstr("header length 1000 runs past the end "
                                       "of the file"),
                             HasSubstr("88 bytes"))));
}

// ---------------------------------------------------------------------------
// Valid files built in memory.

TEST(SafetensorsTest, ListsTensorsInDataOrderWhateverTheKeyOrder) {
  const std::string bytes =
      File(R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},)"
           R"("a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})",
           "abcde");
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(bytes));
  ASSERT_THAT(manifest.tensors, SizeIs(2));
  const uint64_t data_start = bytes.size() - 5;
  EXPECT_EQ(manifest.tensors[0].name, "a");
  EXPECT_EQ(manifest.tensors[0].offset, data_start);
  EXPECT_EQ(manifest.tensors[1].name, "b");
  EXPECT_EQ(manifest.tensors[1].offset, data_start + 3);
  EXPECT_EQ(manifest.tensors[1].shape, std::vector<uint64_t>{2});
}

TEST(SafetensorsTest, OrdersEmptyTensorsAtOneOffsetByName) {
  const std::string bytes =
      File(R"({"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
           R"("y":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
           R"("x":{"dtype":"F16","shape":[2,0],"data_offsets":[4,4]},)"
           R"("w":{"dtype":"I8","shape":[0],"data_offsets":[0,0]}})",
           "abcd");
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(bytes));
  std::vector<std::string> names;
  for (const TensorEntry& tensor : manifest.tensors)
    names.push_back(tensor.name);
  EXPECT_THAT(names, ElementsAre("w", "z", "x", "y"));
  EXPECT_EQ(manifest.tensors[2].nbytes, 0u);
  EXPECT_FALSE(manifest.tensors[2].is_meta());
}

TEST(SafetensorsTest, AcceptsEverySafetensorsDType) {
  // Four elements of each: a whole number of bytes for F4 and the F6 types.
  struct Case {
    const char* dtype;
    uint64_t nbytes;
  };
  const std::vector<Case> cases = {
      {"BOOL", 4},    {"F4", 2},          {"F6_E2M3", 3},     {"F6_E3M2", 3},
      {"U8", 4},      {"I8", 4},          {"F8_E5M2", 4},     {"F8_E4M3", 4},
      {"F8_E8M0", 4}, {"F8_E4M3FNUZ", 4}, {"F8_E5M2FNUZ", 4}, {"I16", 8},
      {"U16", 8},     {"F16", 8},         {"BF16", 8},        {"I32", 16},
      {"U32", 16},    {"F32", 16},        {"C64", 32},        {"F64", 32},
      {"I64", 32},    {"U64", 32},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.dtype);
    const std::string bytes = File(
        absl::StrCat(R"({"t":{"dtype":")", c.dtype,
                     R"(","shape":[2,2],"data_offsets":[0,)", c.nbytes, "]}}"),
        std::string(c.nbytes, '\0'));
    ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(bytes));
    ASSERT_THAT(manifest.tensors, SizeIs(1));
    EXPECT_EQ(manifest.tensors[0].dtype, c.dtype);
    EXPECT_EQ(manifest.tensors[0].nbytes, c.nbytes);
  }
}

TEST(SafetensorsTest, RejectsDTypesOfOtherFormats) {
  for (const char* dtype : {"C32", "C128", "Q4_0", "f32", "F8_E4M3FN"}) {
    SCOPED_TRACE(dtype);
    const std::string bytes = File(absl::StrCat(
        R"({"t":{"dtype":")", dtype, R"(","shape":[],"data_offsets":[0,0]}})"));
    EXPECT_THAT(ParseBytes(bytes),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("unknown safetensors dtype")));
  }
}

TEST(SafetensorsTest, KeepsMetadataInFileOrderAndAcceptsUnpaddedHeaders) {
  // An unpadded 2022-style header: the data is not aligned at all.
  const std::string bytes =
      File(R"({"__metadata__":{"z":"1","a":"\u00e9\n"},)"
           R"("t\u00e9":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
           std::string(8, '\x01'));
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(bytes));
  std::vector<std::string> keys;
  for (const auto& item : manifest.metadata.items()) keys.push_back(item.key());
  EXPECT_THAT(keys, ElementsAre("z", "a"));
  EXPECT_EQ(manifest.metadata["a"].get<std::string>(), "\xc3\xa9\n");
  ASSERT_THAT(manifest.tensors, SizeIs(1));
  EXPECT_EQ(manifest.tensors[0].name, "t\xc3\xa9");
  EXPECT_EQ(manifest.tensors[0].offset % 8, (bytes.size() - 8) % 8);
}

TEST(SafetensorsTest, AcceptsJsonWhitespaceInsideTheObjectAndSpacesAfter) {
  const std::string bytes = File(
      "{\n\t\"t\" : {\"dtype\": \"U8\", \"shape\": [ 1 ],\r\n"
      "\"data_offsets\": [0, 1]}\n}    ",
      "x");
  ASSERT_OK_AND_ASSIGN(FileManifest manifest, ParseBytes(bytes));
  ASSERT_THAT(manifest.tensors, SizeIs(1));
  EXPECT_EQ(manifest.tensors[0].offset, bytes.size() - 1);
}

TEST(SafetensorsTest, AcceptsMinusZeroAsADimension) {
  ASSERT_OK_AND_ASSIGN(
      FileManifest manifest,
      ParseBytes(
          File(R"({"t":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}})")));
  EXPECT_EQ(manifest.tensors[0].shape, std::vector<uint64_t>{0});
}

TEST(SafetensorsTest, AcceptsTheLargestOffsetsExactly) {
  // 2^64-1 parses exactly; here as a dimension of an empty tensor.
  ASSERT_OK_AND_ASSIGN(
      FileManifest manifest,
      ParseBytes(File(R"({"t":{"dtype":"U8","shape":[18446744073709551615,0],)"
                      R"("data_offsets":[0,0]}})")));
  EXPECT_EQ(manifest.tensors[0].shape[0], UINT64_MAX);
}

TEST(SafetensorsTest, KeepsSyntaxErrorMessagesShort) {
  // The JSON parser quotes the whole token it was reading.
  const std::string header =
      absl::StrCat("{\"", std::string(100000, 'a'), "\x01\"}");
  const absl::Status status = ParseBytes(File(header)).status();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument,
                               AllOf(HasSubstr("at byte 100010: header is not "
                                               "valid JSON"),
                                     HasSubstr("..."))));
  EXPECT_LT(status.message().size(), 400u);
}

TEST(SafetensorsTest, ShortensHugeNamesAndNumbersInMessages) {
  const std::string name(10000, 'n');
  const absl::Status long_name =
      ParseBytes(File(absl::StrCat("{\"", name,
                                   R"(":{"dtype":"F33","shape":[],)"
                                   R"("data_offsets":[0,0]}})")))
          .status();
  EXPECT_THAT(long_name,
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat("tensor \"", name.substr(0, 200),
                                              "\"...: dtype"))));
  EXPECT_LT(long_name.message().size(), 400u);

  const std::string digits(5000, '9');
  const absl::Status long_number =
      ParseBytes(File(absl::StrCat(R"({"t":{"dtype":"U8","shape":[)", digits,
                                   R"(],"data_offsets":[0,0]}})")))
          .status();
  EXPECT_THAT(long_number,
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor \"t\": shape: " +
                                 digits.substr(0, 40) + "... exceeds 2^64-1")));
  EXPECT_LT(long_number.message().size(), 200u);
}

// A source whose reads fail as a disk would.
class FailingSource : public ByteSource {
 public:
  const std::string& name() const override { return name_; }
  uint64_t size() const override { return 1024; }
  absl::Status ReadAt(uint64_t, uint64_t, char*) const override {
    return absl::DataLossError("failing: read at byte 0: Input/output error");
  }

 private:
  std::string name_ = "failing";
};

TEST(SafetensorsTest, PassesReadErrorsThrough) {
  EXPECT_THAT(ParseSafetensors(FailingSource(), ParseOptions()),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("Input/output")));
}

// ---------------------------------------------------------------------------
// Malformed input: every case is rejected as InvalidArgument with a message
// that starts with the source name and says what is wrong.

struct MalformedCase {
  const char* name;
  std::string bytes;
  const char* message;
};

std::string Entry(absl::string_view name, absl::string_view dtype,
                  absl::string_view shape, absl::string_view offsets) {
  return absl::StrCat("\"", name, R"(":{"dtype":")", dtype, R"(","shape":)",
                      shape, R"(,"data_offsets":)", offsets, "}");
}

std::vector<MalformedCase> MalformedCases() {
  const std::string ok_entry = Entry("t", "F32", "[2]", "[0,8]");
  const std::string eight(8, '\0');
  return {
      {"TruncatedInsideLength", std::string("\x05\0\0", 3),
       "at byte 0: file is truncated"},
      {"Empty", "", "at byte 0: file is truncated"},
      {"TruncatedInsideHeader",
       File(absl::StrCat("{", ok_entry, "}")).substr(0, 30),
       "runs past the end of the file"},
      {"HeaderLengthPastEof", LengthField(1000) + "{}",
       "header length 1000 runs past the end of the file"},
      {"HeaderLengthAboveLimit", LengthField(100'000'001) + "{}",
       "header length 100000001 exceeds the limit of 100000000 bytes"},
      {"HeaderLengthHuge", LengthField(UINT64_MAX) + "{}", "exceeds the limit"},
      {"TruncatedData", File(absl::StrCat("{", ok_entry, "}"), "1234"),
       "tensor \"t\": data_offsets: data ends 8 bytes into the data"},
      {"EmptyHeader", File(""), "at byte 8: header is empty"},
      {"NotUtf8", File("{\"\xff\":1}"),
       "at byte 10: header is not valid UTF-8"},
      {"Utf8Overlong", File("{\"\xc0\xaf\":1}"), "header is not valid UTF-8"},
      {"Utf8Surrogate", File("{\"\xed\xa0\x80\":1}"),
       "header is not valid UTF-8"},
      {"Utf8CutShort", File("{\"\xe2\x82"), "header is not valid UTF-8"},
      {"NotJson", File(R"({"t" 1})"), "header is not valid JSON"},
      {"UnterminatedJson", File(R"({"t":{)"), "header is not valid JSON"},
      {"NulInHeader", File(std::string("{}\0}", 4)), "contains a NUL byte"},
      {"NotAnObject", File("[1,2]"),
       "at byte 8: header is not a JSON object: it must start with '{', "
       "found '['"},
      {"ByteOrderMark", File("\xef\xbb\xbf{}"), "header is not a JSON object"},
      {"LeadingWhitespace", File(" {}"),
       "at byte 8: header must start with '{', not whitespace"},
      {"TrailingJunk", File("{}  x"), "unexpected bytes after the JSON object"},
      {"TrailingNewline", File("{} \n "),
       "at byte 11: unexpected 0x0a after the JSON object"},
      {"SecondObject", File("{}{}"), "unexpected bytes after the JSON object"},
      {"DuplicateTensor",
       File(absl::StrCat("{", ok_entry, ",", ok_entry, "}"), eight),
       "tensor \"t\": duplicate tensor name"},
      {"DuplicateMetadata", File(R"({"__metadata__":{},"__metadata__":{}})"),
       "key \"__metadata__\": duplicate key"},
      {"DuplicateMetadataKey", File(R"({"__metadata__":{"a":"1","a":"2"}})"),
       "key \"__metadata__\": duplicate key \"a\""},
      {"DuplicateEntryKey",
       File(R"({"t":{"dtype":"F32","dtype":"F32","shape":[],)"
            R"("data_offsets":[0,4]}})",
            "1234"),
       "tensor \"t\": duplicate key \"dtype\""},
      {"UnknownEntryKey",
       File(R"({"t":{"dtype":"U8","shape":[],"data_offsets":[0,1],)"
            R"("extra":1}})",
            "x"),
       "tensor \"t\": unknown key \"extra\""},
      {"MissingEntryKey",
       File(R"({"t":{"dtype":"U8","data_offsets":[0,1]}})", "x"),
       "tensor \"t\": missing key \"shape\""},
      {"EntryNotObject", File(R"({"t":[1]})"),
       "tensor \"t\": entry must be an object, found an array"},
      {"UnknownDType",
       File(absl::StrCat("{", Entry("t", "F33", "[2]", "[0,8]"), "}"), eight),
       "tensor \"t\": dtype: unknown safetensors dtype \"F33\""},
      {"DTypeNotString",
       File(R"({"t":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", eight),
       "tensor \"t\": dtype: must be a string, found a number"},
      {"ShapeNotArray",
       File(absl::StrCat("{", Entry("t", "F32", "2", "[0,8]"), "}"), eight),
       "tensor \"t\": shape: must be an array of non-negative integers, found "
       "a number"},
      {"ShapeNested",
       File(absl::StrCat("{", Entry("t", "F32", "[[2]]", "[0,8]"), "}"), eight),
       "tensor \"t\": shape: must be an array of non-negative integers, found "
       "an array in it"},
      {"ShapeString",
       File(absl::StrCat("{", Entry("t", "F32", "[\"2\"]", "[0,8]"), "}"),
            eight),
       "found a string in it"},
      {"ShapeNegative",
       File(absl::StrCat("{", Entry("t", "F32", "[-2]", "[0,8]"), "}"), eight),
       "tensor \"t\": shape: -2 is negative"},
      {"ShapeHugeNegative",
       File(
           absl::StrCat(
               "{", Entry("t", "F32", "[-99999999999999999999]", "[0,8]"), "}"),
           eight),
       "shape: -99999999999999999999 is negative"},
      {"ShapeFloat",
       File(absl::StrCat("{", Entry("t", "F32", "[2.0]", "[0,8]"), "}"), eight),
       "tensor \"t\": shape: 2.0 is not an integer"},
      {"ShapeExponent",
       File(absl::StrCat("{", Entry("t", "F32", "[2e0]", "[0,8]"), "}"), eight),
       "shape: 2e0 is not an integer"},
      {"ShapeAbove64Bits",
       File(absl::StrCat(
                "{", Entry("t", "F32", "[18446744073709551616]", "[0,8]"), "}"),
            eight),
       "tensor \"t\": shape: 18446744073709551616 exceeds 2^64-1"},
      {"ShapeDoubleOverflow",
       File(absl::StrCat("{", Entry("t", "F32", "[1e400]", "[0,8]"), "}"),
            eight),
       "tensor \"t\": shape: 1e400 is not an integer"},
      {"MetadataDoubleOverflow", File(R"({"__metadata__":{"k":-1e400}})"),
       "key \"__metadata__\": value of \"k\" must be a string, found a number"},
      {"ShapeProductOverflow",
       File(absl::StrCat(
                "{", Entry("t", "U8", "[4294967296,4294967296]", "[0,8]"), "}"),
            eight),
       "tensor \"t\": shape: element count overflows 64 bits"},
      {"ByteSizeOverflow",
       File(absl::StrCat(
                "{", Entry("t", "F64", "[4611686018427387904]", "[0,8]"), "}"),
            eight),
       "tensor \"t\": shape: byte size"},
      {"F4OddCount",
       File(absl::StrCat("{", Entry("t", "F4", "[3]", "[0,2]"), "}"), "12"),
       "tensor \"t\": shape: 3 elements of F4 are not a whole number of "
       "blocks"},
      {"OffsetsOneNumber",
       File(absl::StrCat("{", Entry("t", "F32", "[2]", "[8]"), "}"), eight),
       "tensor \"t\": data_offsets: must hold exactly 2 numbers [begin, end], "
       "found 1"},
      {"OffsetsThreeNumbers",
       File(absl::StrCat("{", Entry("t", "F32", "[2]", "[0,8,8]"), "}"), eight),
       "data_offsets: must hold exactly 2 numbers [begin, end], found 3"},
      {"OffsetsNegative",
       File(absl::StrCat("{", Entry("t", "F32", "[2]", "[-1,7]"), "}"), eight),
       "tensor \"t\": data_offsets: -1 is negative"},
      {"OffsetsNotArray",
       File(absl::StrCat("{", Entry("t", "F32", "[2]", "null"), "}"), eight),
       "tensor \"t\": data_offsets: must be an array of non-negative integers, "
       "found null"},
      {"EndBeforeBegin",
       File(absl::StrCat("{", Entry("t", "F32", "[0]", "[4,0]"), "}"), eight),
       "tensor \"t\": data_offsets: end 0 is before begin 4"},
      {"SizeMismatch",
       File(absl::StrCat("{", Entry("t", "F32", "[3]", "[0,8]"), "}"), eight),
       "tensor \"t\": data_offsets: [0, 8] hold 8 bytes, but F32 [3] needs 12 "
       "(size mismatch)"},
      {"FirstBeginNotZero",
       File(absl::StrCat("{", Entry("t", "F32", "[2]", "[4,12]"), "}"),
            std::string(12, '\0')),
       "tensor \"t\": data_offsets: the first tensor in the data must begin at "
       "0, not 4"},
      {"Gap",
       File(absl::StrCat("{", Entry("a", "F32", "[1]", "[0,4]"), ",",
                         Entry("b", "F32", "[1]", "[8,12]"), "}"),
            std::string(12, '\0')),
       "tensor \"b\": data_offsets: begins at 8, leaving a gap of 4 bytes "
       "after tensor \"a\""},
      {"Overlap",
       File(absl::StrCat("{", Entry("a", "F32", "[2]", "[0,8]"), ",",
                         Entry("b", "F32", "[1]", "[4,8]"), "}"),
            eight),
       "tensor \"b\": data_offsets: begins at 4, which overlaps tensor \"a\""},
      {"SameRangeTwice",
       File(absl::StrCat("{", Entry("a", "F32", "[2]", "[0,8]"), ",",
                         Entry("b", "F32", "[2]", "[0,8]"), "}"),
            eight),
       "tensor \"b\": data_offsets: begins at 0, which overlaps tensor \"a\""},
      {"TrailingBytesAfterData",
       File(absl::StrCat("{", ok_entry, "}"), "12345678x"),
       "1 trailing byte after the end of the tensor data"},
      {"TrailingBytesWithoutTensors", File("{}", "x"),
       "at byte 10: 1 trailing byte after the end of the tensor data"},
      {"MetadataValueNotString", File(R"({"__metadata__":{"k":1}})"),
       "key \"__metadata__\": value of \"k\" must be a string, found a number"},
      {"MetadataValueNested", File(R"({"__metadata__":{"k":{"a":"b"}}})"),
       "key \"__metadata__\": value of \"k\" must be a string, found an "
       "object"},
      {"MetadataNull", File(R"({"__metadata__":null})"),
       "key \"__metadata__\": must be an object mapping strings to strings, "
       "found null"},
      {"ControlCharInName",
       File(R"({"a\"\u0001":{"dtype":"F33","shape":[],"data_offsets":[0,0]}})"),
       "tensor \"a\\\"\\x01\": dtype"},
  };
}

class MalformedTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedTest, IsRejectedWithAClearMessage) {
  const MalformedCase& c = GetParam();
  EXPECT_THAT(
      ParseBytes(c.bytes),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(StartsWith("mem.safetensors: "), HasSubstr(c.message))));
}

INSTANTIATE_TEST_SUITE_P(
    Safetensors, MalformedTest, ::testing::ValuesIn(MalformedCases()),
    [](const ::testing::TestParamInfo<MalformedCase>& info) {
      return std::string(info.param.name);
    });

TEST(SafetensorsMalformedTest, CasesAreDistinct) {
  const std::vector<MalformedCase> cases = MalformedCases();
  for (size_t i = 0; i < cases.size(); ++i) {
    for (size_t j = i + 1; j < cases.size(); ++j) {
      EXPECT_NE(cases[i].bytes, cases[j].bytes)
          << cases[i].name << " and " << cases[j].name;
    }
  }
}

}  // namespace
}  // namespace warmstart
