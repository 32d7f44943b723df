// The CUDA backend against the SIMULATED driver (tests/doubles/cuda_sim.h):
// allocation on both paths, export, stream and event ordering, and every
// error path (the Loader over it: daemon/loader/loader_cuda_sim_test.cc;
// the staging pool pinning through it: daemon/staging/
// staging_pool_cuda_sim_test.cc).
// Simulated device memory is host memory, so the tests read it directly through
// device_pointer() or the exported memfd. What only a GPU can prove is in
// cuda_device_gpu_test.cc.
#include "daemon/device/cuda_device.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/metrics.h"
#include "daemon/device/cuda_driver.h"
#include "tests/doubles/cuda_sim.h"
#include "tests/doubles/pinned_buffer.h"
#include "tests/doubles/sim_driver.h"

namespace warmstart {
namespace {

using ::warmstart::testing::AllocationPathName;
using ::warmstart::testing::BindSim;
using ::warmstart::testing::FillPattern;
using ::warmstart::testing::LoadSimulatedDriver;
using ::warmstart::testing::PinnedBuffer;
using ::warmstart::testing::SimControls;
using ::warmstart::testing::SimulatedBytes;
using ::warmstart::testing::SimulatedCudaPathsTest;
using ::warmstart::testing::SimulatedCudaTest;

using ::testing::AllOf;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Both allocation paths: VMM and cuMemAlloc with legacy IPC.
class CudaDeviceTest : public SimulatedCudaPathsTest {};

TEST_P(CudaDeviceTest, DescribesTheSimulatedGpu) {
  EXPECT_THAT(device_->uuid(), StartsWith("GPU-"));
  EXPECT_EQ(device_->uuid().size(), 40u);
  EXPECT_EQ(device_->name(), "warmstart simulated GPU (not a real device)");
  EXPECT_EQ(device_->uses_vmm(), GetParam());
}

TEST_P(CudaDeviceTest, AllocationsAreRoundedAndZeroed) {
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(3 * kMiB + 5, "m"));
  EXPECT_EQ(allocation->size(), 4 * kMiB);
  EXPECT_EQ(allocation->host_data(), nullptr);
  EXPECT_EQ(static_cast<CudaAllocation&>(*allocation).vmm(), GetParam());
  // The simulation fills new memory with 0xA5, so zeros prove the backend
  // cleared it.
  const std::string zeros(allocation->size(), '\0');
  EXPECT_EQ(
      std::memcmp(SimulatedBytes(*allocation), zeros.data(), zeros.size()), 0);
  std::string read_back(4096, 'x');
  ASSERT_OK(device_->CopyToHost(*allocation, kMiB, read_back.data(),
                                read_back.size()));
  EXPECT_EQ(read_back, std::string(4096, '\0'));
  EXPECT_OK(allocation->Seal());
  EXPECT_EQ(sim_.live_allocations(), 1);
}

TEST_P(CudaDeviceTest, ExportsTheAllocation) {
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(kMiB, "m"));
  PinnedBuffer source(device_.get(), 8192);
  FillPattern(source.data(), 8192, 7);
  absl::Status copied = absl::UnknownError("not run");
  device_->CopyFromHost(*allocation, 4096, source.data(), 8192,
                        [&](absl::Status status) { copied = status; });
  ASSERT_OK(device_->Synchronize());
  ASSERT_OK(copied);

  const ExportedMemory exported = allocation->Export();
  EXPECT_EQ(exported.size, 2 * kMiB);
  if (GetParam()) {
    EXPECT_EQ(exported.kind, ExportedMemory::Kind::kCudaVmmFd);
    ASSERT_GE(exported.fd, 0);
    EXPECT_TRUE(exported.ipc_handle.empty());
    // The simulated export is the memfd behind the memory: a client that
    // maps it sees the copied bytes.
    void* view =
        ::mmap(nullptr, exported.size, PROT_READ, MAP_SHARED, exported.fd, 0);
    ASSERT_NE(view, MAP_FAILED) << std::strerror(errno);
    const char* bytes = static_cast<const char*>(view);
    EXPECT_EQ(std::memcmp(bytes + 4096, source.data(), 8192), 0);
    EXPECT_EQ(bytes[0], 0);
    EXPECT_EQ(bytes[4096 + 8192], 0);
    ::munmap(view, exported.size);
    EXPECT_EQ(allocation->Export().fd, exported.fd) << "exported once";
    allocation.reset();
    EXPECT_EQ(::fcntl(exported.fd, F_GETFD), -1) << "closed with the memory";
  } else {
    EXPECT_EQ(exported.kind, ExportedMemory::Kind::kCudaIpcHandle);
    EXPECT_EQ(exported.fd, -1);
    ASSERT_EQ(exported.ipc_handle.size(), 64u);
    EXPECT_THAT(exported.ipc_handle, StartsWith("simulated IPC handle"));
    EXPECT_EQ(
        std::memcmp(SimulatedBytes(*allocation) + 4096, source.data(), 8192),
        0);
  }
}

TEST_P(CudaDeviceTest, CopiesAreAsynchronousAndReportInIssueOrder) {
  constexpr int kCopies = 16;
  constexpr uint64_t kPiece = 4096;
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(kMiB, "m"));
  PinnedBuffer source(device_.get(), kCopies * kPiece);
  FillPattern(source.data(), kCopies * kPiece, 11);
  const char* device_bytes = SimulatedBytes(*allocation);

  absl::Mutex mutex;
  std::vector<int> order;
  std::vector<bool> landed(kCopies, false);
  sim_.pause_streams(1);
  for (int i = 0; i < kCopies; ++i) {
    const uint64_t offset = i * kPiece;
    device_->CopyFromHost(*allocation, offset, source.data() + offset, kPiece,
                          [&, i, offset](absl::Status status) {
                            EXPECT_OK(status);
                            absl::MutexLock lock(&mutex);
                            order.push_back(i);
                            // The callback releases the source: the bytes must
                            // be there.
                            landed[i] = std::memcmp(device_bytes + offset,
                                                    source.data() + offset,
                                                    kPiece) == 0;
                          });
  }
  // Every copy is queued and none has run: CopyFromHost did not wait. The
  // pause gives a completion thread that reported too early time to do so.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(sim_.outstanding_copies(), kCopies);
  {
    absl::MutexLock lock(&mutex);
    EXPECT_TRUE(order.empty());
  }
  sim_.pause_streams(0);
  ASSERT_OK(device_->Synchronize());
  std::vector<int> expected(kCopies);
  for (int i = 0; i < kCopies; ++i) expected[i] = i;
  absl::MutexLock lock(&mutex);
  EXPECT_THAT(order, ElementsAreArray(expected));
  EXPECT_EQ(landed, std::vector<bool>(kCopies, true));
  // Events are reused: no more exist than copies were in flight at once.
  EXPECT_LE(sim_.live_events(), kCopies);
}

TEST_P(CudaDeviceTest, EventsAreReusedOnceTheirCopiesComplete) {
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(kMiB, "m"));
  PinnedBuffer source(device_.get(), 4096);
  for (int i = 0; i < 50; ++i) {
    device_->CopyFromHost(*allocation, 0, source.data(), 4096,
                          [](absl::Status status) { EXPECT_OK(status); });
    ASSERT_OK(device_->Synchronize());
  }
  EXPECT_EQ(sim_.live_events(), 1);
}

TEST_P(CudaDeviceTest, OutOfMemoryNamesTheSizeAndLeaksNothing) {
  auto allocation = device_->Allocate(uint64_t{2} << 30, "big-model");
  EXPECT_THAT(allocation,
              StatusIs(absl::StatusCode::kResourceExhausted,
                       AllOf(HasSubstr("big-model"), HasSubstr("2147483648"),
                             HasSubstr("CUDA_ERROR_OUT_OF_MEMORY"))));
  EXPECT_EQ(sim_.live_allocations(), 0);
  EXPECT_EQ(sim_.live_address_ranges(), 0);
  // The device is still usable.
  EXPECT_OK(device_->Allocate(kMiB, "small").status());
}

TEST_F(SimulatedCudaTest, FreeMemoryComesFromTheDriverAtEveryCall) {
  // 64 MiB, 24 of them used by other processes: 40 free, less what this
  // device allocates, asked anew at every call.
  ASSERT_NO_FATAL_FAILURE(
      Open({{"WARMSTART_SIM_MEMORY_BYTES", std::to_string(64 * kMiB)},
            {"WARMSTART_SIM_OTHERS_MEMORY_BYTES", std::to_string(24 * kMiB)}}));
  DeviceMemory memory = device_->Memory();
  ASSERT_TRUE(memory.free_bytes.has_value());
  EXPECT_EQ(*memory.free_bytes, 40 * kMiB);
  EXPECT_THAT(memory.source,
              AllOf(HasSubstr("cuMemGetInfo on GPU-"),
                    HasSubstr("(41943040 of 67108864 bytes free)")));
  {
    ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(8 * kMiB, "m"));
    EXPECT_EQ(device_->Memory().free_bytes, 32 * kMiB);
    // Memory other processes use cannot be allocated.
    EXPECT_THAT(device_->Allocate(34 * kMiB, "big").status(),
                StatusIs(absl::StatusCode::kResourceExhausted));
  }
  EXPECT_EQ(device_->Memory().free_bytes, 40 * kMiB);
}

TEST_F(SimulatedCudaTest, AFailingMemGetInfoLeavesFreeMemoryUnknown) {
  ASSERT_NO_FATAL_FAILURE(Open({}));
  sim_.inject("cuMemGetInfo", 1, CUDA_ERROR_UNKNOWN);
  EXPECT_FALSE(device_->Memory().free_bytes.has_value());
  EXPECT_TRUE(device_->Memory().free_bytes.has_value());
}

INSTANTIATE_TEST_SUITE_P(AllocationPaths, CudaDeviceTest, ::testing::Bool(),
                         AllocationPathName);

// A failure injected at one driver call inside Allocate.
struct AllocationFault {
  bool vmm;
  const char* call;
  CUresult error;
  absl::StatusCode code;
};

void PrintTo(const AllocationFault& fault, std::ostream* out) {
  *out << (fault.vmm ? "vmm " : "legacy ") << fault.call;
}

std::string AllocationFaultName(
    const ::testing::TestParamInfo<AllocationFault>& info) {
  return std::string(info.param.vmm ? "vmm_" : "legacy_") + info.param.call;
}

class AllocationFaultTest
    : public SimulatedCudaTest,
      public ::testing::WithParamInterface<AllocationFault> {};

TEST_P(AllocationFaultTest, FailsWithTheDriverErrorAndLeaksNothing) {
  ASSERT_NO_FATAL_FAILURE(
      Open({{"WARMSTART_SIM_VMM", GetParam().vmm ? "1" : "0"}}));
  sim_.inject(GetParam().call, 1, GetParam().error);
  EXPECT_THAT(
      device_->Allocate(3 * kMiB, "model-x"),
      StatusIs(GetParam().code,
               AllOf(HasSubstr("GPU memory for model-x"),
                     HasSubstr("4194304 bytes"), HasSubstr(GetParam().call))));
  EXPECT_EQ(sim_.live_allocations(), 0);
  EXPECT_EQ(sim_.live_address_ranges(), 0);
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(3 * kMiB, "again"));
  EXPECT_EQ(SimulatedBytes(*allocation)[0], 0);
}

INSTANTIATE_TEST_SUITE_P(
    EveryStep, AllocationFaultTest,
    ::testing::Values(
        AllocationFault{true, "cuCtxPushCurrent", CUDA_ERROR_INVALID_CONTEXT,
                        absl::StatusCode::kInternal},
        AllocationFault{true, "cuMemCreate", CUDA_ERROR_OUT_OF_MEMORY,
                        absl::StatusCode::kResourceExhausted},
        AllocationFault{true, "cuMemAddressReserve", CUDA_ERROR_OUT_OF_MEMORY,
                        absl::StatusCode::kResourceExhausted},
        AllocationFault{true, "cuMemMap", CUDA_ERROR_INVALID_VALUE,
                        absl::StatusCode::kInvalidArgument},
        AllocationFault{true, "cuMemSetAccess", CUDA_ERROR_UNKNOWN,
                        absl::StatusCode::kInternal},
        AllocationFault{true, "cuMemExportToShareableHandle",
                        CUDA_ERROR_NOT_SUPPORTED,
                        absl::StatusCode::kUnimplemented},
        AllocationFault{true, "cuMemsetD8Async", CUDA_ERROR_ILLEGAL_ADDRESS,
                        absl::StatusCode::kInternal},
        AllocationFault{true, "cuStreamSynchronize", CUDA_ERROR_LAUNCH_FAILED,
                        absl::StatusCode::kInternal},
        AllocationFault{false, "cuMemAlloc", CUDA_ERROR_OUT_OF_MEMORY,
                        absl::StatusCode::kResourceExhausted},
        AllocationFault{false, "cuIpcGetMemHandle", CUDA_ERROR_INVALID_VALUE,
                        absl::StatusCode::kInvalidArgument},
        AllocationFault{false, "cuMemsetD8Async", CUDA_ERROR_ILLEGAL_ADDRESS,
                        absl::StatusCode::kInternal},
        AllocationFault{false, "cuStreamSynchronize", CUDA_ERROR_LAUNCH_FAILED,
                        absl::StatusCode::kInternal}),
    AllocationFaultName);

TEST_F(SimulatedCudaTest, SynchronizeWaitsForSlowCopies) {
  ASSERT_NO_FATAL_FAILURE(Open({{"WARMSTART_SIM_COPY_DELAY_US", "2000"}}));
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(kMiB, "m"));
  PinnedBuffer source(device_.get(), 20 * 4096);
  FillPattern(source.data(), 20 * 4096, 3);
  std::atomic<int> reported{0};
  // Queued behind a paused stream, so Synchronize surely finds all 20 copies
  // (2 ms each) still to do, however the threads are scheduled.
  sim_.pause_streams(1);
  for (int i = 0; i < 20; ++i) {
    device_->CopyFromHost(*allocation, i * 4096, source.data() + i * 4096, 4096,
                          [&](absl::Status status) {
                            EXPECT_OK(status);
                            reported.fetch_add(1);
                          });
  }
  EXPECT_EQ(sim_.outstanding_copies(), 20);
  sim_.pause_streams(0);
  ASSERT_OK(device_->Synchronize());
  EXPECT_EQ(reported.load(), 20);
  EXPECT_EQ(sim_.outstanding_copies(), 0);
  EXPECT_EQ(std::memcmp(SimulatedBytes(*allocation), source.data(), 20 * 4096),
            0);
}

TEST_F(SimulatedCudaTest, DeviceWithoutFileDescriptorExportUsesLegacyIpc) {
  Counter* fallbacks = Metrics::Global().GetCounter(
      "warmstart_cuda_legacy_ipc_fallback_total", "");
  const uint64_t before = fallbacks->value();
  ASSERT_NO_FATAL_FAILURE(Open({{"WARMSTART_SIM_POSIX_FD", "0"}}));
  EXPECT_TRUE(driver_->has_vmm());
  EXPECT_FALSE(device_->uses_vmm());
  EXPECT_EQ(fallbacks->value(), before + 1);
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(kMiB, "m"));
  EXPECT_EQ(allocation->Export().kind, ExportedMemory::Kind::kCudaIpcHandle);
}

TEST_F(SimulatedCudaTest, DriverWithoutVmmEntryPointsUsesLegacyIpc) {
  ASSERT_NO_FATAL_FAILURE(
      Open({{"WARMSTART_SIM_MISSING", "cuMemExportToShareableHandle"}}));
  EXPECT_FALSE(driver_->has_vmm());
  EXPECT_EQ(driver_->api().mem_create, nullptr);
  EXPECT_FALSE(device_->uses_vmm());
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(kMiB, "m"));
  EXPECT_EQ(allocation->Export().kind, ExportedMemory::Kind::kCudaIpcHandle);
}

TEST_F(SimulatedCudaTest, AllowVmmOffForcesLegacyIpc) {
  CudaDeviceOptions options;
  options.allow_vmm = false;
  ASSERT_NO_FATAL_FAILURE(Open({}, options));
  EXPECT_FALSE(device_->uses_vmm());
}

TEST_F(SimulatedCudaTest, MissingRequiredEntryPointFailsLoad) {
  EXPECT_THAT(
      LoadSimulatedDriver({{"WARMSTART_SIM_MISSING", "cuMemcpyHtoDAsync"}}),
      StatusIs(absl::StatusCode::kUnavailable,
               AllOf(StartsWith("no usable CUDA driver"),
                     HasSubstr("cuMemcpyHtoDAsync"))));
}

TEST_F(SimulatedCudaTest, FailingCuInitIsNoUsableDriver) {
  EXPECT_THAT(LoadSimulatedDriver({{"WARMSTART_SIM_INIT_ERROR", "100"}}),
              StatusIs(absl::StatusCode::kUnavailable,
                       StartsWith("no usable CUDA driver: cuInit failed")));
}

TEST_F(SimulatedCudaTest, NoDriverAtAllIsAClearStatus) {
  ::setenv("WARMSTART_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
  auto driver = CudaDriver::Load();
  ::unsetenv("WARMSTART_LIBCUDA");
  EXPECT_THAT(driver, StatusIs(absl::StatusCode::kUnavailable,
                               StartsWith("no CUDA driver")));
}

TEST_F(SimulatedCudaTest, DriverWithoutGpuHasNoDeviceToOpen) {
  ASSERT_OK_AND_ASSIGN(driver_,
                       LoadSimulatedDriver({{"WARMSTART_SIM_DEVICES", "0"}}));
  ASSERT_OK_AND_ASSIGN(auto devices, driver_->Devices());
  EXPECT_TRUE(devices.empty());
  EXPECT_THAT(CudaDevice::Create(driver_.get(), 0, {}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("ordinal 0")));
}

TEST_F(SimulatedCudaTest, RejectsOptionsOutOfRange) {
  ASSERT_OK_AND_ASSIGN(driver_, LoadSimulatedDriver());
  CudaDeviceOptions options;
  options.copy_streams = 0;
  EXPECT_THAT(
      CudaDevice::Create(driver_.get(), 0, options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("copy_streams")));
}

// Create fails part-way through and undoes what it had set up.
class CreateFaultTest : public SimulatedCudaTest,
                        public ::testing::WithParamInterface<const char*> {};

TEST_P(CreateFaultTest, UndoesEverything) {
  ASSERT_OK_AND_ASSIGN(driver_, LoadSimulatedDriver());
  ASSERT_NO_FATAL_FAILURE(BindSim(&sim_));
  // The second call: the first of each has succeeded by then.
  sim_.inject(GetParam(), 2, CUDA_ERROR_UNKNOWN);
  EXPECT_THAT(CudaDevice::Create(driver_.get(), 0, {}),
              StatusIs(absl::StatusCode::kInternal, HasSubstr(GetParam())));
  // TearDown checks that no stream or context retain is left.
}

INSTANTIATE_TEST_SUITE_P(EveryStep, CreateFaultTest,
                         ::testing::Values("cuDeviceGetAttribute",
                                           "cuStreamCreate"));

TEST_F(SimulatedCudaTest, CompletionThreadWithoutContextFailsCreate) {
  ASSERT_OK_AND_ASSIGN(driver_, LoadSimulatedDriver());
  ASSERT_NO_FATAL_FAILURE(BindSim(&sim_));
  sim_.inject("cuCtxSetCurrent", 1, CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_THAT(
      CudaDevice::Create(driver_.get(), 0, {}),
      StatusIs(absl::StatusCode::kInternal, HasSubstr("cuCtxSetCurrent")));
}

TEST_F(SimulatedCudaTest, CallsLeaveTheCallersContextStackAlone) {
  ASSERT_NO_FATAL_FAILURE(Open({}));
  // Without a context of its own on this thread, a driver call that needs
  // one fails; the device's calls push and pop theirs.
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(kMiB, "m"));
  CUcontext current = nullptr;
  EXPECT_EQ(driver_->api().ctx_pop_current(&current),
            CUDA_ERROR_INVALID_CONTEXT);
}

}  // namespace
}  // namespace warmstart
