// The Loader over the CUDA backend on a REAL GPU through the real driver:
// fixtures of every format land on the GPU with their bytes intact. Each
// test skips with the reason when there is no driver or no GPU (CI). On a
// GPU machine:
//   bazel test //daemon/loader:loader_gpu_test
// (the same over the simulated driver: loader_cuda_sim_test.cc).
#include <string>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/formats/tensor_data.h"
#include "daemon/io/read_engine.h"
#include "daemon/loader/loader.h"
#include "daemon/staging/staging_pool.h"
#include "tests/doubles/real_gpu.h"

namespace warmstart {
namespace {

using ::warmstart::testing::GpuPathName;
using ::warmstart::testing::RealGpuPathsTest;
using ::warmstart::testing::Sha256Hex;

class LoaderGpuTest : public RealGpuPathsTest {};

TEST_P(LoaderGpuTest, LandsFixturesOnTheGpu) {
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(ReadEngineOptions()));
  ASSERT_OK_AND_ASSIGN(
      auto pool,
      StagingPool::Create({36 << 10, 12 << 10}, device_.get(), engine.get()));
  Loader loader(engine.get(), pool.get(), device_.get());
  for (const char* fixture :
       {"safetensors/candle_whisper_mel_filters.safetensors",
        "safetensors/golden_py_i32_f16_alignment.safetensors",
        "tensorizer/module_mixed_v2.tensors",
        "gguf/ollama-llama-2-tiny-random.gguf"}) {
    SCOPED_TRACE(fixture);
    const std::string path = testing::FixturePath(fixture);
    ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
    ASSERT_OK_AND_ASSIGN(LoadedModel model,
                         loader.Load(manifest, "m", LoadOptions()));
    ASSERT_OK_AND_ASSIGN(auto source, FileByteSource::Open(path));
    for (size_t t = 0; t < model.tensors.size(); ++t) {
      const LoadedTensor& loaded = model.tensors[t];
      std::string bytes(loaded.nbytes, '\0');
      ASSERT_OK(device_->CopyToHost(*model.arena, loaded.offset, bytes.data(),
                                    bytes.size()));
      ASSERT_OK_AND_ASSIGN(
          std::string expected,
          TensorSha256Hex(*source, manifest.files[0].tensors[t], nullptr));
      EXPECT_EQ(Sha256Hex(bytes), expected) << loaded.name;
    }
  }
  EXPECT_EQ(pool->free_slabs(), pool->slab_count());
}

INSTANTIATE_TEST_SUITE_P(AllocationPaths, LoaderGpuTest, ::testing::Bool(),
                         GpuPathName);

}  // namespace
}  // namespace warmstart
