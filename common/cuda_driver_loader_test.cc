#include "common/cuda_driver_loader.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

TEST(FormatGpuUuidTest, WritesTheNvidiaSmiForm) {
  CUuuid uuid;
  const unsigned char bytes[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
                                   0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                                   0xcc, 0xdd, 0xee, 0xff};
  std::memcpy(uuid.bytes, bytes, sizeof(bytes));
  EXPECT_EQ(FormatGpuUuid(uuid), "GPU-00112233-4455-6677-8899-aabbccddeeff");
}

// A driver's cuGetProcAddress that knows every symbol but `missing`.
const char* g_missing = "";
int g_resolved_value = 0;
CUresult FakeGetProc(const char* symbol, void** fn, int, cuuint64_t,
                     CUdriverProcAddressQueryResult* found) {
  if (std::strcmp(symbol, g_missing) == 0) {
    *fn = nullptr;
    *found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
  }
  *fn = &g_resolved_value;
  *found = CU_GET_PROC_ADDRESS_SUCCESS;
  return CUDA_SUCCESS;
}

TEST(ResolveCudaEntryPointsTest, ResolvesAGroupOrNoneOfIt) {
  void* a = nullptr;
  void* b = nullptr;
  g_missing = "";
  EXPECT_EQ(ResolveCudaEntryPoints(
                FakeGetProc, {CudaEntry("cuA", &a), CudaEntry("cuB", &b)}),
            nullptr);
  EXPECT_EQ(a, &g_resolved_value);
  EXPECT_EQ(b, &g_resolved_value);

  g_missing = "cuB";
  EXPECT_STREQ(ResolveCudaEntryPoints(
                   FakeGetProc, {CudaEntry("cuA", &a), CudaEntry("cuB", &b)}),
               "cuB");
  EXPECT_EQ(a, nullptr);
  EXPECT_EQ(b, nullptr);
}

CUresult FakeErrorName(CUresult, const char** name) {
  *name = "CUDA_ERROR_OUT_OF_MEMORY";
  return CUDA_SUCCESS;
}
CUresult FakeErrorString(CUresult, const char** text) {
  *text = "out of memory";
  return CUDA_SUCCESS;
}

TEST(CudaErrorMessageTest, NamesTheCallTheErrorAndItsCode) {
  EXPECT_EQ(CudaErrorMessage(FakeErrorName, FakeErrorString,
                             CUDA_ERROR_OUT_OF_MEMORY, "cuMemCreate"),
            "cuMemCreate failed: CUDA_ERROR_OUT_OF_MEMORY: out of memory (2)");
  EXPECT_EQ(CudaErrorMessage(nullptr, nullptr, CUDA_ERROR_OUT_OF_MEMORY,
                             "cuMemCreate"),
            "cuMemCreate failed: CUDA error: unknown (2)");
}

TEST(CudaResultToStatusTest, EachResultHasItsCodeAndTheNoGpuCodeIsTheCallers) {
  EXPECT_OK(CudaResultToStatus(FakeErrorName, FakeErrorString, CUDA_SUCCESS,
                               "cuInit", absl::StatusCode::kUnavailable));
  const std::vector<std::pair<CUresult, absl::StatusCode>> cases = {
      {CUDA_ERROR_OUT_OF_MEMORY, absl::StatusCode::kResourceExhausted},
      {CUDA_ERROR_INVALID_VALUE, absl::StatusCode::kInvalidArgument},
      {CUDA_ERROR_NOT_SUPPORTED, absl::StatusCode::kUnimplemented},
      {CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
       absl::StatusCode::kAlreadyExists},
      {CUDA_ERROR_NO_DEVICE, absl::StatusCode::kAborted},
      {CUDA_ERROR_NOT_INITIALIZED, absl::StatusCode::kAborted},
      {CUDA_ERROR_DEINITIALIZED, absl::StatusCode::kAborted},
      {CUDA_ERROR_DEVICE_UNAVAILABLE, absl::StatusCode::kAborted},
      {CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, absl::StatusCode::kAborted},
      {CUDA_ERROR_ILLEGAL_ADDRESS, absl::StatusCode::kInternal},
  };
  for (const auto& [result, code] : cases) {
    const absl::Status status =
        CudaResultToStatus(nullptr, nullptr, result, "cuCall",
                           /*no_gpu_code=*/absl::StatusCode::kAborted);
    EXPECT_EQ(status.code(), code) << result;
    EXPECT_EQ(
        status.message(),
        absl::StrCat("cuCall failed: CUDA error: unknown (", result, ")"));
  }
}

TEST(OpenCudaDriverTest, AMissingLibraryIsAClearStatus) {
  ::setenv("WARMSTART_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
  auto library = OpenCudaDriver();
  ::unsetenv("WARMSTART_LIBCUDA");
  EXPECT_THAT(library,
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("cannot load /nonexistent/libcuda.so.1")));
}

}  // namespace
}  // namespace warmstart
