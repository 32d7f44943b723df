// Loads a generated multi-GB sharded checkpoint onto the host backend and
// checks every tensor's bytes in the arena against the files.
#include <openssl/sha.h>

#include "absl/strings/escaping.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/device/host_device.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/formats/tensor_data.h"
#include "daemon/loader/loader.h"
#include "tests/doubles/subprocess.h"

namespace warmstart {
namespace {

using ::warmstart::testing::Sha256Hex;

class LargeCheckpointTest
    : public ::testing::TestWithParam<ReadEngineOptions::Kind> {};

TEST_P(LargeCheckpointTest, EveryTensorOfATwoGigabyteCheckpointIsIntact) {
  testing::ShortTempDir dir;
  testing::RunResult generated = testing::RunProcess(
      {testing::BinaryPath("tools/checkpoint_gen/gen_checkpoint"),
       "--out=" + dir.Join("ckpt"), "--bytes=2G", "--shards=3",
       "--min_tensor=1KiB", "--max_tensor=300MiB",
       "--seed=" + std::to_string(testing::TestSeed())});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  const std::string index = dir.Join("ckpt/model.safetensors.index.json");
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(index, {}));
  ASSERT_EQ(manifest.files.size(), 3u);

  HostDevice device(HostDeviceOptions{});
  ReadEngineOptions engine_options;
  engine_options.kind = GetParam();
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(engine_options));
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({64 << 20, 8 << 20}, &device));
  Loader loader(engine.get(), pool.get(), &device);
  for (const bool direct : {true, false}) {
    SCOPED_TRACE(direct ? "O_DIRECT" : "buffered");
    LoadOptions options;
    options.direct_io = direct;
    options.cached_files_buffered = false;  // O_DIRECT as asked.
    ASSERT_OK_AND_ASSIGN(LoadedModel model,
                         loader.Load(manifest, "large", options));
    EXPECT_GE(model.tensor_bytes, 2'000'000'000u);
    size_t t = 0;
    for (const FileManifest& file : manifest.files) {
      ASSERT_OK_AND_ASSIGN(auto source, FileByteSource::Open(file.path));
      for (const TensorEntry& tensor : file.tensors) {
        const LoadedTensor& loaded = model.tensors[t++];
        ASSERT_EQ(loaded.name, tensor.name);
        ASSERT_OK_AND_ASSIGN(std::string expected,
                             TensorSha256Hex(*source, tensor, nullptr));
        ASSERT_EQ(Sha256Hex(absl::string_view(
                      model.arena->host_data() + loaded.offset, loaded.nbytes)),
                  expected)
            << tensor.name;
      }
    }
  }
  EXPECT_EQ(pool->free_slabs(), pool->slab_count());
}

INSTANTIATE_TEST_SUITE_P(Engines, LargeCheckpointTest,
                         ::testing::Values(ReadEngineOptions::Kind::kIoUring,
                                           ReadEngineOptions::Kind::kPread),
                         [](const auto& info) {
                           return info.param ==
                                          ReadEngineOptions::Kind::kIoUring
                                      ? "uring"
                                      : "pread";
                         });

}  // namespace
}  // namespace warmstart
