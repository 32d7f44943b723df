// The client's CUDA import on a REAL GPU through the real driver: the proof
// that the simulated tests (cuda_import_test, //tests:daemon_protocol_test)
// cannot give. Each test skips with the reason when there is no driver, no
// GPU or (for the daemon test) no warmstartd binary. On a GPU machine:
//   bazel test //client:cuda_import_gpu_test
// or out/gpu-bundle/run.sh (tools/gpu-check), which sets $WARMSTART_DAEMON
// to the bundle's warmstartd.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/cuda_import.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/doubles/subprocess.h"

namespace warmstart {
namespace client {
namespace {

using ::warmstart::testing::ChildProcess;
using ::warmstart::testing::FillPattern;
using ::warmstart::testing::ShortTempDir;

// Set in the exporting child process that the legacy IPC test starts.
constexpr char kExporterVariable[] = "WARMSTART_GPU_TEST_EXPORTER";
constexpr uint64_t kExportBytes = uint64_t{2} << 20;

// The driver entry points the tests call themselves, from the library the
// client loads (the same path, so the same instance).
struct Driver {
  PFN_cuDeviceGetCount_v2000 device_get_count = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDeviceGetUuid_v11040 device_get_uuid = nullptr;
  PFN_cuDevicePrimaryCtxRetain_v7000 primary_ctx_retain = nullptr;
  PFN_cuDevicePrimaryCtxRelease_v11000 primary_ctx_release = nullptr;
  PFN_cuCtxPushCurrent_v4000 ctx_push = nullptr;
  PFN_cuCtxPopCurrent_v4000 ctx_pop = nullptr;
  PFN_cuMemAlloc_v3020 mem_alloc = nullptr;
  PFN_cuMemcpyHtoD_v3020 memcpy_htod = nullptr;
  PFN_cuMemcpyDtoH_v3020 memcpy_dtoh = nullptr;
  PFN_cuIpcGetMemHandle_v4010 ipc_get_mem_handle = nullptr;

  // Empty when a GPU can be used; else why not.
  std::string Load() {
    const char* path = std::getenv("WARMSTART_LIBCUDA");
    if (path == nullptr) path = "libcuda.so.1";
    void* library = ::dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) return std::string("no CUDA driver: ") + dlerror();
    auto init = reinterpret_cast<PFN_cuInit_v2000>(::dlsym(library, "cuInit"));
    auto get_proc = reinterpret_cast<PFN_cuGetProcAddress_v12000>(
        ::dlsym(library, "cuGetProcAddress_v2"));
    if (init == nullptr || get_proc == nullptr) return "driver older than 12";
    if (CUresult rc = init(0); rc != CUDA_SUCCESS) {
      return "cuInit failed: " + std::to_string(rc);
    }
    const std::pair<const char*, void**> entries[] = {
        {"cuDeviceGetCount", reinterpret_cast<void**>(&device_get_count)},
        {"cuDeviceGet", reinterpret_cast<void**>(&device_get)},
        {"cuDeviceGetUuid", reinterpret_cast<void**>(&device_get_uuid)},
        {"cuDevicePrimaryCtxRetain",
         reinterpret_cast<void**>(&primary_ctx_retain)},
        {"cuDevicePrimaryCtxRelease",
         reinterpret_cast<void**>(&primary_ctx_release)},
        {"cuCtxPushCurrent", reinterpret_cast<void**>(&ctx_push)},
        {"cuCtxPopCurrent", reinterpret_cast<void**>(&ctx_pop)},
        {"cuMemAlloc", reinterpret_cast<void**>(&mem_alloc)},
        {"cuMemcpyHtoD", reinterpret_cast<void**>(&memcpy_htod)},
        {"cuMemcpyDtoH", reinterpret_cast<void**>(&memcpy_dtoh)},
        {"cuIpcGetMemHandle", reinterpret_cast<void**>(&ipc_get_mem_handle)},
    };
    for (const auto& [symbol, fn] : entries) {
      if (get_proc(symbol, fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, nullptr) !=
              CUDA_SUCCESS ||
          *fn == nullptr) {
        return std::string("driver lacks ") + symbol;
      }
    }
    int count = 0;
    if (device_get_count(&count) != CUDA_SUCCESS || count == 0) {
      return "CUDA driver present but no GPU";
    }
    return "";
  }

  // The UUID of GPU `ordinal`, formatted as the daemon does; empty when
  // there is no such GPU.
  std::string Uuid(int ordinal) const {
    CUdevice device = 0;
    CUuuid bytes;
    if (device_get(&device, ordinal) != CUDA_SUCCESS ||
        device_get_uuid(&bytes, device) != CUDA_SUCCESS) {
      return "";
    }
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.bytes);
    char text[64];
    std::snprintf(text, sizeof(text),
                  "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%"
                  "02x%02x%02x%02x",
                  b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
                  b[10], b[11], b[12], b[13], b[14], b[15]);
    return text;
  }

  // The ordinal of the GPU named `uuid`; -1 when this process sees none.
  int Ordinal(const std::string& uuid) const {
    int count = 0;
    device_get_count(&count);
    for (int i = 0; i < count; ++i) {
      if (Uuid(i) == uuid) return i;
    }
    return -1;
  }

  // Copies `bytes` from device memory on GPU `ordinal` to the host, in that
  // GPU's primary context (the one the import used).
  std::string CopyToHost(int ordinal, uint64_t pointer, uint64_t bytes) const {
    CUdevice device = 0;
    CUcontext context = nullptr;
    std::string host(bytes, '\0');
    EXPECT_EQ(device_get(&device, ordinal), CUDA_SUCCESS);
    EXPECT_EQ(primary_ctx_retain(&context, device), CUDA_SUCCESS);
    EXPECT_EQ(ctx_push(context), CUDA_SUCCESS);
    EXPECT_EQ(memcpy_dtoh(host.data(), pointer, bytes), CUDA_SUCCESS);
    ctx_pop(&context);
    primary_ctx_release(device);
    return host;
  }
};

TEST(CudaImportGpuTest, MapsAModelThatWarmstartdLoadedOntoTheGpu) {
  Driver driver;
  if (std::string why = driver.Load(); !why.empty()) GTEST_SKIP() << why;
  const char* daemon_override = std::getenv("WARMSTART_DAEMON");
  const std::string daemon = daemon_override != nullptr
                                 ? daemon_override
                                 : testing::BinaryPath("daemon/warmstartd");
  if (!std::filesystem::exists(daemon)) {
    GTEST_SKIP() << "no warmstartd at " << daemon << " (set $WARMSTART_DAEMON)";
  }
  ShortTempDir dir;
  const std::string root = dir.Join("models");
  std::filesystem::create_directory(root);
  std::filesystem::copy_file(
      testing::FixturePath("gguf/ollama-llama-2-tiny-random.gguf"),
      root + "/tiny.gguf");
  const nlohmann::json facts = nlohmann::json::parse(testing::ReadFileOrDie(
      testing::FixturePath("gguf/ollama-llama-2-tiny-random.json")));
  const std::string socket = dir.Join("d.sock");
  ChildProcess warmstartd(
      {daemon, "--socket", socket, "--backend", "cuda", "--model_root", root,
       "--preload", "tiny=" + root + "/tiny.gguf"},
      dir.path());

  ConnectOptions options;
  options.socket_path = socket;
  options.timeout = absl::Seconds(30);
  options.wait_for_daemon = true;
  ASSERT_OK_AND_ASSIGN(auto client, Client::Connect(options));
  // SERVING once the preload is on the GPU (before that, the model may not
  // even be listed).
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!client->IsServing(absl::Seconds(5)).value_or(false)) {
    ASSERT_LT(absl::Now(), deadline) << warmstartd.Stderr();
    absl::SleepFor(absl::Milliseconds(50));
  }
  auto acquired = client->Acquire("tiny", absl::Seconds(60));
  ASSERT_OK(acquired.status()) << warmstartd.Stderr();
  ModelMapping& mapping = *acquired;
  ASSERT_EQ(mapping.tensors().size(), facts.at("tensors").size());
  const std::string gpu = mapping.tensors().front().device_uuid;
  const int ordinal = driver.Ordinal(gpu);
  ASSERT_GE(ordinal, 0) << gpu;
  std::cout << "model on " << gpu << " (ordinal " << ordinal
            << "), device access "
            << (mapping.tensors().front().read_only ? "read-only"
                                                    : "read-write")
            << "\n";
  RecordProperty("device_access", mapping.tensors().front().read_only
                                      ? "read-only"
                                      : "read-write");
  for (const nlohmann::json& expected : facts.at("tensors")) {
    const std::string name = expected.at("name").get<std::string>();
    const TensorView* tensor = mapping.Find(name, gpu);
    ASSERT_NE(tensor, nullptr) << name;
    ASSERT_NE(tensor->data, nullptr) << name;
    const std::string bytes = driver.CopyToHost(
        ordinal, reinterpret_cast<uintptr_t>(tensor->data), tensor->nbytes);
    EXPECT_EQ(testing::Sha256Hex(bytes),
              expected.at("sha256").get<std::string>())
        << name;
  }
  ASSERT_OK(mapping.Release());
  EXPECT_EQ(warmstartd.Stop(SIGTERM, 30000), 0) << warmstartd.Stderr();
}

// Run only as the child of the next test (with kExporterVariable set):
// exports kExportBytes of pattern with a legacy IPC handle, prints
// "EXPORTED <uuid> <hex handle>" and keeps the memory until killed.
TEST(CudaIpcExporter, ExportsUntilKilled) {
  const char* uuid = std::getenv(kExporterVariable);
  if (uuid == nullptr) GTEST_SKIP() << "the legacy IPC test runs this";
  Driver driver;
  ASSERT_EQ(driver.Load(), "");
  const int ordinal = driver.Ordinal(uuid);
  ASSERT_GE(ordinal, 0);
  CUdevice device = 0;
  CUcontext context = nullptr;
  CUdeviceptr pointer = 0;
  CUipcMemHandle handle;
  std::string pattern(kExportBytes, '\0');
  FillPattern(pattern.data(), pattern.size(), 5);
  ASSERT_EQ(driver.device_get(&device, ordinal), CUDA_SUCCESS);
  ASSERT_EQ(driver.primary_ctx_retain(&context, device), CUDA_SUCCESS);
  ASSERT_EQ(driver.ctx_push(context), CUDA_SUCCESS);
  ASSERT_EQ(driver.mem_alloc(&pointer, kExportBytes), CUDA_SUCCESS);
  ASSERT_EQ(driver.memcpy_htod(pointer, pattern.data(), kExportBytes),
            CUDA_SUCCESS);
  ASSERT_EQ(driver.ipc_get_mem_handle(&handle, pointer), CUDA_SUCCESS);
  std::printf("EXPORTED %s %s\n", uuid,
              absl::BytesToHexString(
                  absl::string_view(handle.reserved, sizeof(handle.reserved)))
                  .c_str());
  std::fflush(stdout);
  absl::SleepFor(absl::Seconds(120));
}

TEST(CudaImportGpuTest, OpensALegacyIpcHandleOfAnotherProcess) {
  Driver driver;
  if (std::string why = driver.Load(); !why.empty()) GTEST_SKIP() << why;
  // The first GPU, named as the daemon would name it. The exporter is
  // another process: the driver refuses a handle in its exporting process.
  const std::string gpu = driver.Uuid(0);
  ASSERT_FALSE(gpu.empty());
  ShortTempDir dir;
  ::setenv(kExporterVariable, gpu.c_str(), 1);
  ChildProcess exporter(
      {"/proc/self/exe", "--gtest_filter=CudaIpcExporter.ExportsUntilKilled"},
      dir.path());
  ::unsetenv(kExporterVariable);
  std::string handle;
  for (int i = 0; i < 300 && handle.empty(); ++i) {
    std::ifstream out(dir.Join("child-stdout"));
    for (std::string line; std::getline(out, line);) {
      std::vector<std::string> words = absl::StrSplit(line, ' ');
      if (words.size() == 3 && words[0] == "EXPORTED") {
        handle = absl::HexStringToBytes(words[2]);
      }
    }
    if (handle.empty()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(handle.size(), 64u) << exporter.Stderr();

  ASSERT_OK_AND_ASSIGN(
      internal::CudaImport import,
      internal::CudaImport::OpenIpcHandle(gpu, kExportBytes, handle));
  EXPECT_FALSE(import.read_only());
  std::string pattern(kExportBytes, '\0');
  FillPattern(pattern.data(), pattern.size(), 5);
  EXPECT_EQ(driver.CopyToHost(import.device_ordinal(), import.device_pointer(),
                              kExportBytes),
            pattern);
  ASSERT_OK(import.Release());
  exporter.Stop(SIGKILL, 5000);
}

}  // namespace
}  // namespace client
}  // namespace warmstart
