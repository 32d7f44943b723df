// The Loader over the CUDA backend against the SIMULATED driver
// (tests/doubles/cuda_sim.h): slab recycling, concurrent loads,
// copy faults, and one load onto several simulated GPUs that reads each
// file once. Simulated device memory is host memory, so the tests compare
// it with the files directly.
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/device/cuda_device.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/formats/tensor_data.h"
#include "daemon/io/read_engine.h"
#include "daemon/loader/load_job.h"
#include "daemon/loader/loader.h"
#include "daemon/staging/staging_pool.h"
#include "tests/doubles/cuda_sim.h"
#include "tests/doubles/fault_injecting_device.h"
#include "tests/doubles/fault_injecting_engine.h"
#include "tests/doubles/sim_driver.h"

namespace warmstart {
namespace {

using ::warmstart::testing::AllocationPathName;
using ::warmstart::testing::FaultInjectingEngine;
using ::warmstart::testing::Sha256Hex;
using ::warmstart::testing::SimulatedBytes;
using ::warmstart::testing::SimulatedCudaPathsTest;
using ::warmstart::testing::SimulatedCudaTest;

using ::testing::AllOf;
using ::testing::HasSubstr;

// The fixtures the loader test also loads, minus the encrypted ones.
const char* const kFixtures[] = {
    "safetensors/candle_whisper_mel_filters.safetensors",
    "safetensors/coffeevampir3_save_model_f32_meta.safetensors",
    "safetensors/fastsafetensors_a_f16_meta.safetensors",
    "safetensors/golden_py_bf16.safetensors",
    "safetensors/golden_py_i32_f16_alignment.safetensors",
    "safetensors/golden_rs_empty.safetensors",
    "safetensors/golden_rs_f32_padded.safetensors",
    "safetensors/golden_rs_f4_subbyte.safetensors",
    "tensorizer/meta_tensors_v4.tensors",
    "tensorizer/module_mixed_v2.tensors",
    "tensorizer/module_simple_v1.tensors",
    "gguf/ggmlc-v3-alltypes.gguf",
    "gguf/ggufpy-v3-alltypes.gguf",
    "gguf/ollama-llama-2-tiny-random.gguf",
};

// Both allocation paths: VMM and cuMemAlloc with legacy IPC.
class LoaderOnCudaTest : public SimulatedCudaPathsTest {};

// Loads `fixture` with `loader` and checks every tensor's bytes in the
// simulated device memory against the file.
void LoadAndCheck(Loader& loader, const char* fixture) {
  SCOPED_TRACE(fixture);
  const std::string path = testing::FixturePath(fixture);
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  LoadOptions options;
  options.direct_io = false;
  ASSERT_OK_AND_ASSIGN(LoadedModel model, loader.Load(manifest, "m", options));
  ASSERT_OK_AND_ASSIGN(auto source, FileByteSource::Open(path));
  size_t t = 0;
  for (const TensorEntry& tensor : manifest.files[0].tensors) {
    const LoadedTensor& loaded = model.tensors[t++];
    ASSERT_LE(loaded.offset + loaded.nbytes, model.arena->size());
    ASSERT_OK_AND_ASSIGN(std::string expected,
                         TensorSha256Hex(*source, tensor, nullptr));
    EXPECT_EQ(Sha256Hex(absl::string_view(
                  SimulatedBytes(*model.arena) + loaded.offset, loaded.nbytes)),
              expected)
        << tensor.name;
  }
}

TEST_P(LoaderOnCudaTest, LoaderLandsEveryTensorThroughSmallSlabs) {
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(ReadEngineOptions()));
  // Three 12 KiB slabs: most tensors span several slabs, so slabs are
  // recycled many times per load, each only after its copies completed.
  ASSERT_OK_AND_ASSIGN(
      auto pool,
      StagingPool::Create({36 << 10, 12 << 10}, device_.get(), engine.get()));
  Loader loader(engine.get(), pool.get(), device_.get());
  for (const char* fixture : kFixtures) LoadAndCheck(loader, fixture);
  EXPECT_EQ(sim_.registered_host_regions(), 3);
  EXPECT_EQ(pool->free_slabs(), pool->slab_count());
  EXPECT_EQ(sim_.pageable_copies(), 0) << "every copy came from a pinned slab";
  EXPECT_EQ(sim_.live_allocations(), 0);
}

TEST_P(LoaderOnCudaTest,
       AnIdlePoolIsUnpinnedAndReleasedThenPinnedForTheNextLoad) {
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(ReadEngineOptions()));
  absl::Time now = absl::FromUnixSeconds(1000);
  StagingPoolOptions options;
  options.total_bytes = 36 << 10;
  options.slab_bytes = 12 << 10;
  options.release_after = absl::Seconds(30);
  options.now = [&now] { return now; };
  ASSERT_OK_AND_ASSIGN(
      auto pool, StagingPool::Create(options, device_.get(), engine.get()));
  EXPECT_EQ(sim_.registered_host_regions(), 0) << "nothing pinned at start";
  Loader loader(engine.get(), pool.get(), device_.get());
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    LoadAndCheck(loader, "tensorizer/module_mixed_v2.tensors");
    EXPECT_EQ(sim_.registered_host_regions(), 3);
    now += absl::Seconds(30);
    ASSERT_TRUE(pool->ReleaseIfQuiet());
    // cuMemHostUnregister before the pages went back.
    EXPECT_EQ(sim_.registered_host_regions(), 0);
    EXPECT_EQ(pool->resident_bytes(), 0u);
  }
  EXPECT_EQ(sim_.pageable_copies(), 0) << "every copy came from a pinned slab";
}

TEST_P(LoaderOnCudaTest, ConcurrentLoadsShareTheDevice) {
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(ReadEngineOptions()));
  ASSERT_OK_AND_ASSIGN(
      auto pool,
      StagingPool::Create({8 << 14, 1 << 14}, device_.get(), engine.get()));
  Loader loader(engine.get(), pool.get(), device_.get());
  std::vector<std::thread> threads;
  for (const char* fixture :
       {"gguf/ollama-llama-2-tiny-random.gguf",
        "safetensors/candle_whisper_mel_filters.safetensors",
        "tensorizer/module_mixed_v2.tensors"}) {
    threads.emplace_back([&loader, fixture] {
      for (int i = 0; i < 3; ++i) LoadAndCheck(loader, fixture);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(pool->free_slabs(), pool->slab_count());
}

INSTANTIATE_TEST_SUITE_P(AllocationPaths, LoaderOnCudaTest, ::testing::Bool(),
                         AllocationPathName);

// A failure injected at the n-th call of a copy-path entry point while the
// Loader loads a model.
struct CopyFault {
  const char* call;
  int nth;
  CUresult error;
};

void PrintTo(const CopyFault& fault, std::ostream* out) {
  *out << fault.call << " call " << fault.nth;
}

std::string CopyFaultName(const ::testing::TestParamInfo<CopyFault>& info) {
  return info.param.call;
}

class CopyFaultTest : public SimulatedCudaTest,
                      public ::testing::WithParamInterface<CopyFault> {};

TEST_P(CopyFaultTest, LoaderReturnsTheErrorWithEverySlabBack) {
  ASSERT_NO_FATAL_FAILURE(Open({}));
  testing::ShortTempDir dir;
  const std::string path = dir.Join("model.safetensors");
  testing::WriteTestSafetensors(path, 8, 100000);
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(ReadEngineOptions()));
  ASSERT_OK_AND_ASSIGN(auto pool,
                       StagingPool::Create({3 * 65536, 65536}, device_.get()));
  Loader loader(engine.get(), pool.get(), device_.get());

  sim_.inject(GetParam().call, GetParam().nth, GetParam().error);
  auto failed = loader.Load(manifest, "faulty", LoadOptions());
  EXPECT_THAT(failed, StatusIs(absl::StatusCode::kInternal,
                               AllOf(HasSubstr(GetParam().call),
                                     HasSubstr("simulated driver"))));
  EXPECT_EQ(pool->free_slabs(), pool->slab_count());
  EXPECT_EQ(sim_.live_allocations(), 0);
  EXPECT_EQ(sim_.outstanding_copies(), 0);

  // The error was the copy's alone: the next load succeeds.
  ASSERT_OK_AND_ASSIGN(LoadedModel model,
                       loader.Load(manifest, "healthy", LoadOptions()));
  ASSERT_OK_AND_ASSIGN(auto source, FileByteSource::Open(path));
  for (size_t t = 0; t < model.tensors.size(); ++t) {
    ASSERT_OK_AND_ASSIGN(
        std::string expected,
        TensorSha256Hex(*source, manifest.files[0].tensors[t], nullptr));
    EXPECT_EQ(Sha256Hex(absl::string_view(
                  SimulatedBytes(*model.arena) + model.tensors[t].offset,
                  model.tensors[t].nbytes)),
              expected);
  }
  EXPECT_EQ(pool->free_slabs(), pool->slab_count());
}

INSTANTIATE_TEST_SUITE_P(
    CopyPath, CopyFaultTest,
    ::testing::Values(
        CopyFault{"cuMemcpyHtoDAsync", 5, CUDA_ERROR_ILLEGAL_ADDRESS},
        // Events are pooled: a second one is created only when the first
        // copy is still in flight, which a fast completion thread prevents,
        // so only the first creation is certain to happen.
        CopyFault{"cuEventCreate", 1, CUDA_ERROR_UNKNOWN},
        CopyFault{"cuEventRecord", 5, CUDA_ERROR_LAUNCH_FAILED},
        CopyFault{"cuEventSynchronize", 5, CUDA_ERROR_LAUNCH_FAILED}),
    CopyFaultName);

// One load onto several simulated GPUs (the sim shares one memory among
// them: each device's arena is its own allocation).
class MultiDeviceLoadTest : public SimulatedCudaTest {
 protected:
  // A model of 8 tensors of 100000 bytes, read through 64 KiB slabs: every
  // tensor spans several chunks.
  void WriteModel() {
    path_ = dir_.Join("model.safetensors");
    testing::WriteTestSafetensors(path_, 8, 100000);
    ASSERT_OK_AND_ASSIGN(manifest_, OpenCheckpoint(path_, {}));
    for (const TensorEntry& tensor : manifest_.files[0].tensors) {
      stored_bytes_ += tensor.stored_bytes;
    }
    ASSERT_OK_AND_ASSIGN(auto inner, CreateReadEngine(ReadEngineOptions()));
    engine_ = std::make_unique<FaultInjectingEngine>(
        std::move(inner), FaultInjectingEngine::Options());
    ASSERT_OK_AND_ASSIGN(
        pool_, StagingPool::Create({3 * 65536, 65536}, device_.get()));
    loader_ =
        std::make_unique<Loader>(engine_.get(), pool_.get(), device_.get());
  }

  // Checks every tensor of `model` against the file.
  void ExpectTensorsMatchFile(const LoadedModel& model) {
    ASSERT_OK_AND_ASSIGN(auto source, FileByteSource::Open(path_));
    ASSERT_EQ(model.tensors.size(), manifest_.files[0].tensors.size());
    for (size_t t = 0; t < model.tensors.size(); ++t) {
      ASSERT_OK_AND_ASSIGN(
          std::string expected,
          TensorSha256Hex(*source, manifest_.files[0].tensors[t], nullptr));
      EXPECT_EQ(Sha256Hex(absl::string_view(
                    SimulatedBytes(*model.arena) + model.tensors[t].offset,
                    model.tensors[t].nbytes)),
                expected)
          << model.tensors[t].name;
    }
  }

  void TearDown() override {
    loader_.reset();
    pool_.reset();
    engine_.reset();
    SimulatedCudaTest::TearDown();
  }

  testing::ShortTempDir dir_;
  std::string path_;
  Manifest manifest_;
  uint64_t stored_bytes_ = 0;
  std::unique_ptr<FaultInjectingEngine> engine_;
  std::unique_ptr<StagingPool> pool_;
  std::unique_ptr<Loader> loader_;
};

class MultiDeviceCountTest : public MultiDeviceLoadTest,
                             public ::testing::WithParamInterface<int> {};

TEST_P(MultiDeviceCountTest, ReadsEachByteOnceAndFillsEveryDevice) {
  const int count = GetParam();
  ASSERT_NO_FATAL_FAILURE(OpenDevices(count));
  ASSERT_NO_FATAL_FAILURE(WriteModel());
  LoadOptions options;
  options.direct_io = false;  // Exact byte counts: no O_DIRECT supersets.
  ASSERT_OK_AND_ASSIGN(LoadPlan plan, loader_->Plan(manifest_, options));
  std::unique_ptr<LoadJob> job = loader_->NewJob(plan, "m", options);
  for (Device* device : devices_) ASSERT_OK(job->Allocate(device));
  ASSERT_OK(job->Fill());
  ASSERT_OK_AND_ASSIGN(std::vector<LoadedModel> models, job->Publish());

  std::cout << "bytes_read with " << count
            << " devices: " << engine_->bytes_read() << " (file data "
            << stored_bytes_ << ")\n";
  EXPECT_EQ(engine_->bytes_read(), stored_bytes_);
  ASSERT_EQ(models.size(), devices_.size());
  for (const LoadedModel& model : models) {
    ASSERT_NO_FATAL_FAILURE(ExpectTensorsMatchFile(model));
  }
  if (count > 1) {
    EXPECT_NE(devices_.front()->uuid(), devices_.back()->uuid());
  }
  EXPECT_EQ(pool_->free_slabs(), pool_->slab_count());
  EXPECT_EQ(sim_.pageable_copies(), 0) << "every copy came from a pinned slab";
  models.clear();
  EXPECT_EQ(sim_.live_allocations(), 0);
}

INSTANTIATE_TEST_SUITE_P(Devices, MultiDeviceCountTest,
                         ::testing::Values(1, 2, 4));

TEST_F(MultiDeviceLoadTest, CopyFailingOnTheThirdOfFourFreesEveryDevice) {
  ASSERT_NO_FATAL_FAILURE(OpenDevices(4));
  ASSERT_NO_FATAL_FAILURE(WriteModel());
  // The third device's second copy fails.
  testing::DeviceFaults faults;
  faults.fail_copy_at = 2;
  Device* const third = devices_[2];
  testing::FaultInjectingDevice failing(third, faults);
  devices_[2] = &failing;

  LoadOptions options;
  ASSERT_OK_AND_ASSIGN(LoadPlan plan, loader_->Plan(manifest_, options));
  {
    std::unique_ptr<LoadJob> job = loader_->NewJob(plan, "m", options);
    for (Device* device : devices_) ASSERT_OK(job->Allocate(device));
    EXPECT_EQ(sim_.live_allocations(), 4);
    EXPECT_THAT(job->Fill(),
                StatusIs(absl::StatusCode::kInternal,
                         HasSubstr(absl::StrCat("onto ", failing.uuid()))));
    // Everything read and copied has completed; nothing was published.
    EXPECT_EQ(pool_->free_slabs(), pool_->slab_count());
    EXPECT_EQ(sim_.outstanding_copies(), 0);
  }
  EXPECT_EQ(sim_.live_allocations(), 0) << "every device's arena was freed";
  EXPECT_EQ(failing.live_allocations(), 0);

  // The fault was the copy's alone: the next load of the plan succeeds.
  devices_[2] = third;
  std::unique_ptr<LoadJob> job = loader_->NewJob(plan, "m", options);
  for (Device* device : devices_) ASSERT_OK(job->Allocate(device));
  ASSERT_OK(job->Fill());
  ASSERT_OK_AND_ASSIGN(std::vector<LoadedModel> models, job->Publish());
  for (const LoadedModel& model : models) {
    ASSERT_NO_FATAL_FAILURE(ExpectTensorsMatchFile(model));
  }
}

// What the registry did before one job fed every device: one Loader::Load
// per device, each reading the whole file again.
TEST_F(MultiDeviceLoadTest, OneLoadPerDeviceReadsTheFileEachTime) {
  ASSERT_NO_FATAL_FAILURE(OpenDevices(4));
  ASSERT_NO_FATAL_FAILURE(WriteModel());
  LoadOptions options;
  options.direct_io = false;
  std::vector<LoadedModel> models;
  for (Device* device : devices_) {
    Loader loader(engine_.get(), pool_.get(), device);
    ASSERT_OK_AND_ASSIGN(LoadedModel model,
                         loader.Load(manifest_, "m", options));
    models.push_back(std::move(model));
  }
  std::cout << "bytes_read with 4 per-device loads: " << engine_->bytes_read()
            << "\n";
  EXPECT_EQ(engine_->bytes_read(), 4 * stored_bytes_);
}

}  // namespace
}  // namespace warmstart
