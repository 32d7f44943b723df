#include "daemon/loader/loader.h"

#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/file_opener.h"
#include "daemon/device/host_device.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/formats/tensor_data.h"
#include "nlohmann/json.hpp"
#include "tests/doubles/fault_injecting_device.h"
#include "tests/doubles/fault_injecting_engine.h"

namespace warmstart {
namespace {

using ::warmstart::testing::FaultInjectingEngine;
using ::warmstart::testing::Sha256Hex;

using ::testing::AllOf;
using ::testing::HasSubstr;

// The key of an encrypted fixture, from its expected-values file.
std::unique_ptr<KeyProvider> FixtureKeys(const std::string& path) {
  if (path.find(".tensors") == std::string::npos) {
    return std::make_unique<KeyProvider>();
  }
  auto expected = nlohmann::json::parse(testing::ReadFileOrDie(path + ".json"),
                                        nullptr, false);
  if (expected.contains("key_hex")) {
    auto key = KeyFromHex(expected["key_hex"].get<std::string>());
    return std::make_unique<KeyProvider>(std::move(*key));
  }
  if (expected.contains("password")) {
    return std::make_unique<KeyProvider>(
        Password(expected["password"].get<std::string>()));
  }
  return std::make_unique<KeyProvider>();
}

struct Setup {
  ReadEngineOptions::Kind engine = ReadEngineOptions::Kind::kIoUring;
  bool direct = true;
  uint64_t slab_bytes = 4 << 20;
  uint64_t pool_bytes = 12 << 20;
};

std::string SetupName(const ::testing::TestParamInfo<Setup>& info) {
  return std::string(info.param.engine == ReadEngineOptions::Kind::kIoUring
                         ? "uring"
                         : "pread") +
         (info.param.direct ? "_direct" : "_buffered") + "_slab" +
         std::to_string(info.param.slab_bytes >> 10) + "k";
}

class LoaderFixtureTest : public ::testing::TestWithParam<Setup> {
 protected:
  void SetUp() override {
    ReadEngineOptions engine_options;
    engine_options.kind = GetParam().engine;
    auto engine = CreateReadEngine(engine_options);
    ASSERT_OK(engine.status());
    engine_ = std::move(*engine);
    auto pool =
        StagingPool::Create({GetParam().pool_bytes, GetParam().slab_bytes},
                            &device_, engine_.get());
    ASSERT_OK(pool.status());
    pool_ = std::move(*pool);
  }

  HostDevice host_{HostDeviceOptions{}};
  testing::FaultInjectingDevice device_{&host_, {}};
  std::unique_ptr<ReadEngine> engine_;
  std::unique_ptr<StagingPool> pool_;
};

const char* const kFixtures[] = {
    "safetensors/candle_whisper_mel_filters.safetensors",
    "safetensors/coffeevampir3_save_model_f32_meta.safetensors",
    "safetensors/fastsafetensors_a_f16_meta.safetensors",
    "safetensors/golden_py_bf16.safetensors",
    "safetensors/golden_py_i32_f16_alignment.safetensors",
    "safetensors/golden_py_i32_metadata.safetensors",
    "safetensors/golden_rs_empty.safetensors",
    "safetensors/golden_rs_f32.safetensors",
    "safetensors/golden_rs_f32_padded.safetensors",
    "safetensors/golden_rs_f4_subbyte.safetensors",
    "safetensors/golden_rs_metadata_only.safetensors",
    "tensorizer/encrypted_key_v3.tensors",
    "tensorizer/encrypted_meta_v4_flag.tensors",
    "tensorizer/encrypted_password_v3.tensors",
    "tensorizer/meta_bf16_v4.tensors",
    "tensorizer/meta_tensors_v4.tensors",
    "tensorizer/module_mixed_v2.tensors",
    "tensorizer/module_simple_v1.tensors",
    "gguf/ggmlc-v3-alltypes.gguf",
    "gguf/ggmlc-v3-empty.gguf",
    "gguf/ggmlc-v3-metaonly.gguf",
    "gguf/ggufpy-v1-tensors.gguf",
    "gguf/ggufpy-v3-alltypes.gguf",
    "gguf/ggufpy-v3-nested-array.gguf",
    "gguf/ollama-llama-2-tiny-random.gguf",
};

TEST_P(LoaderFixtureTest, EveryTensorOfEveryFixtureLandsIntact) {
  for (const char* fixture : kFixtures) {
    SCOPED_TRACE(fixture);
    const std::string path = testing::FixturePath(fixture);
    ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
    std::unique_ptr<KeyProvider> keys = FixtureKeys(path);
    Loader loader(engine_.get(), pool_.get(), &device_);
    LoadOptions options;
    options.direct_io = GetParam().direct;
    options.cached_files_buffered = false;  // O_DIRECT as asked.
    options.keys = keys.get();
    options.verify_checksums = true;
    uint64_t last_done = 0;
    options.on_progress = [&](const LoadProgress& progress) {
      EXPECT_GE(progress.bytes_done, last_done);
      EXPECT_LE(progress.bytes_done, progress.bytes_total);
      last_done = progress.bytes_done;
    };
    // An encrypted tensor is decrypted a whole cipher chunk at a time, in a
    // slab: small slabs cannot take big cipher chunks.
    uint64_t largest_cipher_chunk = 0;
    for (const TensorEntry& tensor : manifest.files[0].tensors) {
      if (tensor.encryption.has_value()) {
        largest_cipher_chunk = std::max(
            largest_cipher_chunk,
            std::min(tensor.encryption->chunk_size, tensor.stored_bytes));
      }
    }
    if (largest_cipher_chunk > GetParam().slab_bytes - 2 * 4096) {
      EXPECT_THAT(loader.Load(manifest, "m", options),
                  StatusIs(absl::StatusCode::kInvalidArgument,
                           HasSubstr("do not fit staging slabs")));
      continue;
    }
    ASSERT_OK_AND_ASSIGN(LoadedModel model,
                         loader.Load(manifest, "m", options));
    EXPECT_EQ(last_done, model.tensor_bytes);

    ASSERT_OK_AND_ASSIGN(auto source, FileByteSource::Open(path));
    size_t t = 0;
    for (const TensorEntry& tensor : manifest.files[0].tensors) {
      const LoadedTensor& loaded = model.tensors[t++];
      EXPECT_EQ(loaded.name, tensor.name);
      EXPECT_EQ(loaded.offset % 256, 0u);
      ASSERT_LE(loaded.offset + loaded.nbytes, model.arena->size());
      const KeyMaterial* key = nullptr;
      ASSERT_OK_AND_ASSIGN(key, keys->KeyFor(path, tensor));
      ASSERT_OK_AND_ASSIGN(std::string expected,
                           TensorSha256Hex(*source, tensor, key));
      EXPECT_EQ(Sha256Hex(absl::string_view(
                    model.arena->host_data() + loaded.offset, loaded.nbytes)),
                expected)
          << tensor.name;
    }
  }
  EXPECT_EQ(pool_->free_slabs(), pool_->slab_count());
  EXPECT_EQ(device_.live_allocations(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    EnginesAndSlabs, LoaderFixtureTest,
    ::testing::Values(
        Setup{ReadEngineOptions::Kind::kIoUring, true},
        Setup{ReadEngineOptions::Kind::kPread, true},
        Setup{ReadEngineOptions::Kind::kIoUring, false},
        Setup{ReadEngineOptions::Kind::kPread, false},
        // Slabs much smaller than the tensors: many chunks, split tensors.
        Setup{ReadEngineOptions::Kind::kIoUring, true, 12 << 10, 36 << 10},
        Setup{ReadEngineOptions::Kind::kPread, false, 12 << 10, 24 << 10}),
    SetupName);

class LoaderFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.Join("model.safetensors");
    testing::WriteTestSafetensors(path_, 8, 100000);
    auto manifest = OpenCheckpoint(path_, {});
    ASSERT_OK(manifest.status());
    manifest_ = std::move(*manifest);
  }

  // Loads through `engine` options and `device_faults`; checks that nothing
  // leaked whatever happened.
  absl::StatusOr<LoadedModel> LoadWith(
      FaultInjectingEngine::Options faults, testing::DeviceFaults device_faults,
      const std::atomic<bool>* cancel = nullptr, bool direct_io = true,
      uint64_t read_bytes = 0, bool* bytes_match = nullptr) {
    HostDeviceOptions host_options;
    // Reads land in the arena only when it is not written through its fd.
    host_options.write_through_fd = !in_place_;
    HostDevice host(host_options);
    testing::FaultInjectingDevice device(&host, device_faults);
    ReadEngineOptions engine_options;
    engine_options.kind = ReadEngineOptions::Kind::kPread;
    FaultInjectingEngine engine(std::move(*CreateReadEngine(engine_options)),
                                std::move(faults));
    auto pool = StagingPool::Create({3 * 65536, 65536}, &device);
    EXPECT_OK(pool.status());
    Loader loader(&engine, pool->get(), &device);
    LoadOptions options;
    options.cancel = cancel;
    options.direct_io = direct_io;
    options.cached_files_buffered = false;  // O_DIRECT as asked.
    if (read_bytes != 0) options.read_bytes = read_bytes;
    absl::StatusOr<LoadedModel> result =
        loader.Load(manifest_, "faulty", options);
    if (bytes_match != nullptr && result.ok()) {
      *bytes_match = TensorsMatchFile(*result);
      reads_ = engine.reads();
      max_in_flight_ = engine.max_in_flight();
    }
    EXPECT_EQ((*pool)->free_slabs(), (*pool)->slab_count());
    EXPECT_EQ(device.live_allocations(), result.ok() ? 1 : 0);
    if (result.ok()) result->arena.reset();  // Before the device goes.
    return result;
  }

  // Whether every tensor of `model` holds the file's bytes.
  bool TensorsMatchFile(const LoadedModel& model) {
    auto source = FileByteSource::Open(path_);
    if (!source.ok()) return false;
    size_t t = 0;
    for (const TensorEntry& tensor : manifest_.files[0].tensors) {
      const LoadedTensor& loaded = model.tensors[t++];
      auto expected = TensorSha256Hex(**source, tensor, nullptr);
      if (!expected.ok() ||
          Sha256Hex(absl::string_view(model.arena->host_data() + loaded.offset,
                                      loaded.nbytes)) != *expected) {
        return false;
      }
    }
    return true;
  }

  testing::ShortTempDir dir_;
  std::string path_;
  Manifest manifest_;
  uint64_t reads_ = 0;
  int64_t max_in_flight_ = 0;
  bool in_place_ = false;
};

TEST_F(LoaderFaultTest, CleanLoadThroughTheFaultInjectorSucceeds) {
  EXPECT_OK(LoadWith({}, {}).status());
}

TEST_F(LoaderFaultTest, EioAtTheNthReadFailsNamingFileAndOffset) {
  for (uint64_t n : {1, 3, 7}) {
    FaultInjectingEngine::Options faults;
    faults.fail_read = n;
    EXPECT_THAT(LoadWith(faults, {}),
                StatusIs(absl::StatusCode::kDataLoss,
                         AllOf(HasSubstr(path_), HasSubstr("offset"))))
        << n;
  }
}

TEST_F(LoaderFaultTest, EioWhileReadingInPlaceFailsAndReleasesEverything) {
  in_place_ = true;
  // Buffered reads of plain data land in the host arena directly.
  for (uint64_t n : {1, 5, 8}) {  // One read per tensor: 8 in all.
    FaultInjectingEngine::Options faults;
    faults.fail_read = n;
    EXPECT_THAT(LoadWith(faults, {}, nullptr, /*direct_io=*/false),
                StatusIs(absl::StatusCode::kDataLoss, HasSubstr(path_)))
        << n;
  }
  EXPECT_OK(LoadWith({}, {}, nullptr, /*direct_io=*/false).status());
}

TEST_F(LoaderFaultTest, FileTruncatedWhileReadingInPlaceIsDataLoss) {
  in_place_ = true;
  FaultInjectingEngine::Options faults;
  faults.action_before_read = 4;
  faults.action = [this] { ASSERT_EQ(::truncate(path_.c_str(), 200000), 0); };
  EXPECT_THAT(LoadWith(faults, {}, nullptr, /*direct_io=*/false),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(path_), HasSubstr("truncated"))));
}

TEST_F(LoaderFaultTest, ShortReadsAreResubmittedAndTheBytesAreRight) {
  FaultInjectingEngine::Options faults;
  faults.max_bytes_per_read = 4096;
  EXPECT_OK(LoadWith(faults, {}).status());
}

TEST_F(LoaderFaultTest, FileTruncatedDuringTheLoadIsDataLoss) {
  FaultInjectingEngine::Options faults;
  faults.action_before_read = 4;
  faults.action = [this] { ASSERT_EQ(::truncate(path_.c_str(), 200000), 0); };
  EXPECT_THAT(LoadWith(faults, {}),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(path_), HasSubstr("truncated"))));
}

TEST_F(LoaderFaultTest, SlabsAreFilledBySeveralReadsInFlight) {
  // 8 tensors of 100000 bytes through 64 KiB slabs: 13 staged chunks. In
  // 8 KiB reads each chunk is about 8 reads, several of them in flight.
  bool bytes_match = false;
  ASSERT_OK(LoadWith({}, {}, nullptr, /*direct_io=*/true, 8192, &bytes_match)
                .status());
  EXPECT_TRUE(bytes_match);
  EXPECT_GE(reads_, 8u * 100000 / 8192);
  EXPECT_GT(max_in_flight_, 1);
  // One read per slab when the reads are as large as the slabs.
  ASSERT_OK(LoadWith({}, {}, nullptr, /*direct_io=*/true, 65536, &bytes_match)
                .status());
  EXPECT_TRUE(bytes_match);
  EXPECT_LE(reads_, 8u * 100000 / (65536 - 2 * 4096) + 2);
}

TEST_F(LoaderFaultTest, EioOrShortReadsAmongTheReadsOfOneSlabAreCaught) {
  for (uint64_t n : {1, 2, 5, 9, 30}) {
    FaultInjectingEngine::Options faults;
    faults.fail_read = n;
    EXPECT_THAT(LoadWith(faults, {}, nullptr, true, 8192),
                StatusIs(absl::StatusCode::kDataLoss,
                         AllOf(HasSubstr(path_), HasSubstr("offset"))))
        << n;
  }
  FaultInjectingEngine::Options short_reads;
  short_reads.max_bytes_per_read = 4096;
  bool bytes_match = false;
  ASSERT_OK(
      LoadWith(short_reads, {}, nullptr, true, 8192, &bytes_match).status());
  EXPECT_TRUE(bytes_match);
  // The file cut short in the middle of a slab's reads.
  FaultInjectingEngine::Options truncate;
  truncate.action_before_read = 20;
  truncate.action = [this] { ASSERT_EQ(::truncate(path_.c_str(), 300000), 0); };
  EXPECT_THAT(LoadWith(truncate, {}, nullptr, true, 8192),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(path_), HasSubstr("truncated"))));
}

TEST_F(LoaderFaultTest, BufferedReadsLandInPlaceOnlyWhereTheArenaTakesThem) {
  bool bytes_match = false;
  // An arena written through its memfd: buffered reads are staged, one
  // read per slab: 800000 bytes in 64 KiB - 8 KiB slabs are 14.
  ASSERT_OK(LoadWith({}, {}, nullptr, /*direct_io=*/false, 65536, &bytes_match)
                .status());
  EXPECT_TRUE(bytes_match);
  EXPECT_EQ(reads_, 14u);
  // An arena written through its mapping: one read per piece (a tensor cut
  // by a chunk boundary is two), in place.
  in_place_ = true;
  ASSERT_OK(LoadWith({}, {}, nullptr, /*direct_io=*/false, 65536, &bytes_match)
                .status());
  EXPECT_TRUE(bytes_match);
  EXPECT_EQ(reads_, 14u + 7u);
}

TEST_F(LoaderFaultTest, ReadSizesThatAreNotWholePagesAreRefused) {
  EXPECT_THAT(
      LoadWith({}, {}, nullptr, true, 5000),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("read_bytes")));
}

TEST_F(LoaderFaultTest, DeviceOutOfMemoryIsResourceExhausted) {
  absl::Status status = LoadWith({}, {.fail_allocation_at = 1}).status();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kResourceExhausted,
                               HasSubstr("faulty")));
  EXPECT_TRUE(IsDeviceFull(status));
}

TEST_F(LoaderFaultTest, OtherExhaustedResourcesAreNotTheDeviceBeingFull) {
  FaultInjectingEngine::Options faults;
  faults.fail_read = 2;
  faults.fail_errno = ENOMEM;
  absl::Status status = LoadWith(faults, {}).status();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_FALSE(IsDeviceFull(status));
}

TEST_F(LoaderFaultTest, CopyFailureFailsTheLoad) {
  EXPECT_THAT(LoadWith({}, {.fail_copy_at = 5}),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("copy")));
}

TEST_F(LoaderFaultTest, CancellationStopsAndReleasesEverything) {
  std::atomic<bool> cancel{true};
  EXPECT_THAT(LoadWith({}, {}, &cancel),
              StatusIs(absl::StatusCode::kCancelled, HasSubstr("faulty")));
}

// A host device, an engine and a loader whose pool the test sizes.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = CreateReadEngine({});
    ASSERT_OK(engine.status());
    engine_ = std::move(*engine);
  }

  // A loader over a new pool of `pool_bytes` in slabs of `slab_bytes`.
  Loader& LoaderWithSlabs(uint64_t pool_bytes, uint64_t slab_bytes) {
    loader_.reset();
    auto pool = StagingPool::Create({pool_bytes, slab_bytes}, &device_);
    EXPECT_OK(pool.status());
    pool_ = std::move(*pool);
    loader_ = std::make_unique<Loader>(engine_.get(), pool_.get(), &device_);
    return *loader_;
  }

  HostDevice device_{HostDeviceOptions{}};
  std::unique_ptr<ReadEngine> engine_;
  std::unique_ptr<StagingPool> pool_;
  std::unique_ptr<Loader> loader_;
};

TEST_F(LoaderTest, ChecksumMismatchIsCaughtOnlyWhenVerifying) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("damaged.tensors");
  std::string bytes = testing::ReadFileOrDie(
      testing::FixturePath("tensorizer/module_simple_v1.tensors"));
  ASSERT_OK_AND_ASSIGN(
      Manifest original,
      OpenCheckpoint(
          testing::FixturePath("tensorizer/module_simple_v1.tensors"), {}));
  const TensorEntry& victim = original.files[0].tensors.back();
  bytes[victim.offset] ^= 0x01;
  std::ofstream(path, std::ios::binary) << bytes;
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));

  Loader& loader = LoaderWithSlabs(1 << 20, 1 << 20);
  LoadOptions options;
  EXPECT_OK(loader.Load(manifest, "unverified", options).status());
  options.verify_checksums = true;
  EXPECT_THAT(loader.Load(manifest, "verified", options),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(path), HasSubstr(victim.name),
                             HasSubstr("mismatch"))));
}

TEST_F(LoaderTest, EncryptedWithoutKeyAndWithWrongKeyAreRefused) {
  const std::string path =
      testing::FixturePath("tensorizer/encrypted_key_v3.tensors");
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  Loader& loader = LoaderWithSlabs(8 << 20, 4 << 20);
  EXPECT_THAT(loader.Load(manifest, "m", {}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("a key is needed")));
  ASSERT_OK_AND_ASSIGN(KeyMaterial wrong, KeyFromHex(std::string(64, '0')));
  KeyProvider keys(std::move(wrong));
  LoadOptions options;
  options.keys = &keys;
  EXPECT_THAT(loader.Load(manifest, "m", options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("decryption failed")));
  EXPECT_EQ(pool_->free_slabs(), pool_->slab_count());
}

TEST_F(LoaderTest, SlabsSmallerThanACipherChunkAreRefusedClearly) {
  const std::string path =
      testing::FixturePath("tensorizer/encrypted_key_v3.tensors");
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  Loader& loader = LoaderWithSlabs(64 << 10, 64 << 10);
  EXPECT_THAT(loader.Load(manifest, "m", {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("do not fit staging slabs")));
}

TEST_F(LoaderTest, SlabsWithNoRoomBeyondAlignmentAreRefused) {
  const std::string path =
      testing::FixturePath("safetensors/golden_rs_f32.safetensors");
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  for (uint64_t slab : {4096, 8192}) {
    Loader& loader = LoaderWithSlabs(slab, slab);
    EXPECT_THAT(
        loader.Load(manifest, "m", {}),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("too small")))
        << slab;
  }
}

TEST_F(LoaderTest, BigEndianGgufIsRefusedByTheLoader) {
  const std::string path =
      testing::FixturePath("gguf/ggufpy-v3-bigendian.gguf");
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  Loader& loader = LoaderWithSlabs(1 << 20, 1 << 20);
  EXPECT_THAT(loader.Load(manifest, "m", {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("big-endian"))));
}

TEST_F(LoaderTest, OpenerConfinesTheFilesItReads) {
  testing::ShortTempDir dir;
  const std::string root = dir.Join("root");
  const std::string outside = dir.Join("outside");
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(outside.c_str(), 0755), 0);
  const std::string inside_path = root + "/model.safetensors";
  const std::string outside_path = outside + "/model.safetensors";
  testing::WriteTestSafetensors(inside_path, 4, 10000);
  testing::WriteTestSafetensors(outside_path, 4, 10000);
  ASSERT_OK_AND_ASSIGN(Manifest inside, OpenCheckpoint(inside_path, {}));
  ASSERT_OK_AND_ASSIGN(Manifest beyond, OpenCheckpoint(outside_path, {}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BeneathRootsOpener> opener,
                       BeneathRootsOpener::Create({root}));

  Loader& loader = LoaderWithSlabs(1 << 20, 1 << 20);
  LoadOptions options;
  options.opener = opener.get();
  for (bool direct : {true, false}) {
    options.direct_io = direct;
    options.cached_files_buffered = false;  // O_DIRECT as asked.
    absl::StatusOr<LoadedModel> loaded = loader.Load(inside, "in", options);
    EXPECT_OK(loaded.status()) << direct;
    EXPECT_THAT(loader.Load(beyond, "out", options),
                StatusIs(absl::StatusCode::kPermissionDenied,
                         AllOf(HasSubstr(outside_path),
                               HasSubstr("not beneath an allowed model root"))))
        << direct;
  }

  // A file swapped for a link to outside after it was parsed is refused too.
  ASSERT_EQ(::unlink(inside_path.c_str()), 0);
  ASSERT_EQ(::symlink(outside_path.c_str(), inside_path.c_str()), 0);
  EXPECT_THAT(loader.Load(inside, "swapped", options),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr(inside_path +
                                 ": resolves outside the model root " + root)));
  EXPECT_EQ(pool_->free_slabs(), pool_->slab_count());
  // Unconfined, the same manifests load.
  EXPECT_OK(loader.Load(beyond, "plain", {}).status());
  EXPECT_OK(loader.Load(inside, "plain", {}).status());
}

// Plaintext single files without meta tensors: every one can be a file
// image.
const char* const kFileImageFixtures[] = {
    "safetensors/candle_whisper_mel_filters.safetensors",
    "safetensors/golden_py_bf16.safetensors",
    "safetensors/golden_rs_empty.safetensors",
    "tensorizer/module_mixed_v2.tensors",
    "tensorizer/module_simple_v1.tensors",
    "gguf/ggmlc-v3-alltypes.gguf",
    "gguf/ggmlc-v3-empty.gguf",
    "gguf/ollama-llama-2-tiny-random.gguf",
};

TEST_P(LoaderFixtureTest, FileImageHoldsTheFileByteForByte) {
  for (const char* fixture : kFileImageFixtures) {
    SCOPED_TRACE(fixture);
    const std::string path = testing::FixturePath(fixture);
    const std::string file = testing::ReadFileOrDie(path);
    ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
    Loader loader(engine_.get(), pool_.get(), &device_);
    LoadOptions options;
    options.layout = ModelLayout::kFileImage;
    options.direct_io = GetParam().direct;
    options.cached_files_buffered = false;  // O_DIRECT as asked.
    options.verify_checksums = true;
    uint64_t reported_total = 0;
    options.on_progress = [&](const LoadProgress& progress) {
      reported_total = progress.bytes_total;
    };
    ASSERT_OK_AND_ASSIGN(LoadedModel model,
                         loader.Load(manifest, "image", options));
    EXPECT_EQ(reported_total, file.size());
    // Exactly the file's size: readers of the file see no padding.
    const ExportedMemory exported = model.arena->Export();
    struct stat info;
    ASSERT_EQ(::fstat(exported.fd, &info), 0);
    EXPECT_EQ(static_cast<uint64_t>(info.st_size), file.size());
    EXPECT_EQ(exported.size, file.size());
    EXPECT_EQ(
        Sha256Hex(absl::string_view(model.arena->host_data(), file.size())),
        Sha256Hex(file));
    // Each tensor is where the file has it.
    const std::vector<TensorEntry>& entries = manifest.files[0].tensors;
    ASSERT_EQ(model.tensors.size(), entries.size());
    for (size_t i = 0; i < entries.size(); ++i) {
      EXPECT_EQ(model.tensors[i].name, entries[i].name);
      EXPECT_EQ(model.tensors[i].offset, entries[i].offset);
      EXPECT_EQ(model.tensors[i].nbytes, entries[i].nbytes);
      EXPECT_EQ(model.tensors[i].role, entries[i].role);
    }
    // The file's metadata comes with an image as with a packed model.
    EXPECT_EQ(model.metadata_json,
              manifest.files[0].metadata.dump(
                  -1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  EXPECT_EQ(pool_->free_slabs(), pool_->slab_count());
}

TEST_F(LoaderTest, FileImageChecksumsAreVerifiedOnTheImage) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("damaged.tensors");
  const std::string original_path =
      testing::FixturePath("tensorizer/module_simple_v1.tensors");
  std::string bytes = testing::ReadFileOrDie(original_path);
  ASSERT_OK_AND_ASSIGN(Manifest original, OpenCheckpoint(original_path, {}));
  const TensorEntry& victim = original.files[0].tensors.back();
  bytes[victim.offset] ^= 0x01;
  std::ofstream(path, std::ios::binary) << bytes;
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));

  Loader& loader = LoaderWithSlabs(1 << 20, 1 << 20);
  LoadOptions options;
  options.layout = ModelLayout::kFileImage;
  EXPECT_OK(loader.Load(manifest, "unverified", options).status());
  options.verify_checksums = true;
  EXPECT_THAT(loader.Load(manifest, "verified", options),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(path), HasSubstr(victim.name),
                             HasSubstr("mismatch"))));
}

TEST_F(LoaderTest, WhatIsNoFileImageIsRefusedNamingTheReason) {
  struct Case {
    const char* fixture;
    const char* reason;
  };
  for (const Case& c : {
           Case{"tensorizer/encrypted_key_v3.tensors", "is encrypted"},
           Case{"tensorizer/meta_tensors_v4.tensors", "is a meta tensor"},
       }) {
    SCOPED_TRACE(c.fixture);
    const std::string path = testing::FixturePath(c.fixture);
    ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
    Loader& loader = LoaderWithSlabs(8 << 20, 4 << 20);
    LoadOptions options;
    options.layout = ModelLayout::kFileImage;
    EXPECT_THAT(loader.Load(manifest, "m", options),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr(path), HasSubstr(c.reason),
                               HasSubstr("use the packed layout"))));
    EXPECT_THAT(
        SizeLoad(manifest, ModelLayout::kFileImage, 256),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.reason)));
  }
  // Two shards are two files: no one file image holds them.
  Manifest two;
  for (const char* fixture : {"safetensors/golden_rs_f32.safetensors",
                              "safetensors/golden_py_bf16.safetensors"}) {
    ASSERT_OK_AND_ASSIGN(Manifest one,
                         OpenCheckpoint(testing::FixturePath(fixture), {}));
    two.files.push_back(one.files[0]);
  }
  EXPECT_THAT(SizeLoad(two, ModelLayout::kFileImage, 256),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("holds one file and this checkpoint has 2")));
}

TEST_F(LoaderTest, SizeLoadCountsTheFileForAnImageAndTensorsWhenPacked) {
  const std::string path =
      testing::FixturePath("gguf/ollama-llama-2-tiny-random.gguf");
  ASSERT_OK_AND_ASSIGN(Manifest manifest, OpenCheckpoint(path, {}));
  uint64_t tensor_bytes = 0;
  for (const TensorEntry& tensor : manifest.files[0].tensors) {
    tensor_bytes += tensor.nbytes;
  }
  ASSERT_OK_AND_ASSIGN(LoadSize image,
                       SizeLoad(manifest, ModelLayout::kFileImage, 256));
  EXPECT_EQ(image.arena_bytes, manifest.files[0].file_size);
  EXPECT_EQ(image.load_bytes, manifest.files[0].file_size);
  ASSERT_OK_AND_ASSIGN(LoadSize packed,
                       SizeLoad(manifest, ModelLayout::kPacked, 256));
  EXPECT_EQ(packed.load_bytes, tensor_bytes);
  EXPECT_GE(packed.arena_bytes, tensor_bytes);
}

TEST(FileImageDeviceTest, OnlyHostMemoryHoldsFileImages) {
  // The base Device refuses; the fault injector passes the call through to
  // a device that may refuse.
  class NoImages : public Device {
   public:
    const std::string& uuid() const override { return uuid_; }
    absl::StatusOr<std::unique_ptr<DeviceAllocation>> Allocate(
        uint64_t, const std::string&) override {
      return absl::InternalError("this test allocates no packed memory");
    }
    absl::Status RegisterHostMemory(void*, uint64_t) override {
      return absl::OkStatus();
    }
    void UnregisterHostMemory(void*) override {}
    void CopyFromHost(DeviceAllocation&, uint64_t, const char*, uint64_t,
                      std::function<void(absl::Status)> done) override {
      done(absl::OkStatus());
    }
    absl::Status Synchronize() override { return absl::OkStatus(); }

   private:
    const std::string uuid_ = "GPU-test";
  } gpu;
  EXPECT_THAT(gpu.AllocateFileImage(4096, "m"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("GPU-test"), HasSubstr("host memory"))));
}

TEST_F(LoaderTest, MetadataOfEveryFileAndRolesComeWithTheModel) {
  ASSERT_OK_AND_ASSIGN(
      Manifest manifest,
      OpenCheckpoint(testing::FixturePath(
                         "safetensors/golden_py_i32_metadata.safetensors"),
                     {}));
  ASSERT_EQ(manifest.files[0].metadata,
            nlohmann::ordered_json({{"framework", "pt"}}));
  // A second file (the same bytes) whose metadata disagrees on one key and
  // adds another: the first file's value wins, the new key joins.
  FileManifest second = manifest.files[0];
  second.metadata = {{"framework", "other"}, {"extra", 1}};
  manifest.files.push_back(second);
  ASSERT_OK_AND_ASSIGN(
      Manifest tensorizer,
      OpenCheckpoint(
          testing::FixturePath("tensorizer/module_simple_v1.tensors"), {}));
  manifest.files.push_back(tensorizer.files[0]);

  Loader& loader = LoaderWithSlabs(1 << 20, 1 << 20);
  ASSERT_OK_AND_ASSIGN(LoadedModel model,
                       loader.Load(manifest, "metadata", LoadOptions()));
  EXPECT_EQ(model.metadata_json, R"({"framework":"pt","extra":1})");
  std::map<std::string, std::string> roles;
  for (const LoadedTensor& tensor : model.tensors) {
    roles[tensor.name] = tensor.role;
  }
  EXPECT_EQ(roles["test1"], "");
  EXPECT_EQ(roles[".running"], "buffer");
  EXPECT_EQ(roles["enc.0.weight"], "parameter");
}

}  // namespace
}  // namespace warmstart
