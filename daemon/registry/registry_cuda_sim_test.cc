// The registry over several simulated GPUs (tests/doubles/cuda_sim.h): one
// request places a model on every device from one read of its files.
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/file_opener.h"
#include "daemon/base/metrics.h"
#include "daemon/device/cuda_device.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/io/read_engine.h"
#include "daemon/loader/loader.h"
#include "daemon/registry/registry.h"
#include "daemon/staging/staging_pool.h"
#include "gtest/gtest.h"
#include "tests/doubles/fault_injecting_engine.h"
#include "tests/doubles/sim_driver.h"

namespace warmstart {
namespace {

using ::warmstart::testing::FaultInjectingEngine;
using ::warmstart::testing::SimulatedCudaTest;

absl::Time Soon() { return absl::Now() + absl::Seconds(30); }

class RegistryOnSimulatedGpusTest : public SimulatedCudaTest,
                                    public ::testing::WithParamInterface<int> {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(OpenDevices(GetParam()));
    RegistryOptions options;
    for (Device* device : devices_) {
      ASSERT_OK_AND_ASSIGN(auto inner, CreateReadEngine(ReadEngineOptions()));
      engines_.push_back(std::make_unique<FaultInjectingEngine>(
          std::move(inner), FaultInjectingEngine::Options()));
      ASSERT_OK_AND_ASSIGN(auto pool,
                           StagingPool::Create({3 * 65536, 65536}, device));
      pools_.push_back(std::move(pool));
      loaders_.push_back(std::make_unique<Loader>(engines_.back().get(),
                                                  pools_.back().get(), device));
      options.targets.push_back({device, loaders_.back().get(), 0});
    }
    ASSERT_OK_AND_ASSIGN(opener_, BeneathRootsOpener::Create({root_.path()}));
    options.opener = opener_.get();
    options.load.direct_io = false;  // Exact byte counts.
    options.metrics = &metrics_;
    registry_ = std::make_unique<Registry>(std::move(options));
  }

  void TearDown() override {
    registry_.reset();
    loaders_.clear();
    pools_.clear();
    engines_.clear();
    SimulatedCudaTest::TearDown();
  }

  uint64_t BytesRead() const {
    uint64_t bytes = 0;
    for (const auto& engine : engines_) bytes += engine->bytes_read();
    return bytes;
  }

  Metrics metrics_;
  testing::ShortTempDir root_;
  std::vector<std::unique_ptr<FaultInjectingEngine>> engines_;
  std::vector<std::unique_ptr<StagingPool>> pools_;
  std::vector<std::unique_ptr<Loader>> loaders_;
  std::unique_ptr<BeneathRootsOpener> opener_;
  std::unique_ptr<Registry> registry_;
};

TEST_P(RegistryOnSimulatedGpusTest, PlacesAModelOnEveryDeviceFromOneRead) {
  const std::string path = root_.Join("model.safetensors");
  testing::WriteTestSafetensors(path, 8, 100000);
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  uint64_t stored_bytes = 0;
  for (const TensorEntry& tensor : manifest.files[0].tensors) {
    stored_bytes += tensor.stored_bytes;
  }

  ModelRequest request;
  request.name = "m";
  request.path = path;
  ASSERT_OK(registry_->Load(request).status());
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus status,
                       registry_->WaitLoaded("m", Soon()));
  ASSERT_EQ(status.state(), v1::READY) << status.error();
  EXPECT_EQ(status.devices_size(), GetParam());
  EXPECT_EQ(status.bytes_loaded(), status.bytes_total());
  EXPECT_EQ(BytesRead(), stored_bytes)
      << "each byte of the file is read once, whatever the device count";
  ASSERT_OK_AND_ASSIGN(LeaseGrant grant,
                       registry_->Acquire("m", "session", Soon()));
  ASSERT_EQ(grant.memory.size(), static_cast<size_t>(GetParam()));
  for (size_t i = 0; i < grant.memory.size(); ++i) {
    EXPECT_EQ(grant.memory[i].device_uuid, devices_[i]->uuid());
  }
  ASSERT_OK(registry_->Release(grant.lease_id, "session"));
}

INSTANTIATE_TEST_SUITE_P(Devices, RegistryOnSimulatedGpusTest,
                         ::testing::Values(1, 2, 4));

}  // namespace
}  // namespace warmstart
