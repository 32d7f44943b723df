// The CUDA backend on a REAL GPU through the real driver: the proof that the
// simulated tests (cuda_device_test.cc) cannot give. Each test skips with
// the reason when there is no driver or no GPU (CI). On a GPU machine:
//   bazel test //daemon/device:cuda_device_gpu_test
// (the Loader over it: daemon/loader/loader_gpu_test.cc).
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/device/cuda_device.h"
#include "daemon/device/cuda_driver.h"
#include "tests/doubles/pinned_buffer.h"
#include "tests/doubles/real_gpu.h"

namespace warmstart {
namespace {

using ::warmstart::testing::FillPattern;
using ::warmstart::testing::GpuPathName;
using ::warmstart::testing::PinnedBuffer;
using ::warmstart::testing::RealGpuPathsTest;

using ::testing::StartsWith;

constexpr uint64_t kMiB = uint64_t{1} << 20;

class CudaGpuTest : public RealGpuPathsTest {};

TEST_P(CudaGpuTest, AllocatesZeroedMemoryAndCopiesIntoIt) {
  EXPECT_THAT(device_->uuid(), StartsWith("GPU-"));
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(5 * kMiB + 3, "m"));
  EXPECT_EQ(allocation->size() % (2 * kMiB), 0u);
  EXPECT_GE(allocation->size(), 5 * kMiB + 3);
  EXPECT_EQ(allocation->host_data(), nullptr);
  EXPECT_EQ(static_cast<CudaAllocation&>(*allocation).vmm(), GetParam());
  std::string read_back(allocation->size(), 'x');
  ASSERT_OK(
      device_->CopyToHost(*allocation, 0, read_back.data(), read_back.size()));
  EXPECT_EQ(read_back, std::string(allocation->size(), '\0'));

  // 64 pieces of 64 KiB, landing at an odd offset, over both streams.
  constexpr uint64_t kPiece = 64 << 10;
  constexpr int kPieces = 64;
  constexpr uint64_t kOffset = 4097;
  PinnedBuffer source(device_.get(), kPieces * kPiece);
  FillPattern(source.data(), kPieces * kPiece, 1);
  std::vector<absl::Status> statuses(kPieces, absl::UnknownError("not run"));
  for (int i = 0; i < kPieces; ++i) {
    device_->CopyFromHost(*allocation, kOffset + i * kPiece,
                          source.data() + i * kPiece, kPiece,
                          [&statuses, i](absl::Status status) {
                            statuses[i] = std::move(status);
                          });
  }
  ASSERT_OK(device_->Synchronize());
  for (const absl::Status& status : statuses) EXPECT_OK(status);
  ASSERT_OK(
      device_->CopyToHost(*allocation, 0, read_back.data(), read_back.size()));
  EXPECT_EQ(
      std::memcmp(read_back.data() + kOffset, source.data(), kPieces * kPiece),
      0);
  EXPECT_EQ(read_back.substr(0, kOffset), std::string(kOffset, '\0'));
  EXPECT_EQ(read_back.back(), '\0');
}

TEST_P(CudaGpuTest, ExportsTheAllocation) {
  ASSERT_OK_AND_ASSIGN(auto allocation, device_->Allocate(2 * kMiB, "m"));
  PinnedBuffer source(device_.get(), kMiB);
  FillPattern(source.data(), kMiB, 2);
  absl::Status copied = absl::UnknownError("not run");
  device_->CopyFromHost(*allocation, 0, source.data(), kMiB,
                        [&copied](absl::Status status) { copied = status; });
  ASSERT_OK(device_->Synchronize());
  ASSERT_OK(copied);

  const ExportedMemory exported = allocation->Export();
  EXPECT_EQ(exported.size, allocation->size());
  if (!GetParam()) {
    EXPECT_EQ(exported.kind, ExportedMemory::Kind::kCudaIpcHandle);
    ASSERT_EQ(exported.ipc_handle.size(), 64u);
    EXPECT_NE(exported.ipc_handle, std::string(64, '\0'));
    return;
  }
  EXPECT_EQ(exported.kind, ExportedMemory::Kind::kCudaVmmFd);
  ASSERT_GE(exported.fd, 0);
  struct stat info;
  ASSERT_EQ(::fstat(exported.fd, &info), 0);

  // Import the descriptor as a client would (here in-process, which the
  // driver allows for POSIX descriptors) and read the bytes through it.
  const char* path = std::getenv("WARMSTART_LIBCUDA");
  void* library =
      ::dlopen(path != nullptr ? path : "libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(library, nullptr) << ::dlerror();
  auto get_proc = reinterpret_cast<PFN_cuGetProcAddress_v12000>(
      ::dlsym(library, "cuGetProcAddress_v2"));
  ::dlclose(library);
  ASSERT_NE(get_proc, nullptr);
  PFN_cuMemImportFromShareableHandle_v10020 import = nullptr;
  CUdriverProcAddressQueryResult found;
  ASSERT_EQ(get_proc("cuMemImportFromShareableHandle",
                     reinterpret_cast<void**>(&import), 12000,
                     CU_GET_PROC_ADDRESS_DEFAULT, &found),
            CUDA_SUCCESS);
  ASSERT_NE(import, nullptr);

  const CudaApi& api = driver_->api();
  CUdevice cu_device = 0;
  ASSERT_EQ(api.device_get(&cu_device, 0), CUDA_SUCCESS);
  CUcontext context = nullptr;
  ASSERT_EQ(api.device_primary_ctx_retain(&context, cu_device), CUDA_SUCCESS);
  ASSERT_EQ(api.ctx_push_current(context), CUDA_SUCCESS);
  CUmemGenericAllocationHandle handle = 0;
  ASSERT_EQ(import(&handle,
                   reinterpret_cast<void*>(static_cast<intptr_t>(exported.fd)),
                   CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
            CUDA_SUCCESS);
  CUdeviceptr pointer = 0;
  ASSERT_EQ(api.mem_address_reserve(&pointer, exported.size, 0, 0, 0),
            CUDA_SUCCESS);
  ASSERT_EQ(api.mem_map(pointer, exported.size, 0, handle, 0), CUDA_SUCCESS);
  CUmemAccessDesc access = {};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = cu_device;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READ;
  ASSERT_EQ(api.mem_set_access(pointer, exported.size, &access, 1),
            CUDA_SUCCESS);
  std::string imported(kMiB, 'x');
  EXPECT_EQ(api.memcpy_dtoh(imported.data(), pointer, kMiB), CUDA_SUCCESS);
  EXPECT_EQ(std::memcmp(imported.data(), source.data(), kMiB), 0);
  EXPECT_EQ(api.mem_unmap(pointer, exported.size), CUDA_SUCCESS);
  EXPECT_EQ(api.mem_address_free(pointer, exported.size), CUDA_SUCCESS);
  EXPECT_EQ(api.mem_release(handle), CUDA_SUCCESS);
  CUcontext popped = nullptr;
  EXPECT_EQ(api.ctx_pop_current(&popped), CUDA_SUCCESS);
  EXPECT_EQ(api.device_primary_ctx_release(cu_device), CUDA_SUCCESS);
}

INSTANTIATE_TEST_SUITE_P(AllocationPaths, CudaGpuTest, ::testing::Bool(),
                         GpuPathName);

}  // namespace
}  // namespace warmstart
