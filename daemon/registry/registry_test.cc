#include "daemon/registry/registry.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/tensor_table.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/file_opener.h"
#include "daemon/device/host_device.h"
#include "daemon/io/read_engine.h"
#include "daemon/staging/staging_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/doubles/fault_injecting_device.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::warmstart::testing::FillPattern;
using ::warmstart::testing::Sha256Hex;
using ::warmstart::testing::ShortTempDir;
using ::warmstart::testing::WriteTestSafetensors;

constexpr uint64_t kTensorBytes = 256 << 10;
constexpr int kTensors = 4;
// LayoutArena places the four tensors back to back: the arena's size.
constexpr uint64_t kModelBytes = kTensors * kTensorBytes;

absl::Time Soon() { return absl::Now() + absl::Seconds(30); }

// A registry over the host device (wrapped to count allocations and inject
// faults), reading beneath one model root.
class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}, 0); }

  // The load threads must not stay blocked when a test ends early.
  void TearDown() override { ReleaseAllocations(); }

  void Start(testing::DeviceFaults faults, uint64_t budget) {
    registry_.reset();
    loader_.reset();
    pool_.reset();
    device_ = std::make_unique<testing::FaultInjectingDevice>(&host_, faults);
    ReadEngineOptions engine_options;
    engine_options.kind = ReadEngineOptions::Kind::kPread;
    auto engine = CreateReadEngine(engine_options);
    ASSERT_OK(engine.status());
    engine_ = std::move(*engine);
    auto pool = StagingPool::Create({8 << 20, 4 << 20}, device_.get());
    ASSERT_OK(pool.status());
    pool_ = std::move(*pool);
    loader_ =
        std::make_unique<Loader>(engine_.get(), pool_.get(), device_.get());
    auto opener = BeneathRootsOpener::Create({root_.path()});
    ASSERT_OK(opener.status());
    opener_ = std::move(*opener);
    RegistryOptions options;
    options.targets.push_back({device_.get(), loader_.get(), budget});
    options.opener = opener_.get();
    options.load.direct_io = false;
    options.metrics = &metrics_;
    options.now = now_;
    registry_ = std::make_unique<Registry>(std::move(options));
  }

  // Start() with a device whose allocations wait for ReleaseAllocations():
  // a load stays in progress, its room reserved, for as long as a test needs.
  void StartHoldingAllocations(uint64_t budget) {
    testing::DeviceFaults faults;
    faults.hold_allocations = &allocations_released_;
    Start(faults, budget);
  }

  void ReleaseAllocations() {
    if (!allocations_released_.HasBeenNotified()) {
      allocations_released_.Notify();
    }
  }

  std::string WriteModel(const std::string& file, int tensors = kTensors) {
    const std::string path = root_.Join(file);
    WriteTestSafetensors(path, tensors, kTensorBytes);
    return path;
  }

  ModelRequest Request(const std::string& name, const std::string& path) {
    ModelRequest request;
    request.name = name;
    request.path = path;
    return request;
  }

  v1::ModelStatus LoadReady(const std::string& name, const std::string& path,
                            bool pinned = false) {
    ModelRequest request = Request(name, path);
    request.pinned = pinned;
    auto started = registry_->Load(request);
    EXPECT_OK(started.status());
    auto loaded = registry_->WaitLoaded(name, Soon());
    EXPECT_OK(loaded.status());
    EXPECT_EQ(loaded->state(), v1::READY) << loaded->error();
    return *loaded;
  }

  // The registry's clock; null: absl::Now.
  std::function<absl::Time()> now_;
  // Before the registry, which reports into it until destroyed.
  Metrics metrics_;
  absl::Notification allocations_released_;
  ShortTempDir root_;
  HostDevice host_{HostDeviceOptions{}};
  std::unique_ptr<testing::FaultInjectingDevice> device_;
  std::unique_ptr<ReadEngine> engine_;
  std::unique_ptr<StagingPool> pool_;
  std::unique_ptr<Loader> loader_;
  std::unique_ptr<BeneathRootsOpener> opener_;
  std::unique_ptr<Registry> registry_;
};

TEST_F(RegistryTest, TheLoaderIsWhoCreatedTheModelNotWhoJoinedIt) {
  const std::string path = WriteModel("m.safetensors");
  ModelRequest first = Request("m", path);
  first.requested_by_uid = 1000;
  ASSERT_OK(registry_->Load(first).status());
  ASSERT_OK(registry_->WaitLoaded("m", Soon()).status());
  // The same model asked for again, by another uid: it joins, and the
  // model's owner stays the uid that created it.
  ModelRequest again = Request("m", path);
  again.requested_by_uid = 2000;
  ASSERT_OK(registry_->Load(again).status());
  EXPECT_EQ(registry_->LoadedBy("m"), std::optional<uint32_t>(1000));
  // Ownership goes with the model.
  ASSERT_OK(registry_->Unload("m", /*force=*/false).status());
  EXPECT_EQ(registry_->LoadedBy("m"), std::nullopt);
  // Loaded again without a known caller (TCP, a preload): no owner.
  LoadReady("m", path);
  EXPECT_EQ(registry_->LoadedBy("m"), std::nullopt);
}

TEST_F(RegistryTest, ExportsPerModelAndPerDeviceMetrics) {
  const std::string path = WriteModel("m.safetensors");
  LoadReady("m", path);
  ASSERT_OK_AND_ASSIGN(LeaseGrant first,
                       registry_->Acquire("m", "session-1", Soon()));
  ASSERT_OK_AND_ASSIGN(LeaseGrant second,
                       registry_->Acquire("m", "session-2", Soon()));
  auto snapshot = metrics_.Snapshot();
  EXPECT_EQ(snapshot["warmstart_model_leases{model=\"m\"}"], 2);
  EXPECT_EQ(snapshot["warmstart_model_ready{model=\"m\"}"], 1);
  EXPECT_EQ(snapshot["warmstart_model_resident_bytes{model=\"m\","
                     "device=\"host\"}"],
            kModelBytes);
  EXPECT_EQ(snapshot["warmstart_device_resident_bytes{device=\"host\"}"],
            kModelBytes);
  EXPECT_EQ(snapshot["warmstart_load_duration_seconds_count{model=\"m\","
                     "device=\"host\"}"],
            1);
  EXPECT_EQ(snapshot["warmstart_load_read_bytes_per_second_count{model="
                     "\"m\",device=\"host\"}"],
            1);
  EXPECT_GT(snapshot["warmstart_load_read_bytes_per_second_sum{model="
                     "\"m\",device=\"host\"}"],
            0);
  EXPECT_EQ(snapshot["warmstart_acquire_latency_seconds_count{model=\"m\"}"],
            2);
  EXPECT_EQ(snapshot["warmstart_leases"], 2);

  // A dead worker's session releases its leases: the gauge follows.
  EXPECT_EQ(registry_->ReleaseSession("session-1"), 1);
  snapshot = metrics_.Snapshot();
  EXPECT_EQ(snapshot["warmstart_model_leases{model=\"m\"}"], 1);
  ASSERT_OK(registry_->Release(second.lease_id, "session-2"));
  ASSERT_OK(registry_->Unload("m", false).status());
  snapshot = metrics_.Snapshot();
  // An unloaded model takes its gauges with it; its histograms stay.
  EXPECT_EQ(snapshot.count("warmstart_model_leases{model=\"m\"}"), 0u);
  EXPECT_EQ(snapshot.count("warmstart_model_resident_bytes{model=\"m\","
                           "device=\"host\"}"),
            0u);
  EXPECT_EQ(snapshot["warmstart_device_resident_bytes{device=\"host\"}"], 0);
  EXPECT_EQ(snapshot["warmstart_acquire_latency_seconds_count{model=\"m\"}"],
            2);
}

TEST_F(RegistryTest, LoadsAndLeasesReadOnlySealedMemory) {
  const std::string path = WriteModel("m.safetensors");
  v1::ModelStatus status = LoadReady("m", path);
  EXPECT_EQ(status.bytes_loaded(), kModelBytes);
  EXPECT_EQ(status.bytes_total(), kModelBytes);
  EXPECT_EQ(status.tensor_count(), static_cast<uint32_t>(kTensors));
  EXPECT_THAT(status.devices(), ::testing::ElementsAre("host"));

  ASSERT_OK_AND_ASSIGN(LeaseGrant grant,
                       registry_->Acquire("m", "session-1", Soon()));
  EXPECT_EQ(grant.model.leases(), 1u);
  ASSERT_EQ(grant.memory.size(), 1u);
  const ExportedMemory& memory = grant.memory[0].exported;
  ASSERT_EQ(memory.kind, ExportedMemory::Kind::kHostMemfd);
  void* mapped =
      ::mmap(nullptr, memory.size, PROT_READ, MAP_SHARED, memory.fd, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  // WriteTestSafetensors fills the data section with one pattern.
  std::string expected(kModelBytes, '\0');
  FillPattern(expected.data(), kModelBytes, 12345);
  ASSERT_EQ(grant.tensors.size(), static_cast<size_t>(kTensors));
  for (size_t i = 0; i < grant.tensors.size(); ++i) {
    const LoadedTensor& tensor = grant.tensors[i];
    EXPECT_EQ(tensor.nbytes, kTensorBytes);
    EXPECT_EQ(
        Sha256Hex(absl::string_view(
            static_cast<const char*>(mapped) + tensor.offset, tensor.nbytes)),
        Sha256Hex(
            absl::string_view(expected).substr(i * kTensorBytes, kTensorBytes)))
        << tensor.name;
  }
  ::munmap(mapped, memory.size);
  // Sealed: nobody can map it writable or resize it.
  EXPECT_EQ(::mmap(nullptr, memory.size, PROT_READ | PROT_WRITE, MAP_SHARED,
                   memory.fd, 0),
            MAP_FAILED);
  EXPECT_NE(::ftruncate(memory.fd, 0), 0);
  ASSERT_OK(registry_->Release(grant.lease_id, "session-1"));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus after, registry_->Get("m"));
  EXPECT_EQ(after.leases(), 0u);
}

// The packed table is built once, when the model is ready: every grant
// shares the same bytes, which list the same tensors as a copied list; a
// grant that asks for the table copies no tensor.
TEST_F(RegistryTest, GrantsShareOnePackedTableOfTheModelsTensors) {
  LoadReady("m", WriteModel("m.safetensors", 7));
  ASSERT_OK_AND_ASSIGN(LeaseGrant listed, registry_->Acquire("m", "s", Soon()));
  ASSERT_OK_AND_ASSIGN(
      LeaseGrant packed,
      registry_->Acquire("m", "s", Soon(), TensorListing::kPackedTable));
  ASSERT_NE(packed.tensor_table, nullptr);
  EXPECT_TRUE(packed.tensors.empty());
  EXPECT_EQ(packed.tensor_table, listed.tensor_table);
  ASSERT_EQ(listed.tensors.size(), 7u);
  ASSERT_OK_AND_ASSIGN(TensorTable table,
                       TensorTable::Parse(*packed.tensor_table));
  const TensorTableView& view = table.view();
  ASSERT_EQ(view.size(), listed.tensors.size());
  for (size_t i = 0; i < view.size(); ++i) {
    const LoadedTensor& tensor = listed.tensors[i];
    SCOPED_TRACE(tensor.name);
    EXPECT_EQ(view.name(i), tensor.name);
    EXPECT_EQ(view.dtype(i), tensor.dtype);
    EXPECT_EQ(view.role(i), tensor.role);
    EXPECT_EQ(std::vector<uint64_t>(view.shape(i).begin(), view.shape(i).end()),
              tensor.shape);
    EXPECT_EQ(view.nbytes(i), tensor.nbytes);
    EXPECT_EQ(view.offset(i), tensor.offset);
  }
  ASSERT_OK(registry_->Release(listed.lease_id, "s"));
  ASSERT_OK(registry_->Release(packed.lease_id, "s"));
}

TEST_F(RegistryTest, ConcurrentLoadsOfTheSameFilesLoadOnce) {
  const std::string path = WriteModel("m.safetensors");
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  for (int i = 0; i < 20; ++i) {
    threads.emplace_back([&] {
      if (!registry_->Load(Request("m", path)).ok()) return;
      auto status = registry_->WaitLoaded("m", Soon());
      if (status.ok() && status->state() == v1::READY) ++ready;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(ready.load(), 20);
  EXPECT_EQ(device_->live_allocations(), 1);
}

TEST_F(RegistryTest, SameNameFromOtherOrChangedFilesIsRefused) {
  const std::string path = WriteModel("m.safetensors");
  const std::string other = WriteModel("other.safetensors");
  LoadReady("m", path);
  EXPECT_THAT(registry_->Load(Request("m", other)),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("already loaded from " + path)));
  // Rewritten with another size: a changed file, not the loaded one.
  WriteTestSafetensors(path, kTensors + 1, kTensorBytes);
  EXPECT_THAT(registry_->Load(Request("m", path)),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("changed on disk since")));
}

TEST_F(RegistryTest, PathsOutsideTheRootAreRefusedAndNothingIsListed) {
  ShortTempDir outside;
  const std::string escaped = outside.Join("x.safetensors");
  WriteTestSafetensors(escaped, 1, 4096);
  ASSERT_EQ(::symlink(escaped.c_str(), root_.Join("link.safetensors").c_str()),
            0);
  EXPECT_THAT(registry_->Load(Request("a", escaped)),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(registry_->Load(Request("b", root_.Join("link.safetensors"))),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(registry_->Load(Request("c", root_.Join("../x.safetensors"))),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_TRUE(registry_->List().empty());
}

TEST_F(RegistryTest, MalformedRequestsGetClearErrors) {
  const std::string path = WriteModel("m.safetensors");
  EXPECT_THAT(registry_->Load(Request("", path)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("must be 1 to 128 characters")));
  EXPECT_THAT(registry_->Load(Request(std::string(100000, 'x'), path)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("(100000 bytes)")));
  EXPECT_THAT(registry_->Load(Request("a/b", path)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      registry_->Load(Request("m", "")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("path is empty")));
  EXPECT_THAT(
      registry_->Load(Request("m", "/" + std::string(5000, 'p'))),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("5001 bytes")));
  ModelRequest on_gpu = Request("m", path);
  on_gpu.devices = {"GPU-nonexistent"};
  EXPECT_THAT(registry_->Load(on_gpu),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("no device \"GPU-nonexistent\"")));
  EXPECT_THAT(registry_->Acquire("absent", "s", Soon()),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("no model named absent")));
  EXPECT_THAT(registry_->Release("no-such-lease", "s"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(registry_->Unload("absent", false),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(RegistryTest, LeasesBelongToTheirSession) {
  LoadReady("m", WriteModel("m.safetensors"));
  ASSERT_OK_AND_ASSIGN(LeaseGrant a, registry_->Acquire("m", "s1", Soon()));
  ASSERT_OK_AND_ASSIGN(LeaseGrant b, registry_->Acquire("m", "s1", Soon()));
  ASSERT_OK_AND_ASSIGN(LeaseGrant c, registry_->Acquire("m", "s2", Soon()));
  EXPECT_THAT(registry_->Release(a.lease_id, "s2"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(registry_->ReleaseSession("s1"), 2);
  EXPECT_EQ(registry_->Get("m")->leases(), 1u);
  EXPECT_THAT(registry_->Release(a.lease_id, "s1"),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(registry_->Release(c.lease_id, "s2"));
  EXPECT_EQ(registry_->Stats().leases, 0u);
}

TEST_F(RegistryTest, ForcedUnloadFreesMemoryAfterTheLastRelease) {
  LoadReady("m", WriteModel("m.safetensors"));
  ASSERT_OK_AND_ASSIGN(LeaseGrant lease, registry_->Acquire("m", "s", Soon()));
  EXPECT_THAT(registry_->Unload("m", /*force=*/false),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("has 1 lease(s)")));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus unloading,
                       registry_->Unload("m", /*force=*/true));
  EXPECT_EQ(unloading.state(), v1::UNLOADING);
  EXPECT_EQ(device_->live_allocations(), 1);
  // No new lease: the name is gone.
  EXPECT_THAT(registry_->Acquire("m", "s", Soon()),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(registry_->Release(lease.lease_id, "s"));
  EXPECT_EQ(device_->live_allocations(), 0);
  EXPECT_THAT(registry_->Get("m"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(RegistryTest, ForcedUnloadFreesTheNameWhileAHolderKeepsItsLease) {
  // A stopped (SIGSTOP) holder never releases: before, the model and its
  // name stayed taken forever, with no operator override.
  const std::string path = WriteModel("m.safetensors");
  LoadReady("m", path);
  ASSERT_OK_AND_ASSIGN(LeaseGrant stuck, registry_->Acquire("m", "s", Soon()));
  ASSERT_OK(registry_->Unload("m", /*force=*/true).status());
  EXPECT_THAT(registry_->Get("m"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(registry_->List().empty());
  // The old memory is still held and counted.
  EXPECT_EQ(device_->live_allocations(), 1);
  EXPECT_EQ(registry_->Stats().devices[0].resident_bytes, kModelBytes);
  // The name loads afresh.
  LoadReady("m", path);
  EXPECT_EQ(device_->live_allocations(), 2);
  EXPECT_EQ(registry_->Stats().devices[0].resident_bytes, 2 * kModelBytes);
  ASSERT_OK_AND_ASSIGN(LeaseGrant fresh, registry_->Acquire("m", "t", Soon()));
  // The holder comes back and releases: the old memory goes, the new model
  // stays.
  ASSERT_OK(registry_->Release(stuck.lease_id, "s"));
  EXPECT_EQ(device_->live_allocations(), 1);
  EXPECT_EQ(registry_->Stats().devices[0].resident_bytes, kModelBytes);
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus status, registry_->Get("m"));
  EXPECT_EQ(status.state(), v1::READY);
  EXPECT_EQ(status.leases(), 1u);
  ASSERT_OK(registry_->Release(fresh.lease_id, "t"));
}

TEST_F(RegistryTest, UnleasedUnloadFreesAtOnce) {
  LoadReady("m", WriteModel("m.safetensors"));
  ASSERT_OK(registry_->Unload("m", false).status());
  EXPECT_EQ(device_->live_allocations(), 0);
  EXPECT_TRUE(registry_->List().empty());
}

TEST_F(RegistryTest, EvictsLeastRecentlyUsedUnpinnedModelsToFitTheBudget) {
  Start({}, 2 * kModelBytes + kModelBytes / 2);
  LoadReady("a", WriteModel("a.safetensors"));
  LoadReady("b", WriteModel("b.safetensors"));
  // Using "a" makes "b" the least recently used.
  ASSERT_OK_AND_ASSIGN(LeaseGrant lease, registry_->Acquire("a", "s", Soon()));
  ASSERT_OK(registry_->Release(lease.lease_id, "s"));
  LoadReady("c", WriteModel("c.safetensors"));
  std::vector<std::string> names;
  for (const v1::ModelStatus& model : registry_->List()) {
    names.push_back(model.name());
  }
  EXPECT_THAT(names, ::testing::ElementsAre("a", "c"));
  EXPECT_EQ(device_->live_allocations(), 2);
  EXPECT_EQ(registry_->Stats().devices[0].resident_bytes, 2 * kModelBytes);
}

// A clock the test sets; read from the registry's threads.
class FakeClock {
 public:
  absl::Time Now() {
    absl::MutexLock lock(&mutex_);
    return now_;
  }
  void Set(absl::Time now) {
    absl::MutexLock lock(&mutex_);
    now_ = now;
  }

 private:
  absl::Mutex mutex_;
  absl::Time now_ = absl::UnixEpoch();
};

TEST_F(RegistryTest, LeastRecentlyUsedIsByTheRegistrysClock) {
  FakeClock clock;
  now_ = [&clock] { return clock.Now(); };
  Start({}, 2 * kModelBytes + kModelBytes / 2);
  const absl::Time start = absl::UnixEpoch() + absl::Hours(1);
  clock.Set(start + absl::Seconds(100));
  LoadReady("a", WriteModel("a.safetensors"));
  clock.Set(start + absl::Seconds(200));
  LoadReady("b", WriteModel("b.safetensors"));
  // "a" is used last in real time, but at an earlier time by the clock
  // the registry was given: by that clock "a" is the least recently used.
  clock.Set(start + absl::Seconds(50));
  ASSERT_OK_AND_ASSIGN(LeaseGrant lease, registry_->Acquire("a", "s", Soon()));
  ASSERT_OK(registry_->Release(lease.lease_id, "s"));
  clock.Set(start + absl::Seconds(300));
  LoadReady("c", WriteModel("c.safetensors"));
  std::vector<std::string> names;
  for (const v1::ModelStatus& model : registry_->List()) {
    names.push_back(model.name());
  }
  EXPECT_THAT(names, ::testing::ElementsAre("b", "c"));
}

TEST_F(RegistryTest, PinnedAndLeasedModelsAreNotEvicted) {
  Start({}, 2 * kModelBytes + kModelBytes / 2);
  LoadReady("pinned", WriteModel("p.safetensors"), /*pinned=*/true);
  LoadReady("leased", WriteModel("l.safetensors"));
  ASSERT_OK_AND_ASSIGN(LeaseGrant lease,
                       registry_->Acquire("leased", "s", Soon()));
  ASSERT_OK(registry_->Load(Request("new", WriteModel("n.safetensors"))));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus failed,
                       registry_->WaitLoaded("new", Soon()));
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("pinned, leased or loading"));
  EXPECT_THAT(failed.error(),
              HasSubstr(absl::StrCat("the budget is ",
                                     2 * kModelBytes + kModelBytes / 2)));
  EXPECT_EQ(registry_->List().size(), 3u);
  EXPECT_EQ(device_->live_allocations(), 2);
}

TEST_F(RegistryTest, ALoadInProgressHoldsItsRoomInTheBudget) {
  StartHoldingAllocations(kModelBytes + kModelBytes / 2);
  ASSERT_OK(registry_->Load(Request("a", WriteModel("a.safetensors"))));
  // `a` has reserved its room once the budget shows it; its allocation
  // waits.
  const absl::Time deadline = Soon();
  while (registry_->Stats().devices[0].resident_bytes == 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(registry_->Stats().devices[0].resident_bytes, kModelBytes);

  // A loading model cannot be evicted, so `b` does not fit.
  ASSERT_OK(registry_->Load(Request("b", WriteModel("b.safetensors"))));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus second,
                       registry_->WaitLoaded("b", Soon()));
  EXPECT_EQ(second.state(), v1::FAILED);
  EXPECT_THAT(second.error(), HasSubstr("pinned, leased or loading"));

  ReleaseAllocations();
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus first,
                       registry_->WaitLoaded("a", Soon()));
  EXPECT_EQ(first.state(), v1::READY) << first.error();
  EXPECT_EQ(registry_->Stats().devices[0].resident_bytes, kModelBytes);
}

TEST_F(RegistryTest, ConcurrentLoadsReserveTheDevicesFreeMemoryAtomically) {
  // The device has room for one and a half models: each load alone fits,
  // both together do not. Before, each allocation checked the free memory
  // on its own and both passed; the second must now see the first's
  // reservation although none of its pages are in the device's figure.
  testing::DeviceFaults faults;
  faults.hold_allocations = &allocations_released_;
  faults.memory = [] {
    DeviceMemory memory;
    memory.free_bytes = kModelBytes + kModelBytes / 2;
    memory.source = "a test's limit";
    return memory;
  };
  Start(faults, 0);
  ASSERT_OK(registry_->Load(Request("a", WriteModel("a.safetensors"))));
  const absl::Time deadline = Soon();
  while (registry_->Stats().devices[0].resident_bytes == 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_OK(registry_->Load(Request("b", WriteModel("b.safetensors"))));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus second,
                       registry_->WaitLoaded("b", Soon()));
  EXPECT_EQ(second.state(), v1::FAILED);
  EXPECT_EQ(second.error_code(),
            static_cast<int>(absl::StatusCode::kResourceExhausted))
      << second.error();
  EXPECT_THAT(second.error(), HasSubstr("free under a test's limit"));
  EXPECT_THAT(second.error(), HasSubstr("reserved by loads in progress"));
  ReleaseAllocations();
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus first,
                       registry_->WaitLoaded("a", Soon()));
  EXPECT_EQ(first.state(), v1::READY) << first.error();
}

TEST_F(RegistryTest, MemoryClientsKeepAfterUnloadCountsAgainstTheBudget) {
  // A client kept a memfd of an unloaded model: the device's shared memory
  // still holds it although no model does. It is reported, and a load that
  // fits the budget only without it is refused.
  testing::DeviceFaults faults;
  faults.memory = [] {
    DeviceMemory memory;
    memory.shared_bytes = kModelBytes;
    return memory;
  };
  Start(faults, kModelBytes + kModelBytes / 2);
  EXPECT_EQ(registry_->Stats().devices[0].retained_bytes, kModelBytes);
  ASSERT_OK(registry_->Load(Request("m", WriteModel("m.safetensors"))));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus status,
                       registry_->WaitLoaded("m", Soon()));
  EXPECT_EQ(status.state(), v1::FAILED);
  EXPECT_THAT(status.error(),
              HasSubstr("by clients still mapping models already unloaded"));
}

TEST_F(RegistryTest, HugeNamesGetShortErrorsEverywhere) {
  const std::string huge(100000, 'n');
  for (const absl::Status& status :
       {registry_->Get(huge).status(), registry_->Unload(huge, true).status(),
        registry_->WaitLoaded(huge, Soon()).status(),
        registry_->Acquire(huge, "s", Soon()).status()}) {
    EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("(100000 bytes)")));
    EXPECT_LT(status.message().size(), 300u);
  }
}

TEST_F(RegistryTest, ModelLargerThanTheBudgetIsRefusedAtOnce) {
  Start({}, kModelBytes / 2);
  EXPECT_THAT(registry_->Load(Request("m", WriteModel("m.safetensors"))),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("more than its whole budget")));
  EXPECT_TRUE(registry_->List().empty());
}

TEST_F(RegistryTest, EvictsWhenTheDeviceItselfIsFull) {
  // The second allocation fails as if the device were full: loading "b"
  // evicts "a" and tries again.
  testing::DeviceFaults faults;
  faults.fail_allocation_at = 2;
  Start(faults, 0);
  LoadReady("a", WriteModel("a.safetensors"));
  LoadReady("b", WriteModel("b.safetensors"));
  EXPECT_THAT(registry_->Get("a"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(RegistryTest, FailedLoadIsReportedAndRetried) {
  // The device is "full" once, with nothing to evict.
  testing::DeviceFaults faults;
  faults.fail_allocation_at = 1;
  Start(faults, 0);
  const std::string path = WriteModel("m.safetensors");
  ASSERT_OK(registry_->Load(Request("m", path)));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus failed,
                       registry_->WaitLoaded("m", Soon()));
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("loading model m onto host"));
  EXPECT_EQ(device_->live_allocations(), 0);
  EXPECT_THAT(registry_->Acquire("m", "s", Soon()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("failed to load")));
  // Loading it again replaces the failed entry (the fault was one-shot).
  EXPECT_EQ(LoadReady("m", path).state(), v1::READY);
}

TEST_F(RegistryTest, WatchSeesTheLoadThroughToReady) {
  const std::string path = WriteModel("m.safetensors", 32);
  ASSERT_OK(registry_->Load(Request("m", path)));
  uint64_t version = 0;
  v1::ModelState state = v1::LOADING;
  int updates = 0;
  while (state == v1::LOADING) {
    ASSERT_OK_AND_ASSIGN(v1::ModelStatus status,
                         registry_->WaitForChange("m", &version, Soon()));
    state = status.state();
    ++updates;
  }
  EXPECT_EQ(state, v1::READY);
  EXPECT_GE(updates, 1);
}

TEST_F(RegistryTest, ShutdownStopsNewLeasesAndWaitsForReleases) {
  LoadReady("m", WriteModel("m.safetensors"));
  ASSERT_OK_AND_ASSIGN(LeaseGrant lease, registry_->Acquire("m", "s", Soon()));
  registry_->StopLeasing();
  EXPECT_THAT(registry_->Acquire("m", "s", Soon()),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(registry_->WaitUntilUnleased(absl::Now() + absl::Milliseconds(50)),
            1);
  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_OK(registry_->Release(lease.lease_id, "s"));
  });
  EXPECT_EQ(registry_->WaitUntilUnleased(Soon()), 0);
  releaser.join();
}

TEST_F(RegistryTest, UnloadWhileLoadingCancelsTheLoad) {
  StartHoldingAllocations(0);
  // 64 MiB through an 8 MiB pool: the load thread checks for the unload
  // between chunks. Held at its allocation, it is surely still loading.
  const std::string path = root_.Join("big.safetensors");
  WriteTestSafetensors(path, 64, 1 << 20);
  ASSERT_OK(registry_->Load(Request("big", path)));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus unloading,
                       registry_->Unload("big", false));
  EXPECT_EQ(unloading.state(), v1::UNLOADING);
  ReleaseAllocations();
  const absl::Time deadline = Soon();
  while (!registry_->List().empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(registry_->List().empty());
  registry_.reset();
  EXPECT_EQ(device_->live_allocations(), 0);
}

TEST_F(RegistryTest, AGgufFileInHostMemoryIsAFileImageByDefault) {
  const std::string gguf = root_.Join("tiny.gguf");
  {
    std::ofstream(gguf, std::ios::binary) << testing::ReadFileOrDie(
        testing::FixturePath("gguf/ollama-llama-2-tiny-random.gguf"));
  }
  v1::ModelStatus image = LoadReady("tiny", gguf);
  EXPECT_EQ(image.layout(), v1::FILE_IMAGE);
  struct stat info;
  ASSERT_EQ(::stat(gguf.c_str(), &info), 0);
  EXPECT_EQ(image.resident_bytes(), static_cast<uint64_t>(info.st_size));
  EXPECT_EQ(image.bytes_total(), static_cast<uint64_t>(info.st_size));

  const std::string safetensors = WriteModel("m.safetensors");
  EXPECT_EQ(LoadReady("m", safetensors).layout(), v1::PACKED);

  ModelRequest packed = Request("tiny-packed", gguf);
  packed.layout = v1::PACKED;
  ASSERT_OK(registry_->Load(packed).status());
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus loaded,
                       registry_->WaitLoaded("tiny-packed", Soon()));
  EXPECT_EQ(loaded.layout(), v1::PACKED);
  EXPECT_LT(loaded.resident_bytes(), image.resident_bytes());
}

TEST_F(RegistryTest, AnotherLayoutOfALoadedModelIsAlreadyExists) {
  const std::string path = WriteModel("m.safetensors");
  ModelRequest image = Request("m", path);
  image.layout = v1::FILE_IMAGE;
  ASSERT_OK(registry_->Load(image).status());
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus loaded,
                       registry_->WaitLoaded("m", Soon()));
  ASSERT_EQ(loaded.state(), v1::READY) << loaded.error();
  EXPECT_EQ(loaded.layout(), v1::FILE_IMAGE);

  ModelRequest packed = Request("m", path);
  packed.layout = v1::PACKED;
  EXPECT_THAT(registry_->Load(packed),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("is held as file_image, not packed")));
  // Asking for no layout joins the model as it is.
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus joined,
                       registry_->Load(Request("m", path)));
  EXPECT_EQ(joined.layout(), v1::FILE_IMAGE);
}

TEST_F(RegistryTest, LayoutsThatCannotHoldTheModelAreRefusedBeforeListing) {
  const std::string path = root_.Join("secret.tensors");
  {
    std::ofstream(path, std::ios::binary) << testing::ReadFileOrDie(
        testing::FixturePath("tensorizer/encrypted_key_v3.tensors"));
  }
  ModelRequest image = Request("secret", path);
  image.layout = v1::FILE_IMAGE;
  EXPECT_THAT(registry_->Load(image),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("model secret as file_image"),
                                        HasSubstr("is encrypted"))));
  ModelRequest unknown = Request("odd", WriteModel("m.safetensors"));
  unknown.layout = static_cast<v1::ModelLayout>(7);
  EXPECT_THAT(registry_->Load(unknown),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("layout 7 is unknown")));
  EXPECT_TRUE(registry_->List().empty());
}

}  // namespace
}  // namespace warmstart
