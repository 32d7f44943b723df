// The client's CUDA import against the SIMULATED driver (libcuda_sim.so,
// see tests/doubles/cuda_sim.h): it proves the logic (device
// lookup by UUID, contexts, access flags, release order, error paths), not
// a GPU; cuda_import_gpu_test is the proof on hardware. In the simulation a
// device pointer is a host address, so these tests read "GPU memory"
// directly.
#include "client/cuda_import.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <type_traits>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/doubles/cuda_sim.h"
#include "tests/doubles/subprocess.h"

namespace warmstart {
namespace client {
namespace internal {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::warmstart::testing::BinaryPath;
using ::warmstart::testing::FillPattern;

// The simulated GPU's UUID bytes are "ws-simulated-gpu".
constexpr char kSimUuid[] = "GPU-77732d73-696d-756c-6174-65642d677075";
constexpr char kOtherUuid[] = "GPU-00000000-1111-2222-3333-444444444444";
constexpr uint64_t kMiB = uint64_t{1} << 20;

int OpenFds() {
  int count = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++count;
  }
  return count;
}

// The simulation's test controls and the entry points the exporting child
// calls, from the same library instance the importer loaded.
struct Sim {
  decltype(&warmstart_sim_inject) inject = nullptr;
  decltype(&warmstart_sim_live_allocations) live_allocations = nullptr;
  decltype(&warmstart_sim_live_address_ranges) live_address_ranges = nullptr;
  decltype(&warmstart_sim_live_ipc_mappings) live_ipc_mappings = nullptr;
  decltype(&warmstart_sim_context_retains) context_retains = nullptr;
  PFN_cuGetProcAddress_v12000 get_proc = nullptr;

  template <typename Fn>
  Fn Entry(const char* name) const {
    void* fn = nullptr;
    get_proc(name, &fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, nullptr);
    return reinterpret_cast<Fn>(fn);
  }
};

// What the simulation and this process hold; equal before and after an
// import that was released (or failed).
struct Held {
  int allocations, address_ranges, ipc_mappings, context_retains, fds;
  bool operator==(const Held& o) const {
    return allocations == o.allocations && address_ranges == o.address_ranges &&
           ipc_mappings == o.ipc_mappings &&
           context_retains == o.context_retains && fds == o.fds;
  }
};

std::ostream& operator<<(std::ostream& os, const Held& h) {
  return os << "{allocations " << h.allocations << ", address ranges "
            << h.address_ranges << ", ipc mappings " << h.ipc_mappings
            << ", context retains " << h.context_retains << ", fds " << h.fds
            << "}";
}

class CudaImportTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = BinaryPath("tests/doubles/libcuda_sim.so");
    ::setenv("WARMSTART_LIBCUDA", path.c_str(), 1);
    // Loads the driver once for the process (its cuInit clears injected
    // errors, so it must come before any injection).
    ASSERT_THAT(CudaImport::ImportVmmFd(kOtherUuid, kMiB, -1).status(),
                StatusIs(absl::StatusCode::kNotFound));
    void* library = ::dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(library, nullptr) << "the importer did not load " << path;
    auto bind = [library](const char* name, auto* fn) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(
          ::dlsym(library, name));
      ASSERT_NE(*fn, nullptr) << name;
    };
    bind("warmstart_sim_inject", &sim_.inject);
    bind("warmstart_sim_live_allocations", &sim_.live_allocations);
    bind("warmstart_sim_live_address_ranges", &sim_.live_address_ranges);
    bind("warmstart_sim_live_ipc_mappings", &sim_.live_ipc_mappings);
    bind("warmstart_sim_context_retains", &sim_.context_retains);
    bind("cuGetProcAddress_v2", &sim_.get_proc);
  }

  Held Now() const {
    return {sim_.live_allocations(), sim_.live_address_ranges(),
            sim_.live_ipc_mappings(), sim_.context_retains(), OpenFds()};
  }

  // A memfd of `size` pattern bytes: in the simulation an exported VMM
  // descriptor is exactly that.
  static int PatternMemfd(uint64_t size, std::string* pattern) {
    pattern->assign(size, '\0');
    FillPattern(pattern->data(), size, 7);
    const int fd = ::memfd_create("exported", MFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pwrite(fd, pattern->data(), size, 0),
              static_cast<ssize_t>(size));
    return fd;
  }

  static Sim sim_;
};

Sim CudaImportTest::sim_;

TEST_F(CudaImportTest, VmmImportIsReadOnlyAndReleasesEverything) {
  const Held before = Now();
  std::string pattern;
  const int fd = PatternMemfd(2 * kMiB, &pattern);
  // Less than the descriptor holds: rounded up to the granularity (2 MiB).
  ASSERT_OK_AND_ASSIGN(CudaImport import,
                       CudaImport::ImportVmmFd(kSimUuid, 2 * kMiB - 100, fd));
  // The import keeps the memory without the descriptor.
  ::close(fd);
  EXPECT_EQ(import.kind(), CudaImport::Kind::kVmm);
  EXPECT_EQ(import.device_uuid(), kSimUuid);
  EXPECT_EQ(import.device_ordinal(), 0);
  EXPECT_EQ(import.mapped_size(), 2 * kMiB);
  ASSERT_NE(import.device_pointer(), 0u);
  // The simulated driver grants CU_MEM_ACCESS_FLAGS_PROT_READ.
  EXPECT_TRUE(import.read_only());
  EXPECT_EQ(std::memcmp(reinterpret_cast<const void*>(import.device_pointer()),
                        pattern.data(), pattern.size()),
            0);
  const Held during = Now();
  EXPECT_EQ(during.allocations, before.allocations + 1);  // The import.
  EXPECT_EQ(during.address_ranges, before.address_ranges + 2);
  EXPECT_EQ(during.context_retains, before.context_retains + 1);

  // Moving hands the whole import over.
  CudaImport moved = std::move(import);
  EXPECT_EQ(import.kind(), CudaImport::Kind::kNone);  // NOLINT: moved from.
  EXPECT_OK(import.Release());
  EXPECT_EQ(Now(), during);
  ASSERT_OK(moved.Release());
  EXPECT_EQ(moved.device_pointer(), 0u);
  EXPECT_OK(moved.Release());  // Idempotent.
  EXPECT_EQ(Now(), before);
}

TEST_F(CudaImportTest, FallsBackToReadWriteWhenReadOnlyIsRefused) {
  const Held before = Now();
  std::string pattern;
  const int fd = PatternMemfd(2 * kMiB, &pattern);
  sim_.inject("cuMemSetAccess", 1, CUDA_ERROR_NOT_SUPPORTED);
  {
    ASSERT_OK_AND_ASSIGN(CudaImport import,
                         CudaImport::ImportVmmFd(kSimUuid, 2 * kMiB, fd));
    EXPECT_FALSE(import.read_only());
    EXPECT_EQ(
        std::memcmp(reinterpret_cast<const void*>(import.device_pointer()),
                    pattern.data(), pattern.size()),
        0);
  }
  // Refused both ways: an error naming both, and nothing left behind.
  sim_.inject("cuMemSetAccess", 1, CUDA_ERROR_NOT_SUPPORTED);
  sim_.inject("cuMemSetAccess", 2, CUDA_ERROR_INVALID_VALUE);
  EXPECT_THAT(CudaImport::ImportVmmFd(kSimUuid, 2 * kMiB, fd),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("cuMemSetAccess(PROT_READ) failed"),
                             HasSubstr("cuMemSetAccess(PROT_READWRITE)"))));
  ::close(fd);
  EXPECT_EQ(Now(), before);
}

TEST_F(CudaImportTest, AGpuThisProcessCannotSeeIsNotFound) {
  const Held before = Now();
  EXPECT_THAT(CudaImport::ImportVmmFd(kOtherUuid, kMiB, 0),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr(std::string("GPU ") + kOtherUuid +
                                       " is not visible to this process"),
                             HasSubstr(kSimUuid))));
  EXPECT_THAT(CudaImport::OpenIpcHandle(kOtherUuid, kMiB, std::string(64, 'x')),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(kOtherUuid)));
  EXPECT_EQ(Now(), before);
}

TEST_F(CudaImportTest, EveryFailedStepReleasesWhatItTook) {
  std::string pattern;
  const int fd = PatternMemfd(2 * kMiB, &pattern);
  const Held before = Now();
  for (const char* call :
       {"cuDevicePrimaryCtxRetain", "cuCtxPushCurrent",
        "cuMemGetAllocationGranularity", "cuMemImportFromShareableHandle",
        "cuMemAddressReserve", "cuMemMap"}) {
    sim_.inject(call, 1, CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_THAT(CudaImport::ImportVmmFd(kSimUuid, 2 * kMiB, fd),
                StatusIs(absl::StatusCode::kResourceExhausted,
                         AllOf(HasSubstr(kSimUuid),
                               HasSubstr(std::string(call) + " failed"))));
    EXPECT_EQ(Now(), before) << call;
  }
  // A failed release still releases the rest, and says so.
  ASSERT_OK_AND_ASSIGN(CudaImport import,
                       CudaImport::ImportVmmFd(kSimUuid, 2 * kMiB, fd));
  sim_.inject("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN);
  EXPECT_THAT(import.Release(), StatusIs(absl::StatusCode::kInternal,
                                         HasSubstr("cuMemUnmap failed")));
  ::close(fd);
  EXPECT_EQ(sim_.context_retains(), before.context_retains);
  EXPECT_THAT(CudaImport::ImportVmmFd(kSimUuid, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// A child process that exports `size` pattern bytes with cuMemAlloc and
// cuIpcGetMemHandle, sends the handle and keeps the memory until told to
// exit (its pipe closes).
class IpcExporter {
 public:
  IpcExporter(const Sim& sim, uint64_t size, std::string* pattern) {
    pattern->assign(size, '\0');
    FillPattern(pattern->data(), size, 11);
    int to_parent[2], to_child[2];
    EXPECT_EQ(::pipe2(to_parent, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(to_child, O_CLOEXEC), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(to_parent[0]);
      ::close(to_child[1]);
      auto retain = sim.Entry<PFN_cuDevicePrimaryCtxRetain_v7000>(
          "cuDevicePrimaryCtxRetain");
      auto push = sim.Entry<PFN_cuCtxPushCurrent_v4000>("cuCtxPushCurrent");
      auto alloc = sim.Entry<PFN_cuMemAlloc_v3020>("cuMemAlloc");
      auto get_handle =
          sim.Entry<PFN_cuIpcGetMemHandle_v4010>("cuIpcGetMemHandle");
      CUcontext context = nullptr;
      CUdeviceptr pointer = 0;
      CUipcMemHandle handle;
      if (retain(&context, 0) != CUDA_SUCCESS ||
          push(context) != CUDA_SUCCESS ||
          alloc(&pointer, size) != CUDA_SUCCESS) {
        ::_exit(1);
      }
      std::memcpy(reinterpret_cast<void*>(pointer), pattern->data(), size);
      if (get_handle(&handle, pointer) != CUDA_SUCCESS ||
          ::write(to_parent[1], handle.reserved, sizeof(handle.reserved)) !=
              static_cast<ssize_t>(sizeof(handle.reserved))) {
        ::_exit(2);
      }
      char byte;
      while (::read(to_child[0], &byte, 1) > 0) {
      }
      ::_exit(0);
    }
    ::close(to_parent[1]);
    ::close(to_child[0]);
    release_ = to_child[1];
    handle_.resize(CU_IPC_HANDLE_SIZE);
    EXPECT_EQ(::read(to_parent[0], handle_.data(), handle_.size()),
              static_cast<ssize_t>(handle_.size()));
    ::close(to_parent[0]);
  }

  ~IpcExporter() { Exit(); }

  const std::string& handle() const { return handle_; }

  // Frees the memory (the child exits) and reaps the child.
  void Exit() {
    if (pid_ <= 0) return;
    ::close(release_);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int release_ = -1;
  std::string handle_;
};

TEST_F(CudaImportTest, LegacyIpcHandleOpensReadWriteAndCountsOpens) {
  const Held before = Now();
  std::string pattern;
  IpcExporter exporter(sim_, 3 * kMiB, &pattern);
  ASSERT_OK_AND_ASSIGN(
      CudaImport first,
      CudaImport::OpenIpcHandle(kSimUuid, 3 * kMiB, exporter.handle()));
  EXPECT_EQ(first.kind(), CudaImport::Kind::kLegacyIpc);
  EXPECT_EQ(first.mapped_size(), 3 * kMiB);
  // cuIpcOpenMemHandle has no read-only mode.
  EXPECT_FALSE(first.read_only());
  const auto* data = reinterpret_cast<const char*>(first.device_pointer());
  ASSERT_NE(data, nullptr);
  EXPECT_EQ(std::memcmp(data, pattern.data(), pattern.size()), 0);
  // Opened again (a second mapping of the same model): the same pointer,
  // one mapping, counted by the driver.
  ASSERT_OK_AND_ASSIGN(
      CudaImport second,
      CudaImport::OpenIpcHandle(kSimUuid, 3 * kMiB, exporter.handle()));
  EXPECT_EQ(second.device_pointer(), first.device_pointer());
  EXPECT_EQ(sim_.live_ipc_mappings(), before.ipc_mappings + 1);
  EXPECT_EQ(sim_.context_retains(), before.context_retains + 2);
  ASSERT_OK(first.Release());
  EXPECT_EQ(std::memcmp(data, pattern.data(), pattern.size()), 0);
  ASSERT_OK(second.Release());
  Held with_exporter = before;
  ++with_exporter.fds;  // Its pipe.
  EXPECT_EQ(Now(), with_exporter);

  // Once the exporter is gone its handle opens nothing, and leaks nothing.
  const std::string handle = exporter.handle();
  exporter.Exit();
  EXPECT_THAT(CudaImport::OpenIpcHandle(kSimUuid, 3 * kMiB, handle),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr("cuIpcOpenMemHandle failed")));
  EXPECT_THAT(CudaImport::OpenIpcHandle(kSimUuid, 3 * kMiB, "short"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the handle has 5 bytes, not 64")));
  EXPECT_EQ(Now(), before);
}

}  // namespace
}  // namespace internal
}  // namespace client
}  // namespace warmstart
