#include "daemon/formats/checkpoint.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/file_opener.h"
#include "daemon/formats/byte_source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::StartsWith;

// A valid safetensors file holding U8 tensors of the given names and sizes,
// stored back to back in that order.
std::string Shard(
    const std::vector<std::pair<std::string, uint64_t>>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, size] : tensors) {
    header[name] = {{"dtype", "U8"},
                    {"shape", nlohmann::json::array({size})},
                    {"data_offsets",
                     nlohmann::json::array({data.size(), data.size() + size})}};
    data.append(size, static_cast<char>('a' + data.size() % 26));
  }
  const std::string text = header.dump();
  std::string out;
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>((uint64_t{text.size()} >> (8 * i)) & 0xff));
  }
  return out + text + data;
}

void WriteFile(const std::string& path, absl::string_view contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<std::string> TensorNames(const FileManifest& file) {
  std::vector<std::string> names;
  for (const TensorEntry& tensor : file.tensors) names.push_back(tensor.name);
  return names;
}

// The files in fixture directory `relative` whose names end in `suffix`.
std::vector<std::string> FixtureFiles(const std::string& relative,
                                      absl::string_view suffix) {
  const std::string directory = testing::FixturePath(relative);
  std::vector<std::string> paths;
  DIR* dir = ::opendir(directory.c_str());
  if (dir == nullptr) return paths;
  while (const struct dirent* entry = ::readdir(dir)) {
    if (absl::EndsWith(entry->d_name, suffix)) {
      paths.push_back(absl::StrCat(directory, "/", entry->d_name));
    }
  }
  ::closedir(dir);
  return paths;
}

// ---------------------------------------------------------------------------
// Format detection.

void ExpectDetected(const std::vector<std::string>& paths, Format format) {
  ASSERT_FALSE(paths.empty());
  for (const std::string& path : paths) {
    SCOPED_TRACE(path);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<FileByteSource> source,
                         FileByteSource::Open(path));
    ASSERT_OK_AND_ASSIGN(Format detected, DetectFormat(*source));
    EXPECT_EQ(detected, format);
  }
}

TEST(DetectFormatTest, DetectsSafetensorsFixtures) {
  std::vector<std::string> paths = FixtureFiles("safetensors", ".safetensors");
  EXPECT_THAT(paths, SizeIs(11));
  // Detection is not validation: this file's header length runs past its
  // end, which the parser then reports.
  paths.push_back(testing::FixturePath(
      "safetensors/invalid/syoyo_abuse_attempt_1.safetensors"));
  ExpectDetected(paths, Format::kSafetensors);
}

TEST(DetectFormatTest, DetectsTensorizerFixtures) {
  ExpectDetected(FixtureFiles("tensorizer", ".tensors"), Format::kTensorizer);
}

TEST(DetectFormatTest, DetectsGgufFixturesOfBothByteOrders) {
  std::vector<std::string> paths = FixtureFiles("gguf", ".gguf");
  EXPECT_THAT(paths, ::testing::Contains(HasSubstr("bigendian")));
  ExpectDetected(paths, Format::kGguf);
}

TEST(DetectFormatTest, DetectsMagicInShortInputs) {
  ASSERT_OK_AND_ASSIGN(Format tensorizer,
                       DetectFormat(MemoryByteSource("m", "|TZR|")));
  EXPECT_EQ(tensorizer, Format::kTensorizer);
  ASSERT_OK_AND_ASSIGN(Format gguf,
                       DetectFormat(MemoryByteSource("m", "GGUF")));
  EXPECT_EQ(gguf, Format::kGguf);
  ASSERT_OK_AND_ASSIGN(Format safetensors,
                       DetectFormat(MemoryByteSource(
                           "m", std::string("\x02\0\0\0\0\0\0\0{", 9))));
  EXPECT_EQ(safetensors, Format::kSafetensors);
}

TEST(DetectFormatTest, RejectsOtherFiles) {
  const std::string zeros(16, '\0');
  for (const std::string& bytes :
       {std::string(), std::string("GGU"), std::string("|TZR"),
        std::string("PK\x03\x04 zip archive"), std::string("abcdefgh{\"a\":1}"),
        std::string("\x01\0\0\0\0\0\0\0{", 9),    // A header too short for {}.
        std::string("\0\0\0\0\x01\0\0\0{}", 10),  // A length of 2^32.
        std::string("\x02\0\0\0\0\0\0\0[]", 10), zeros}) {
    SCOPED_TRACE(bytes);
    EXPECT_THAT(DetectFormat(MemoryByteSource("some/file", bytes)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         ::testing::Eq("some/file: not a safetensors, "
                                       "tensorizer or GGUF file")));
  }
}

TEST(ParseFileTest, ParsesSafetensors) {
  const std::string bytes = Shard({{"a", 3}});
  ASSERT_OK_AND_ASSIGN(FileManifest file,
                       ParseFile(MemoryByteSource("m", bytes), ParseOptions()));
  EXPECT_EQ(file.format, Format::kSafetensors);
  EXPECT_THAT(TensorNames(file), ElementsAre("a"));
}

TEST(ParseFileTest, ReportsSafetensorsErrors) {
  const std::string path = testing::FixturePath(
      "safetensors/invalid/syoyo_abuse_attempt_1.safetensors");
  EXPECT_THAT(OpenCheckpoint(path, ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith(path + ": "),
                             HasSubstr("header length 1000"))));
}

TEST(ParseFileTest, DispatchesToTheParserOfEachFormat) {
  struct Case {
    const char* fixture;
    Format format;
    size_t tensor_count;
  };
  for (const Case& c : {
           Case{"safetensors/coffeevampir3_save_model_f32_meta.safetensors",
                Format::kSafetensors, 4},
           Case{"tensorizer/module_simple_v1.tensors", Format::kTensorizer, 6},
           Case{"gguf/ollama-llama-2-tiny-random.gguf", Format::kGguf, 12},
       }) {
    SCOPED_TRACE(c.fixture);
    const std::string path = testing::FixturePath(c.fixture);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<FileByteSource> source,
                         FileByteSource::Open(path));
    ASSERT_OK_AND_ASSIGN(FileManifest file, ParseFile(*source, ParseOptions()));
    EXPECT_EQ(file.format, c.format);
    EXPECT_EQ(file.path, path);
    EXPECT_THAT(file.tensors, SizeIs(c.tensor_count));
  }
}

// ---------------------------------------------------------------------------
// A single file.

TEST(OpenCheckpointTest, OpensOneFile) {
  const std::string path = testing::FixturePath(
      "safetensors/coffeevampir3_save_model_f32_meta.safetensors");
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, ParseOptions()));
  ASSERT_THAT(manifest.files, SizeIs(1));
  EXPECT_EQ(manifest.files[0].path, path);
  EXPECT_THAT(TensorNames(manifest.files[0]),
              ElementsAre("fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"));
}

TEST(OpenCheckpointTest, MissingPathIsNotFound) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("absent.safetensors");
  EXPECT_THAT(OpenCheckpoint(path, ParseOptions()),
              StatusIs(absl::StatusCode::kNotFound, StartsWith(path + ": ")));
}

TEST(OpenCheckpointTest, RejectsAFileOfNoKnownFormat) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("notes.txt");
  WriteFile(path, "just some text, not weights");
  EXPECT_THAT(OpenCheckpoint(path, ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not a safetensors, tensorizer or GGUF")));
}

// ---------------------------------------------------------------------------
// Hugging Face shard indexes.

constexpr char kShard1[] = "model-00001-of-00002.safetensors";
constexpr char kShard2[] = "model-00002-of-00002.safetensors";

class IndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.Join(kShard1), Shard({{"embed", 8}, {"layer.0", 4}}));
    WriteFile(dir_.Join(kShard2), Shard({{"layer.1", 4}, {"head", 2}}));
  }

  // The index matching the two shards.
  static nlohmann::json GoodIndex() {
    return {{"metadata", {{"total_size", 18}}},
            {"weight_map",
             {{"head", kShard2},
              {"layer.1", kShard2},
              {"layer.0", kShard1},
              {"embed", kShard1}}}};
  }

  std::string WriteIndex(absl::string_view text) {
    const std::string path = dir_.Join("model.safetensors.index.json");
    WriteFile(path, text);
    return path;
  }

  testing::ShortTempDir dir_;
};

TEST_F(IndexTest, OpensEveryShardOnceInSortedOrder) {
  const std::string index = WriteIndex(GoodIndex().dump(2));
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(index, ParseOptions()));
  ASSERT_THAT(manifest.files, SizeIs(2));
  EXPECT_EQ(manifest.files[0].path, dir_.Join(kShard1));
  EXPECT_EQ(manifest.files[1].path, dir_.Join(kShard2));
  EXPECT_THAT(TensorNames(manifest.files[0]), ElementsAre("embed", "layer.0"));
  // "head" sorts first in the header's keys, but data order wins.
  const FileManifest& second = manifest.files[1];
  EXPECT_THAT(TensorNames(second), ElementsAre("layer.1", "head"));
  EXPECT_EQ(second.tensors[1].offset + second.tensors[1].nbytes,
            second.file_size);
}

TEST_F(IndexTest, DirectoryWithOneIndexUsesIt) {
  WriteIndex(GoodIndex().dump());
  // A stray weight file the index does not name is ignored in index mode.
  WriteFile(dir_.Join("extra.safetensors"), Shard({{"stray", 1}}));
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(dir_.path() + "/", ParseOptions()));
  ASSERT_THAT(manifest.files, SizeIs(2));
  EXPECT_EQ(manifest.files[0].path, dir_.Join(kShard1));
}

TEST_F(IndexTest, MissingShardIsNotFoundAndNamesTheIndex) {
  nlohmann::json index = GoodIndex();
  index["weight_map"]["extra"] = "model-00003-of-00003.safetensors";
  const std::string path = WriteIndex(index.dump());
  EXPECT_THAT(OpenCheckpoint(path, ParseOptions()),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(StartsWith(path + ": shard "
                                               "\"model-00003-of-00003."
                                               "safetensors\": "),
                             HasSubstr("No such file"))));
}

TEST_F(IndexTest, InvalidShardReportsTheShard) {
  WriteFile(dir_.Join(kShard2), Shard({{"layer.1", 4}, {"head", 2}}) + "x");
  const std::string index = WriteIndex(GoodIndex().dump());
  EXPECT_THAT(OpenCheckpoint(index, ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith(dir_.Join(kShard2) + ": "),
                             HasSubstr("trailing byte"))));
}

struct IndexCase {
  const char* name;
  // Changes the good index (given as JSON) into the bad one, as text.
  std::string (*make)(nlohmann::json index);
  const char* message;
};

std::vector<IndexCase> IndexCases() {
  return {
      {"TensorNotInItsShard",
       [](nlohmann::json index) {
         index["weight_map"]["ghost"] = kShard1;
         return index.dump();
       },
       "tensor \"ghost\": listed in weight_map for shard "
       "\"model-00001-of-00002.safetensors\", but not found in it"},
      {"ShardTensorMissingFromWeightMap",
       [](nlohmann::json index) {
         index["weight_map"].erase("head");
         return index.dump();
       },
       "tensor \"head\": is in shard \"model-00002-of-00002.safetensors\" but "
       "missing from weight_map"},
      {"TensorInTheOtherShard",
       [](nlohmann::json index) {
         index["weight_map"]["head"] = kShard1;
         return index.dump();
       },
       "tensor \"head\": weight_map places it in shard "
       "\"model-00001-of-00002.safetensors\", but it is in shard "
       "\"model-00002-of-00002.safetensors\""},
      {"DuplicateKeyInWeightMap",
       [](nlohmann::json index) {
         std::string text = index.dump();
         const std::string entry = absl::StrCat("\"embed\":\"", kShard1, "\"");
         text.replace(text.find(entry), entry.size(),
                      absl::StrCat(entry, ",", entry));
         return text;
       },
       "key \"weight_map\": duplicate key \"embed\""},
      {"ShardInSubdirectory",
       [](nlohmann::json index) {
         index["weight_map"]["head"] = "sub/model.safetensors";
         return index.dump();
       },
       "key \"weight_map\": tensor \"head\": shard \"sub/model.safetensors\" "
       "is not a plain file name"},
      {"ShardInParent",
       [](nlohmann::json index) {
         index["weight_map"]["head"] = "../model.safetensors";
         return index.dump();
       },
       "shard \"../model.safetensors\" is not a plain file name"},
      {"ShardDotDot",
       [](nlohmann::json index) {
         index["weight_map"]["head"] = "..";
         return index.dump();
       },
       "shard \"..\" is not a plain file name"},
      {"ShardAbsolute",
       [](nlohmann::json index) {
         index["weight_map"]["head"] = "/etc/passwd";
         return index.dump();
       },
       "shard \"/etc/passwd\" is not a plain file name"},
      {"ShardEmpty",
       [](nlohmann::json index) {
         index["weight_map"]["head"] = "";
         return index.dump();
       },
       "shard \"\" is not a plain file name"},
      {"ShardNotString",
       [](nlohmann::json index) {
         index["weight_map"]["head"] = 2;
         return index.dump();
       },
       "key \"weight_map\": tensor \"head\": shard must be a file name "
       "string, found number"},
      {"WeightMapMissing",
       [](nlohmann::json index) {
         index.erase("weight_map");
         return index.dump();
       },
       "key \"weight_map\": missing"},
      {"WeightMapNotObject",
       [](nlohmann::json index) {
         index["weight_map"] = nlohmann::json::array();
         return index.dump();
       },
       "key \"weight_map\": must be an object mapping tensor names to shard "
       "files, found array"},
      {"WeightMapEmpty",
       [](nlohmann::json index) {
         index["weight_map"] = nlohmann::json::object();
         return index.dump();
       },
       "key \"weight_map\": lists no tensors"},
      {"MetadataNotObject",
       [](nlohmann::json index) {
         index["metadata"] = "x";
         return index.dump();
       },
       "key \"metadata\": must be an object, found string"},
      {"NotJson",
       [](nlohmann::json) { return std::string("{\"weight_map\": "); },
       "at byte 15: not valid JSON"},
      {"NotObject", [](nlohmann::json) { return std::string("[1, 2]"); },
       "at byte 0: an index must be a JSON object, found array"},
      {"NulByte", [](nlohmann::json) { return std::string("{}\0{}", 5); },
       "at byte 2: not valid JSON: it contains a NUL byte"},
      {"TooDeep",
       [](nlohmann::json) {
         return std::string(100, '[') + std::string(100, ']');
       },
       "nested deeper than 64 levels"},
  };
}

class IndexMismatchTest : public IndexTest,
                          public ::testing::WithParamInterface<IndexCase> {};

TEST_P(IndexMismatchTest, IsRejected) {
  const std::string index = WriteIndex(GetParam().make(GoodIndex()));
  EXPECT_THAT(
      OpenCheckpoint(index, ParseOptions()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(StartsWith(index + ": "), HasSubstr(GetParam().message))));
}

INSTANTIATE_TEST_SUITE_P(Index, IndexMismatchTest,
                         ::testing::ValuesIn(IndexCases()),
                         [](const ::testing::TestParamInfo<IndexCase>& info) {
                           return std::string(info.param.name);
                         });

TEST_F(IndexTest, TensorInTwoShardsIsADuplicate) {
  WriteFile(dir_.Join(kShard2),
            Shard({{"layer.1", 4}, {"head", 2}, {"embed", 8}}));
  const std::string index = WriteIndex(GoodIndex().dump());
  EXPECT_THAT(OpenCheckpoint(index, ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith(dir_.Join(kShard2) + ": "),
                             HasSubstr("tensor \"embed\": duplicate name; "
                                       "also in " +
                                       dir_.Join(kShard1)))));
}

// ---------------------------------------------------------------------------
// Directories without an index.

TEST(DirectoryTest, OpensEveryWeightFileInNameOrder) {
  testing::ShortTempDir dir;
  WriteFile(dir.Join("b.safetensors"), Shard({{"b", 1}}));
  WriteFile(dir.Join("a.safetensors"), Shard({{"a", 2}}));
  WriteFile(dir.Join("README.md"), "not weights");
  WriteFile(dir.Join("config.json"), "{}");
  // Only regular files count, whatever their names.
  ASSERT_EQ(::mkdir(dir.Join("c.safetensors").c_str(), 0700), 0);
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(dir.path(), ParseOptions()));
  ASSERT_THAT(manifest.files, SizeIs(2));
  EXPECT_EQ(manifest.files[0].path, dir.Join("a.safetensors"));
  EXPECT_EQ(manifest.files[1].path, dir.Join("b.safetensors"));
}

TEST(DirectoryTest, MixesFormats) {
  testing::ShortTempDir dir;
  ASSERT_EQ(
      ::symlink(
          testing::FixturePath("tensorizer/module_simple_v1.tensors").c_str(),
          dir.Join("b.tensors").c_str()),
      0);
  ASSERT_EQ(
      ::symlink(
          testing::FixturePath("gguf/ollama-llama-2-tiny-random.gguf").c_str(),
          dir.Join("c.gguf").c_str()),
      0);
  WriteFile(dir.Join("a.safetensors"), Shard({{"extra", 2}}));
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(dir.path(), ParseOptions()));
  ASSERT_THAT(manifest.files, SizeIs(3));
  EXPECT_EQ(manifest.files[0].format, Format::kSafetensors);
  EXPECT_EQ(manifest.files[1].format, Format::kTensorizer);
  EXPECT_EQ(manifest.files[2].format, Format::kGguf);
  EXPECT_EQ(manifest.files[2].path, dir.Join("c.gguf"));
}

TEST(DirectoryTest, FollowsSymbolicLinks) {
  testing::ShortTempDir dir;
  WriteFile(dir.Join("blob"), Shard({{"a", 2}}));
  ASSERT_EQ(::symlink("blob", dir.Join("model.safetensors").c_str()), 0);
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(dir.path(), ParseOptions()));
  ASSERT_THAT(manifest.files, SizeIs(1));
  EXPECT_THAT(TensorNames(manifest.files[0]), ElementsAre("a"));
}

TEST(DirectoryTest, TwoIndexesMeanNoIndex) {
  testing::ShortTempDir dir;
  WriteFile(dir.Join("a.safetensors"), Shard({{"a", 2}}));
  WriteFile(dir.Join("model.safetensors.index.json"), "not even JSON");
  WriteFile(dir.Join("pytorch_model.bin.index.json"), "not even JSON");
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(dir.path(), ParseOptions()));
  ASSERT_THAT(manifest.files, SizeIs(1));
  EXPECT_EQ(manifest.files[0].path, dir.Join("a.safetensors"));
}

TEST(DirectoryTest, RejectsDuplicateNamesAcrossFiles) {
  testing::ShortTempDir dir;
  WriteFile(dir.Join("a.safetensors"), Shard({{"w", 2}, {"x", 1}}));
  WriteFile(dir.Join("b.safetensors"), Shard({{"w", 2}}));
  EXPECT_THAT(OpenCheckpoint(dir.path(), ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       StartsWith(dir.Join("b.safetensors") +
                                  ": tensor \"w\": duplicate name; also in " +
                                  dir.Join("a.safetensors"))));
}

TEST(DirectoryTest, RejectsADirectoryWithoutWeights) {
  testing::ShortTempDir dir;
  WriteFile(dir.Join("README.md"), "nothing here");
  EXPECT_THAT(OpenCheckpoint(dir.path(), ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith(dir.path() + ": "),
                             HasSubstr("no weight files"))));
}

TEST(DirectoryTest, ReportsADanglingLink) {
  testing::ShortTempDir dir;
  ASSERT_EQ(::symlink("gone", dir.Join("model.safetensors").c_str()), 0);
  EXPECT_THAT(OpenCheckpoint(dir.path(), ParseOptions()),
              StatusIs(absl::StatusCode::kNotFound,
                       StartsWith(dir.Join("model.safetensors") + ": ")));
}

TEST(DirectoryTest, ReportsAnInvalidFile) {
  testing::ShortTempDir dir;
  WriteFile(dir.Join("a.safetensors"), Shard({{"a", 2}}));
  WriteFile(dir.Join("b.safetensors"), "garbage");
  EXPECT_THAT(OpenCheckpoint(dir.path(), ParseOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       StartsWith(dir.Join("b.safetensors") + ": not a")));
}

// ---------------------------------------------------------------------------
// Confined to model roots: every open goes through ParseOptions::opener.

// "<tmp>/root/model" holds a checkpoint; "<tmp>/outside" is beyond the only
// allowed root, "<tmp>/root".
class ConfinedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.Join("root");
    model_ = root_ + "/model";
    outside_ = dir_.Join("outside");
    for (const std::string& d : {root_, model_, outside_}) {
      ASSERT_EQ(::mkdir(d.c_str(), 0755), 0) << d;
    }
    WriteFile(model_ + "/a.safetensors", Shard({{"a", 2}}));
    WriteFile(outside_ + "/b.safetensors", Shard({{"b", 3}}));
    ASSERT_OK_AND_ASSIGN(opener_, BeneathRootsOpener::Create({root_}));
    options_.opener = opener_.get();
  }

  testing::ShortTempDir dir_;
  std::string root_;
  std::string model_;
  std::string outside_;
  std::unique_ptr<BeneathRootsOpener> opener_;
  ParseOptions options_;
};

TEST_F(ConfinedTest, OpensACheckpointInsideTheRoot) {
  // Relative links that stay inside, as in a Hugging Face cache, are fine.
  WriteFile(root_ + "/blob", Shard({{"c", 1}}));
  ASSERT_EQ(::symlink("../blob", (model_ + "/c.safetensors").c_str()), 0);
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(model_, options_));
  ASSERT_THAT(manifest.files, SizeIs(2));
  EXPECT_THAT(TensorNames(manifest.files[1]), ElementsAre("c"));
  ASSERT_OK_AND_ASSIGN(manifest,
                       OpenCheckpoint(model_ + "/a.safetensors", options_));
  EXPECT_THAT(manifest.files, SizeIs(1));
}

TEST_F(ConfinedTest, RefusesACheckpointOutsideTheRoots) {
  const std::string path = outside_ + "/b.safetensors";
  EXPECT_THAT(OpenCheckpoint(path, options_),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       StartsWith(path +
                                  ": not beneath an allowed model "
                                  "root (" +
                                  root_ + ")")));
  EXPECT_THAT(OpenCheckpoint(outside_, options_),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("not beneath an allowed model root")));
}

TEST_F(ConfinedTest, RefusesADirectoryWhoseWeightFileLinksOutside) {
  const std::string link = model_ + "/b.safetensors";
  ASSERT_EQ(::symlink((outside_ + "/b.safetensors").c_str(), link.c_str()), 0);
  // Unconfined, the link is followed.
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(model_, ParseOptions()));
  EXPECT_THAT(manifest.files, SizeIs(2));
  EXPECT_THAT(OpenCheckpoint(model_, options_),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       link + ": resolves outside the model root " + root_));
}

TEST_F(ConfinedTest, RefusesADirectoryThatLinksOutside) {
  const std::string link = root_ + "/linked";
  ASSERT_EQ(::symlink("../outside", link.c_str()), 0);
  EXPECT_OK(OpenCheckpoint(link, ParseOptions()).status());
  EXPECT_THAT(OpenCheckpoint(link, options_),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       link + ": resolves outside the model root " + root_));
  EXPECT_THAT(OpenCheckpoint(link + "/", options_),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("resolves outside the model root")));
}

TEST_F(ConfinedTest, RefusesAnIndexWhoseShardEscapes) {
  ASSERT_EQ(::symlink("../../outside/b.safetensors",
                      (model_ + "/b.safetensors").c_str()),
            0);
  const std::string index = model_ + "/model.safetensors.index.json";
  nlohmann::json json = {
      {"weight_map", {{"a", "a.safetensors"}, {"b", "b.safetensors"}}}};
  WriteFile(index, json.dump());
  ASSERT_OK_AND_ASSIGN(Manifest manifest,
                       OpenCheckpoint(index, ParseOptions()));
  EXPECT_THAT(manifest.files, SizeIs(2));
  for (const std::string& path : {index, model_}) {
    EXPECT_THAT(
        OpenCheckpoint(path, options_),
        StatusIs(absl::StatusCode::kPermissionDenied,
                 AllOf(StartsWith(index + ": shard \"b.safetensors\": "),
                       HasSubstr(model_ +
                                 "/b.safetensors: resolves outside "
                                 "the model root " +
                                 root_))))
        << path;
  }
}

TEST_F(ConfinedTest, RefusesAnIndexThatLinksOutside) {
  const std::string outside_index = outside_ + "/model.safetensors.index.json";
  WriteFile(outside_index,
            nlohmann::json({{"weight_map", {{"b", "b.safetensors"}}}}).dump());
  const std::string link = model_ + "/model.safetensors.index.json";
  ASSERT_EQ(::symlink(outside_index.c_str(), link.c_str()), 0);
  EXPECT_THAT(OpenCheckpoint(link, options_),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       link + ": resolves outside the model root " + root_));
  EXPECT_THAT(OpenCheckpoint(model_, options_),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       link + ": resolves outside the model root " + root_));
}

TEST_F(ConfinedTest, MissingPathInsideTheRootIsNotFound) {
  const std::string path = model_ + "/absent.safetensors";
  EXPECT_THAT(OpenCheckpoint(path, options_),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

}  // namespace
}  // namespace warmstart

namespace warmstart {
namespace {

// Serves URLs from memory and counts opens, for OpenCheckpoint's URL path
// (the real remote source is tested against real servers in
// tests/remote_source_test.py).
class MemoryUrls : public UrlSourceOpener {
 public:
  void Add(const std::string& url, std::string bytes) {
    files_[url] = std::move(bytes);
  }
  absl::StatusOr<std::unique_ptr<ByteSource>> OpenUrl(
      const std::string& url) const override {
    auto it = files_.find(url);
    if (it == files_.end()) return absl::NotFoundError(url + ": HTTP 404");
    class Versioned : public MemoryByteSource {
     public:
      using MemoryByteSource::MemoryByteSource;
      std::string version() const override { return "\"v1\""; }
    };
    return std::unique_ptr<ByteSource>(new Versioned(url, it->second));
  }
  absl::StatusOr<std::vector<std::string>> ListUrl(
      const std::string& url) const override {
    std::vector<std::string> urls;
    for (const auto& [name, bytes] : files_) {
      if (absl::StartsWith(name, url)) urls.push_back(name);
    }
    return urls;
  }

 private:
  std::map<std::string, std::string> files_;
};

std::string ReadFixture(const std::string& fixture) {
  std::ifstream in(testing::FixturePath(fixture), std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(OpenCheckpointUrlTest, UrlsNeedARemoteOpener) {
  EXPECT_THAT(OpenCheckpoint("s3://bucket/m.safetensors", ParseOptions()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("s3://bucket/m.safetensors: remote sources "
                                 "are not enabled")));
}

TEST(OpenCheckpointUrlTest, OneFileAndAShardIndexRecordTheVersion) {
  MemoryUrls urls;
  const std::string shard =
      ReadFixture("safetensors/golden_rs_f32.safetensors");
  urls.Add("https://h/m/a.safetensors", shard);
  ParseOptions options;
  options.remote = &urls;
  ASSERT_OK_AND_ASSIGN(Manifest one,
                       OpenCheckpoint("https://h/m/a.safetensors", options));
  ASSERT_THAT(one.files, SizeIs(1));
  EXPECT_EQ(one.files[0].path, "https://h/m/a.safetensors");
  EXPECT_EQ(one.files[0].version, "\"v1\"");
  EXPECT_EQ(one.files[0].file_size, shard.size());

  std::string weight_map;
  for (const TensorEntry& tensor : one.files[0].tensors) {
    absl::StrAppend(&weight_map, weight_map.empty() ? "" : ",", "\"",
                    tensor.name, "\":\"a.safetensors\"");
  }
  urls.Add("https://h/m/model.safetensors.index.json",
           "{\"weight_map\":{" + weight_map + "}}");
  ASSERT_OK_AND_ASSIGN(
      Manifest index,
      OpenCheckpoint("https://h/m/model.safetensors.index.json", options));
  ASSERT_THAT(index.files, SizeIs(1));
  EXPECT_EQ(index.files[0].path, "https://h/m/a.safetensors");
  EXPECT_EQ(index.files[0].tensors.size(), one.files[0].tensors.size());

  // A prefix with one index opens the index.
  ASSERT_OK_AND_ASSIGN(Manifest prefix,
                       OpenCheckpoint("https://h/m/", options));
  ASSERT_THAT(prefix.files, SizeIs(1));
  EXPECT_EQ(prefix.files[0].path, "https://h/m/a.safetensors");
  EXPECT_THAT(OpenCheckpoint("https://h/empty/", options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("https://h/empty/: no weight files")));

  EXPECT_THAT(OpenCheckpoint("https://h/m/absent.gguf", options),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("HTTP 404")));
}

}  // namespace
}  // namespace warmstart
