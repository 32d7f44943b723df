// libcuda_sim.so: a SIMULATED CUDA driver on host memory, for tests only.
// See cuda_sim.h for what it models and how tests control it.
//
// The entry points below are defined with the names and signatures cuda.h
// declares (cuda.h maps e.g. cuMemAlloc to cuMemAlloc_v2), so the compiler
// checks every signature against the real API; cuGetProcAddress hands them
// out by their base names.
#include "tests/doubles/cuda_sim.h"

#include <cuda.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

// The simulation's own versions of the driver's opaque types.
struct CUctx_st {
  int unused;
};

struct CUstream_st {
  absl::Mutex mutex;
  std::deque<std::function<void()>> work ABSL_GUARDED_BY(mutex);
  uint64_t submitted ABSL_GUARDED_BY(mutex) = 0;
  uint64_t finished ABSL_GUARDED_BY(mutex) = 0;
  bool stopping ABSL_GUARDED_BY(mutex) = false;
  std::thread worker;
};

struct SimEventState {
  absl::Mutex mutex;
  uint64_t recorded ABSL_GUARDED_BY(mutex) = 0;
  uint64_t completed ABSL_GUARDED_BY(mutex) = 0;
};

struct CUevent_st {
  // Shared with the stream operations that complete it, which may outlive
  // the event (cuEventDestroy does not wait for them).
  std::shared_ptr<SimEventState> state = std::make_shared<SimEventState>();
};

namespace {

constexpr char kDeviceName[] = "warmstart simulated GPU (not a real device)";
constexpr char kUuid[16] = {'w', 's', '-', 's', 'i', 'm', 'u', 'l',
                            'a', 't', 'e', 'd', '-', 'g', 'p', 'u'};
constexpr size_t kGranularity = size_t{2} << 20;
constexpr int kMaxSimulatedDevices = 8;
constexpr unsigned char kPoison = 0xA5;
// How every simulated IPC handle starts.
constexpr char kIpcHandlePrefix[] = "simulated IPC handle ";

struct Physical {
  int memfd = -1;
  size_t size = 0;
  bool exportable = false;
  bool imported = false;  // Shares another allocation's memory.
  int mappings = 0;
  bool released = false;
};

// A cuMemAlloc'd block. Backed by a memfd so that another process can
// open it through its IPC handle (cuIpcOpenMemHandle).
struct Linear {
  size_t size = 0;
  int memfd = -1;
  // Names the memfd, so that an importer can tell this block from a later
  // one that reuses its descriptor number.
  uint64_t serial = 0;
};

// Another process's block, opened here with cuIpcOpenMemHandle.
struct IpcMapping {
  size_t size = 0;
  // The handle's text: opening it again finds this mapping.
  std::string handle;
  int opens = 0;
};

struct MappedRange {
  size_t size = 0;
  CUmemGenericAllocationHandle handle = 0;
  int prot = PROT_NONE;
};

struct Fault {
  std::string call;
  int nth = 0;
  CUresult code = CUDA_SUCCESS;
};

struct Simulation {
  absl::Mutex mutex;
  // Options (cuInit).
  bool vmm ABSL_GUARDED_BY(mutex) = true;
  bool posix_fd ABSL_GUARDED_BY(mutex) = true;
  int devices ABSL_GUARDED_BY(mutex) = 1;
  size_t total_memory ABSL_GUARDED_BY(mutex) = size_t{1} << 30;
  absl::Duration copy_delay ABSL_GUARDED_BY(mutex);
  std::set<std::string> missing ABSL_GUARDED_BY(mutex);
  // Injected errors and the calls counted since they were injected.
  std::vector<Fault> faults ABSL_GUARDED_BY(mutex);
  std::map<std::string, int> calls ABSL_GUARDED_BY(mutex);
  bool paused ABSL_GUARDED_BY(mutex) = false;
  // Objects.
  int context_retains ABSL_GUARDED_BY(mutex) = 0;
  size_t used_memory ABSL_GUARDED_BY(mutex) = 0;
  // Used by other processes (WARMSTART_SIM_OTHERS_MEMORY_BYTES): neither
  // allocatable nor free.
  size_t others_memory ABSL_GUARDED_BY(mutex) = 0;
  std::map<uintptr_t, Linear> linear ABSL_GUARDED_BY(mutex);
  uint64_t next_serial ABSL_GUARDED_BY(mutex) = 1;
  std::map<uintptr_t, IpcMapping> ipc_mappings ABSL_GUARDED_BY(mutex);
  std::map<CUmemGenericAllocationHandle, Physical> physical
      ABSL_GUARDED_BY(mutex);
  CUmemGenericAllocationHandle next_handle ABSL_GUARDED_BY(mutex) = 1;
  std::map<uintptr_t, size_t> reservations ABSL_GUARDED_BY(mutex);
  std::map<uintptr_t, MappedRange> mappings ABSL_GUARDED_BY(mutex);
  std::map<uintptr_t, size_t> host_regions ABSL_GUARDED_BY(mutex);
  std::set<CUstream> streams ABSL_GUARDED_BY(mutex);
  std::set<CUevent> events ABSL_GUARDED_BY(mutex);
  int pageable_copies ABSL_GUARDED_BY(mutex) = 0;
  std::atomic<int> outstanding_copies{0};
};

// Never destroyed: stream workers may still run while the process exits.
// The library is linked with -z nodelete, so dlclose never unmaps it either.
Simulation& Sim() {
  static Simulation* const sim = new Simulation;
  return *sim;
}

CUctx_st g_primary_context;

// CUDA_SUCCESS for a device ordinal the simulation has.
CUresult CheckDevice(CUdevice device) {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return device >= 0 && device < sim.devices ? CUDA_SUCCESS
                                             : CUDA_ERROR_INVALID_DEVICE;
}
thread_local std::vector<CUcontext> t_context_stack;

// The injected error for this call of `call`, or CUDA_SUCCESS. The waits
// (cuStreamSynchronize, cuEventSynchronize) return theirs after waiting: a
// real asynchronous error is reported once the failed work has stopped, so
// the caller may then reuse the memory it involved.
CUresult Injected(const char* call) {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  const int count = ++sim.calls[call];
  for (auto it = sim.faults.begin(); it != sim.faults.end(); ++it) {
    if (it->call == call && it->nth == count) {
      const CUresult code = it->code;
      sim.faults.erase(it);
      return code;
    }
  }
  return CUDA_SUCCESS;
}

// Every memory, stream and copy call needs the retained primary context
// current on the calling thread, as the backend promises.
CUresult RequireContext() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (t_context_stack.empty() || t_context_stack.back() != &g_primary_context ||
      sim.context_retains == 0) {
    return CUDA_ERROR_INVALID_CONTEXT;
  }
  return CUDA_SUCCESS;
}

#define SIM_CHECK(call)                                       \
  do {                                                        \
    if (CUresult sim_rc_ = (call); sim_rc_ != CUDA_SUCCESS) { \
      return sim_rc_;                                         \
    }                                                         \
  } while (false)

// Whether [pointer, pointer + bytes) lies in simulated device memory that
// allows `prot`.
bool DeviceRangeAllows(Simulation& sim, CUdeviceptr pointer, size_t bytes,
                       int prot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sim.mutex) {
  auto contains = [&](uintptr_t base, size_t size) {
    return pointer >= base && bytes <= size && pointer - base <= size - bytes;
  };
  auto linear = sim.linear.upper_bound(pointer);
  if (linear != sim.linear.begin() &&
      contains(std::prev(linear)->first, std::prev(linear)->second.size)) {
    return true;
  }
  // Opened IPC memory is read-write, as with the real driver.
  auto opened = sim.ipc_mappings.upper_bound(pointer);
  if (opened != sim.ipc_mappings.begin() &&
      contains(std::prev(opened)->first, std::prev(opened)->second.size)) {
    return true;
  }
  auto mapped = sim.mappings.upper_bound(pointer);
  if (mapped == sim.mappings.begin()) return false;
  --mapped;
  return contains(mapped->first, mapped->second.size) &&
         (mapped->second.prot & prot) == prot;
}

bool HostRegistered(Simulation& sim, const void* data, size_t bytes)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(sim.mutex) {
  const auto pointer = reinterpret_cast<uintptr_t>(data);
  auto it = sim.host_regions.upper_bound(pointer);
  if (it == sim.host_regions.begin()) return false;
  --it;
  return pointer - it->first <= it->second &&
         bytes <= it->second - (pointer - it->first);
}

void RunStream(CUstream stream) {
  Simulation& sim = Sim();
  while (true) {
    std::function<void()> operation;
    {
      absl::MutexLock lock(&stream->mutex);
      stream->mutex.Await(absl::Condition(
          +[](CUstream s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mutex) {
            return !s->work.empty() || s->stopping;
          },
          stream));
      if (stream->work.empty()) return;
      operation = std::move(stream->work.front());
      stream->work.pop_front();
    }
    {
      absl::MutexLock lock(&sim.mutex);
      sim.mutex.Await(absl::Condition(
          +[](Simulation* s)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mutex) { return !s->paused; },
          &sim));
    }
    operation();
    absl::MutexLock lock(&stream->mutex);
    ++stream->finished;
  }
}

CUresult Enqueue(CUstream stream, std::function<void()> operation) {
  absl::MutexLock lock(&stream->mutex);
  stream->work.push_back(std::move(operation));
  ++stream->submitted;
  return CUDA_SUCCESS;
}

bool KnownStream(CUstream stream) {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return sim.streams.count(stream) != 0;
}

bool KnownEvent(CUevent event) {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return sim.events.count(event) != 0;
}

// Frees physical memory once it is released and no longer mapped.
void MaybeFreePhysical(Simulation& sim, CUmemGenericAllocationHandle handle)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(sim.mutex) {
  Physical& physical = sim.physical[handle];
  if (!physical.released || physical.mappings != 0) return;
  ::close(physical.memfd);
  if (!physical.imported) sim.used_memory -= physical.size;
  sim.physical.erase(handle);
}

// The name of the memfd behind the cuMemAlloc'd block numbered `serial`.
std::string LinearMemfdName(uint64_t serial) {
  return "warmstart simulated GPU memory #" + std::to_string(serial);
}

int EnvInt(const char* name, int fallback) {
  const char* text = std::getenv(name);
  int value = 0;
  return text != nullptr && absl::SimpleAtoi(text, &value) ? value : fallback;
}

struct ErrorText {
  CUresult code;
  const char* name;
  const char* text;
};

constexpr ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error (simulated driver)"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE",
     "invalid argument (simulated driver)"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY",
     "out of memory (simulated driver)"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED",
     "initialization error (simulated driver)"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE",
     "no CUDA-capable device is detected (simulated driver)"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE",
     "invalid device ordinal (simulated driver)"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT",
     "invalid device context (simulated driver)"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE",
     "invalid resource handle (simulated driver)"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND",
     "named symbol not found (simulated driver)"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered (simulated driver)"},
    {CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
     "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
     "part or all of the requested memory range is already mapped "
     "(simulated driver)"},
    {CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
     "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
     "pointer does not correspond to a registered memory region (simulated "
     "driver)"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED",
     "unspecified launch failure (simulated driver)"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED",
     "operation not supported (simulated driver)"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN",
     "unknown error (simulated driver)"},
};

const ErrorText* FindError(CUresult code) {
  for (const ErrorText& error : kErrors) {
    if (error.code == code) return &error;
  }
  return nullptr;
}

}  // namespace

extern "C" {

// --- Initialisation and lookup -------------------------------------------

CUresult CUDAAPI cuInit(unsigned int flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (const int error = EnvInt("WARMSTART_SIM_INIT_ERROR", 0); error != 0) {
    return static_cast<CUresult>(error);
  }
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  sim.vmm = EnvInt("WARMSTART_SIM_VMM", 1) != 0;
  sim.posix_fd = EnvInt("WARMSTART_SIM_POSIX_FD", 1) != 0;
  sim.devices =
      std::clamp(EnvInt("WARMSTART_SIM_DEVICES", 1), 0, kMaxSimulatedDevices);
  sim.total_memory = size_t{1} << 30;
  if (const char* text = std::getenv("WARMSTART_SIM_MEMORY_BYTES")) {
    uint64_t bytes = 0;
    if (absl::SimpleAtoi(text, &bytes)) sim.total_memory = bytes;
  }
  sim.others_memory = 0;
  if (const char* text = std::getenv("WARMSTART_SIM_OTHERS_MEMORY_BYTES")) {
    uint64_t bytes = 0;
    if (absl::SimpleAtoi(text, &bytes)) {
      sim.others_memory = std::min<uint64_t>(bytes, sim.total_memory);
    }
  }
  sim.copy_delay = absl::Microseconds(EnvInt("WARMSTART_SIM_COPY_DELAY_US", 0));
  sim.missing.clear();
  if (const char* text = std::getenv("WARMSTART_SIM_MISSING")) {
    for (absl::string_view name : absl::StrSplit(text, ',')) {
      sim.missing.insert(std::string(name));
    }
  }
  sim.faults.clear();
  sim.calls.clear();
  sim.paused = false;
  sim.pageable_copies = 0;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDriverGetVersion(int* version) {
  *version = 13000;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorName(CUresult error, const char** name) {
  const ErrorText* found = FindError(error);
  *name = found != nullptr ? found->name : nullptr;
  return found != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char** text) {
  const ErrorText* found = FindError(error);
  *text = found != nullptr ? found->text : nullptr;
  return found != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// --- Devices --------------------------------------------------------------

CUresult CUDAAPI cuDeviceGetCount(int* count) {
  SIM_CHECK(Injected("cuDeviceGetCount"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  *count = sim.devices;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice* device, int ordinal) {
  SIM_CHECK(Injected("cuDeviceGet"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (ordinal < 0 || ordinal >= sim.devices) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetName(char* name, int length, CUdevice device) {
  SIM_CHECK(Injected("cuDeviceGetName"));
  SIM_CHECK(CheckDevice(device));
  if (length <= 0) return CUDA_ERROR_INVALID_VALUE;
  std::snprintf(name, static_cast<size_t>(length), "%s", kDeviceName);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  SIM_CHECK(Injected("cuMemGetInfo"));
  SIM_CHECK(RequireContext());
  if (free_bytes == nullptr || total_bytes == nullptr) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  *total_bytes = sim.total_memory;
  *free_bytes = sim.total_memory - sim.others_memory - sim.used_memory;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceTotalMem(size_t* bytes, CUdevice device) {
  SIM_CHECK(Injected("cuDeviceTotalMem"));
  SIM_CHECK(CheckDevice(device));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  *bytes = sim.total_memory;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetUuid(CUuuid* uuid, CUdevice device) {
  SIM_CHECK(Injected("cuDeviceGetUuid"));
  SIM_CHECK(CheckDevice(device));
  std::memcpy(uuid->bytes, kUuid, sizeof(kUuid));
  // Each simulated GPU has its own UUID: the last byte is its ordinal.
  uuid->bytes[15] = static_cast<char>(kUuid[15] + device);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* value, CUdevice_attribute attribute,
                                      CUdevice device) {
  SIM_CHECK(Injected("cuDeviceGetAttribute"));
  SIM_CHECK(CheckDevice(device));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
      *value = sim.vmm ? 1 : 0;
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
      *value = sim.vmm && sim.posix_fd ? 1 : 0;
      return CUDA_SUCCESS;
    default:
      // The simulation models only the attributes the backend reads.
      return CUDA_ERROR_INVALID_VALUE;
  }
}

// --- Contexts -------------------------------------------------------------

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device) {
  SIM_CHECK(Injected("cuDevicePrimaryCtxRetain"));
  SIM_CHECK(CheckDevice(device));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  ++sim.context_retains;
  *context = &g_primary_context;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice device) {
  SIM_CHECK(Injected("cuDevicePrimaryCtxRelease"));
  SIM_CHECK(CheckDevice(device));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (sim.context_retains == 0) return CUDA_ERROR_INVALID_CONTEXT;
  --sim.context_retains;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxSetCurrent(CUcontext context) {
  SIM_CHECK(Injected("cuCtxSetCurrent"));
  if (context == nullptr) {
    if (!t_context_stack.empty()) t_context_stack.pop_back();
    return CUDA_SUCCESS;
  }
  if (context != &g_primary_context) return CUDA_ERROR_INVALID_CONTEXT;
  if (t_context_stack.empty()) {
    t_context_stack.push_back(context);
  } else {
    t_context_stack.back() = context;
  }
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPushCurrent(CUcontext context) {
  SIM_CHECK(Injected("cuCtxPushCurrent"));
  if (context != &g_primary_context) return CUDA_ERROR_INVALID_CONTEXT;
  t_context_stack.push_back(context);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPopCurrent(CUcontext* context) {
  SIM_CHECK(Injected("cuCtxPopCurrent"));
  if (t_context_stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
  if (context != nullptr) *context = t_context_stack.back();
  t_context_stack.pop_back();
  return CUDA_SUCCESS;
}

// --- Legacy allocations and IPC --------------------------------------------

CUresult CUDAAPI cuMemAlloc(CUdeviceptr* pointer, size_t bytes) {
  SIM_CHECK(Injected("cuMemAlloc"));
  SIM_CHECK(RequireContext());
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (bytes > sim.total_memory - sim.others_memory - sim.used_memory) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  const uint64_t serial = sim.next_serial++;
  const int memfd =
      ::memfd_create(LinearMemfdName(serial).c_str(), MFD_CLOEXEC);
  if (memfd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  void* memory = MAP_FAILED;
  if (::ftruncate(memfd, static_cast<off_t>(bytes)) == 0) {
    memory =
        ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  }
  if (memory == MAP_FAILED) {
    ::close(memfd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::memset(memory, kPoison, bytes);
  sim.used_memory += bytes;
  sim.linear[reinterpret_cast<uintptr_t>(memory)] =
      Linear{bytes, memfd, serial};
  *pointer = reinterpret_cast<CUdeviceptr>(memory);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFree(CUdeviceptr pointer) {
  SIM_CHECK(Injected("cuMemFree"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto it = sim.linear.find(pointer);
  if (it == sim.linear.end()) return CUDA_ERROR_INVALID_VALUE;
  // Processes that opened its IPC handle keep their own mappings, as a
  // real driver would not (freeing it first is undefined there).
  ::munmap(reinterpret_cast<void*>(it->first), it->second.size);
  ::close(it->second.memfd);
  sim.used_memory -= it->second.size;
  sim.linear.erase(it);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuIpcGetMemHandle(CUipcMemHandle* handle,
                                   CUdeviceptr pointer) {
  SIM_CHECK(Injected("cuIpcGetMemHandle"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  // Only the base of a cuMemAlloc'd block: like the real driver, the
  // simulation refuses VMM memory here.
  auto it = sim.linear.find(pointer);
  if (it == sim.linear.end()) return CUDA_ERROR_INVALID_VALUE;
  // The exporter's pid and memfd: an importer of the same user opens the
  // memory as /proc/<pid>/fd/<fd>, so handles work across processes.
  std::memset(handle->reserved, 0, sizeof(handle->reserved));
  const int written =
      std::snprintf(handle->reserved, sizeof(handle->reserved), "%s%x:%x:%llx",
                    kIpcHandlePrefix, static_cast<unsigned>(::getpid()),
                    static_cast<unsigned>(it->second.memfd),
                    static_cast<unsigned long long>(it->second.serial));
  if (written < 0 || static_cast<size_t>(written) >= sizeof(handle->reserved)) {
    return CUDA_ERROR_UNKNOWN;
  }
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuIpcOpenMemHandle(CUdeviceptr* pointer, CUipcMemHandle handle,
                                    unsigned int flags) {
  SIM_CHECK(Injected("cuIpcOpenMemHandle"));
  SIM_CHECK(RequireContext());
  if (pointer == nullptr || flags != CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  const std::string text(handle.reserved,
                         strnlen(handle.reserved, sizeof(handle.reserved)));
  unsigned pid = 0;
  unsigned fd = 0;
  unsigned long long serial = 0;
  const std::string format = std::string(kIpcHandlePrefix) + "%x:%x:%llx";
  if (std::sscanf(text.c_str(), format.c_str(), &pid, &fd, &serial) != 3) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  // The real driver refuses handles that this very process exported.
  if (static_cast<pid_t>(pid) == ::getpid()) return CUDA_ERROR_INVALID_CONTEXT;
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  // Opened again in the same context: the same pointer, counted.
  for (auto& [base, opened] : sim.ipc_mappings) {
    if (opened.handle == text) {
      ++opened.opens;
      *pointer = base;
      return CUDA_SUCCESS;
    }
  }
  const std::string path =
      "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  const int memfd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  // The exporter has exited or freed the block.
  if (memfd < 0) return CUDA_ERROR_INVALID_HANDLE;
  char target[256] = {};
  const std::string self = "/proc/self/fd/" + std::to_string(memfd);
  const ssize_t length = ::readlink(self.c_str(), target, sizeof(target) - 1);
  const std::string expected =
      "/memfd:" + LinearMemfdName(serial) + " (deleted)";
  struct stat info;
  if (length <= 0 ||
      std::string(target, static_cast<size_t>(length)) != expected ||
      ::fstat(memfd, &info) != 0 || info.st_size <= 0) {
    // The descriptor number now names something else: the block is gone.
    ::close(memfd);
    return CUDA_ERROR_INVALID_HANDLE;
  }
  const size_t size = static_cast<size_t>(info.st_size);
  void* memory =
      ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  ::close(memfd);
  if (memory == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const auto base = reinterpret_cast<uintptr_t>(memory);
  sim.ipc_mappings[base] = IpcMapping{size, text, 1};
  *pointer = base;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuIpcCloseMemHandle(CUdeviceptr pointer) {
  SIM_CHECK(Injected("cuIpcCloseMemHandle"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto it = sim.ipc_mappings.find(pointer);
  if (it == sim.ipc_mappings.end()) return CUDA_ERROR_INVALID_VALUE;
  if (--it->second.opens == 0) {
    ::munmap(reinterpret_cast<void*>(it->first), it->second.size);
    sim.ipc_mappings.erase(it);
  }
  return CUDA_SUCCESS;
}

// --- Virtual memory management ---------------------------------------------

CUresult CUDAAPI cuMemGetAllocationGranularity(
    size_t* granularity, const CUmemAllocationProp* prop,
    CUmemAllocationGranularity_flags option) {
  SIM_CHECK(Injected("cuMemGetAllocationGranularity"));
  if (prop == nullptr || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
      CheckDevice(prop->location.id) != CUDA_SUCCESS) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  *granularity = kGranularity;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                             const CUmemAllocationProp* prop,
                             unsigned long long flags) {
  SIM_CHECK(Injected("cuMemCreate"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (!sim.vmm) return CUDA_ERROR_NOT_SUPPORTED;
  const bool wants_fd = (prop->requestedHandleTypes &
                         CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) != 0;
  if (wants_fd && !sim.posix_fd) return CUDA_ERROR_NOT_SUPPORTED;
  if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
      prop->location.id < 0 || prop->location.id >= sim.devices || flags != 0 ||
      size == 0 || size % kGranularity != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (size > sim.total_memory - sim.others_memory - sim.used_memory) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  const int memfd =
      ::memfd_create("warmstart simulated GPU memory", MFD_CLOEXEC);
  if (memfd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  void* view = MAP_FAILED;
  if (::ftruncate(memfd, static_cast<off_t>(size)) == 0) {
    view = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  }
  if (view == MAP_FAILED) {
    ::close(memfd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::memset(view, kPoison, size);
  ::munmap(view, size);
  Physical physical;
  physical.memfd = memfd;
  physical.size = size;
  physical.exportable = wants_fd;
  sim.used_memory += size;
  *handle = sim.next_handle++;
  sim.physical[*handle] = physical;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemRelease(CUmemGenericAllocationHandle handle) {
  SIM_CHECK(Injected("cuMemRelease"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto it = sim.physical.find(handle);
  if (it == sim.physical.end() || it->second.released) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  it->second.released = true;
  MaybeFreePhysical(sim, handle);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemExportToShareableHandle(
    void* shareable, CUmemGenericAllocationHandle handle,
    CUmemAllocationHandleType type, unsigned long long flags) {
  SIM_CHECK(Injected("cuMemExportToShareableHandle"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto it = sim.physical.find(handle);
  if (it == sim.physical.end() || it->second.released ||
      type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || flags != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (!it->second.exportable) return CUDA_ERROR_NOT_SUPPORTED;
  const int fd = ::fcntl(it->second.memfd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  *static_cast<int*>(shareable) = fd;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemImportFromShareableHandle(
    CUmemGenericAllocationHandle* handle, void* shareable,
    CUmemAllocationHandleType type) {
  SIM_CHECK(Injected("cuMemImportFromShareableHandle"));
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  // The POSIX descriptor travels in the pointer's bits.
  const int fd = static_cast<int>(reinterpret_cast<intptr_t>(shareable));
  struct stat info;
  if (::fstat(fd, &info) != 0 || info.st_size <= 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  const int memfd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (memfd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  Physical physical;
  physical.memfd = memfd;
  physical.size = static_cast<size_t>(info.st_size);
  physical.exportable = true;
  physical.imported = true;
  *handle = sim.next_handle++;
  sim.physical[*handle] = physical;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAddressReserve(CUdeviceptr* pointer, size_t size,
                                     size_t alignment, CUdeviceptr address,
                                     unsigned long long flags) {
  SIM_CHECK(Injected("cuMemAddressReserve"));
  if (size == 0 || size % kGranularity != 0 || address != 0 || flags != 0 ||
      (alignment & (alignment - 1)) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  const size_t align = std::max(alignment, kGranularity);
  void* area = ::mmap(nullptr, size + align, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (area == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const auto start = reinterpret_cast<uintptr_t>(area);
  const uintptr_t aligned = (start + align - 1) / align * align;
  if (aligned > start) ::munmap(area, aligned - start);
  const uintptr_t end = start + size + align;
  if (end > aligned + size) {
    ::munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
  }
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  sim.reservations[aligned] = size;
  *pointer = aligned;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAddressFree(CUdeviceptr pointer, size_t size) {
  SIM_CHECK(Injected("cuMemAddressFree"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto it = sim.reservations.find(pointer);
  if (it == sim.reservations.end() || it->second != size) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  auto mapped = sim.mappings.lower_bound(pointer);
  if (mapped != sim.mappings.end() && mapped->first < pointer + size) {
    return CUDA_ERROR_INVALID_VALUE;  // Still mapped.
  }
  ::munmap(reinterpret_cast<void*>(pointer), size);
  sim.reservations.erase(it);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemMap(CUdeviceptr pointer, size_t size, size_t offset,
                          CUmemGenericAllocationHandle handle,
                          unsigned long long flags) {
  SIM_CHECK(Injected("cuMemMap"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto physical = sim.physical.find(handle);
  // The simulation maps whole allocations only, which is all the backend
  // and its clients do.
  if (physical == sim.physical.end() || physical->second.released ||
      offset != 0 || flags != 0 || size != physical->second.size) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  auto reservation = sim.reservations.upper_bound(pointer);
  if (reservation == sim.reservations.begin()) return CUDA_ERROR_INVALID_VALUE;
  --reservation;
  if (pointer - reservation->first + size > reservation->second) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  auto next = sim.mappings.lower_bound(pointer);
  if ((next != sim.mappings.end() && next->first < pointer + size) ||
      (next != sim.mappings.begin() &&
       std::prev(next)->first + std::prev(next)->second.size > pointer)) {
    return CUDA_ERROR_ALREADY_MAPPED;
  }
  if (::mmap(reinterpret_cast<void*>(pointer), size, PROT_NONE,
             MAP_SHARED | MAP_FIXED, physical->second.memfd, 0) == MAP_FAILED) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  ++physical->second.mappings;
  sim.mappings[pointer] = MappedRange{size, handle, PROT_NONE};
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemUnmap(CUdeviceptr pointer, size_t size) {
  SIM_CHECK(Injected("cuMemUnmap"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto it = sim.mappings.find(pointer);
  if (it == sim.mappings.end() || it->second.size != size) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  // Back to a reserved, inaccessible range.
  ::mmap(reinterpret_cast<void*>(pointer), size, PROT_NONE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  const CUmemGenericAllocationHandle handle = it->second.handle;
  sim.mappings.erase(it);
  --sim.physical[handle].mappings;
  MaybeFreePhysical(sim, handle);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemSetAccess(CUdeviceptr pointer, size_t size,
                                const CUmemAccessDesc* desc, size_t count) {
  SIM_CHECK(Injected("cuMemSetAccess"));
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  auto it = sim.mappings.find(pointer);
  if (it == sim.mappings.end() || it->second.size != size || count != 1 ||
      desc->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
      desc->location.id < 0 || desc->location.id >= sim.devices) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  int prot = PROT_NONE;
  switch (desc->flags) {
    case CU_MEM_ACCESS_FLAGS_PROT_READWRITE:
      prot = PROT_READ | PROT_WRITE;
      break;
    case CU_MEM_ACCESS_FLAGS_PROT_READ:
      prot = PROT_READ;
      break;
    case CU_MEM_ACCESS_FLAGS_PROT_NONE:
      break;
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
  if (::mprotect(reinterpret_cast<void*>(pointer), size, prot) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  it->second.prot = prot;
  return CUDA_SUCCESS;
}

// --- Pinned host memory -----------------------------------------------------

CUresult CUDAAPI cuMemHostRegister(void* data, size_t bytes,
                                   unsigned int flags) {
  SIM_CHECK(Injected("cuMemHostRegister"));
  SIM_CHECK(RequireContext());
  if (data == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  const auto begin = reinterpret_cast<uintptr_t>(data);
  auto next = sim.host_regions.lower_bound(begin);
  if ((next != sim.host_regions.end() && next->first < begin + bytes) ||
      (next != sim.host_regions.begin() &&
       std::prev(next)->first + std::prev(next)->second > begin)) {
    return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
  }
  sim.host_regions[begin] = bytes;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemHostUnregister(void* data) {
  SIM_CHECK(Injected("cuMemHostUnregister"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (sim.host_regions.erase(reinterpret_cast<uintptr_t>(data)) == 0) {
    return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
  }
  return CUDA_SUCCESS;
}

// --- Streams, events and copies ---------------------------------------------

CUresult CUDAAPI cuStreamCreate(CUstream* stream, unsigned int flags) {
  SIM_CHECK(Injected("cuStreamCreate"));
  SIM_CHECK(RequireContext());
  if (flags != CU_STREAM_DEFAULT && flags != CU_STREAM_NON_BLOCKING) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  auto* created = new CUstream_st;
  created->worker = std::thread(RunStream, created);
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  sim.streams.insert(created);
  *stream = created;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamDestroy(CUstream stream) {
  SIM_CHECK(Injected("cuStreamDestroy"));
  SIM_CHECK(RequireContext());
  {
    Simulation& sim = Sim();
    absl::MutexLock lock(&sim.mutex);
    if (sim.streams.erase(stream) == 0) return CUDA_ERROR_INVALID_HANDLE;
  }
  // The real driver lets queued work finish after this returns; the
  // simulation waits for it here.
  {
    absl::MutexLock lock(&stream->mutex);
    stream->stopping = true;
  }
  stream->worker.join();
  delete stream;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamSynchronize(CUstream stream) {
  const CUresult injected = Injected("cuStreamSynchronize");
  SIM_CHECK(RequireContext());
  // The backend never uses the legacy default stream, so neither does the
  // simulation.
  if (!KnownStream(stream)) return CUDA_ERROR_INVALID_HANDLE;
  absl::MutexLock lock(&stream->mutex);
  const uint64_t target = stream->submitted;
  auto reached = [stream, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                     stream->mutex) { return stream->finished >= target; };
  stream->mutex.Await(absl::Condition(&reached));
  return injected;
}

CUresult CUDAAPI cuEventCreate(CUevent* event, unsigned int flags) {
  SIM_CHECK(Injected("cuEventCreate"));
  SIM_CHECK(RequireContext());
  if ((flags & ~(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING)) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  auto* created = new CUevent_st;
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  sim.events.insert(created);
  *event = created;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventDestroy(CUevent event) {
  SIM_CHECK(Injected("cuEventDestroy"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (sim.events.erase(event) == 0) return CUDA_ERROR_INVALID_HANDLE;
  delete event;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent event, CUstream stream) {
  SIM_CHECK(Injected("cuEventRecord"));
  SIM_CHECK(RequireContext());
  if (!KnownEvent(event) || !KnownStream(stream)) {
    return CUDA_ERROR_INVALID_HANDLE;
  }
  std::shared_ptr<SimEventState> state = event->state;
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&state->mutex);
    generation = ++state->recorded;
  }
  return Enqueue(stream, [state, generation] {
    absl::MutexLock lock(&state->mutex);
    state->completed = std::max(state->completed, generation);
  });
}

CUresult CUDAAPI cuEventSynchronize(CUevent event) {
  const CUresult injected = Injected("cuEventSynchronize");
  SIM_CHECK(RequireContext());
  if (!KnownEvent(event)) return CUDA_ERROR_INVALID_HANDLE;
  std::shared_ptr<SimEventState> state = event->state;
  absl::MutexLock lock(&state->mutex);
  const uint64_t target = state->recorded;
  auto reached = [&state, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                     state->mutex) { return state->completed >= target; };
  state->mutex.Await(absl::Condition(&reached));
  return injected;
}

CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr pointer, unsigned char value,
                                 size_t bytes, CUstream stream) {
  SIM_CHECK(Injected("cuMemsetD8Async"));
  SIM_CHECK(RequireContext());
  if (!KnownStream(stream)) return CUDA_ERROR_INVALID_HANDLE;
  {
    Simulation& sim = Sim();
    absl::MutexLock lock(&sim.mutex);
    if (!DeviceRangeAllows(sim, pointer, bytes, PROT_WRITE)) {
      return CUDA_ERROR_INVALID_VALUE;
    }
  }
  return Enqueue(stream, [pointer, value, bytes] {
    std::memset(reinterpret_cast<void*>(pointer), value, bytes);
  });
}

CUresult CUDAAPI cuMemcpyHtoDAsync(CUdeviceptr destination, const void* source,
                                   size_t bytes, CUstream stream) {
  SIM_CHECK(Injected("cuMemcpyHtoDAsync"));
  SIM_CHECK(RequireContext());
  if (!KnownStream(stream)) return CUDA_ERROR_INVALID_HANDLE;
  Simulation& sim = Sim();
  absl::Duration delay;
  {
    absl::MutexLock lock(&sim.mutex);
    if (!DeviceRangeAllows(sim, destination, bytes, PROT_WRITE)) {
      return CUDA_ERROR_INVALID_VALUE;
    }
    if (!HostRegistered(sim, source, bytes)) ++sim.pageable_copies;
    delay = sim.copy_delay;
  }
  sim.outstanding_copies.fetch_add(1);
  return Enqueue(stream, [&sim, destination, source, bytes, delay] {
    if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
    std::memcpy(reinterpret_cast<void*>(destination), source, bytes);
    sim.outstanding_copies.fetch_sub(1);
  });
}

CUresult CUDAAPI cuMemcpyHtoD(CUdeviceptr destination, const void* source,
                              size_t bytes) {
  SIM_CHECK(Injected("cuMemcpyHtoD"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (!DeviceRangeAllows(sim, destination, bytes, PROT_WRITE)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::memcpy(reinterpret_cast<void*>(destination), source, bytes);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoH(void* destination, CUdeviceptr source,
                              size_t bytes) {
  SIM_CHECK(Injected("cuMemcpyDtoH"));
  SIM_CHECK(RequireContext());
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  if (!DeviceRangeAllows(sim, source, bytes, PROT_READ)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::memcpy(destination, reinterpret_cast<const void*>(source), bytes);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetProcAddress(const char* symbol, void** function,
                                  int cuda_version, cuuint64_t flags,
                                  CUdriverProcAddressQueryResult* status) {
  struct Named {
    const char* name;
    void* function;
  };
  static const Named kEntryPoints[] = {
#define SIM_ENTRY(name) {#name, reinterpret_cast<void*>(&name)}
      SIM_ENTRY(cuDeviceGetCount),
      SIM_ENTRY(cuDeviceGet),
      SIM_ENTRY(cuDeviceGetName),
      SIM_ENTRY(cuDeviceTotalMem),
      SIM_ENTRY(cuMemGetInfo),
      SIM_ENTRY(cuDeviceGetUuid),
      SIM_ENTRY(cuDeviceGetAttribute),
      SIM_ENTRY(cuGetErrorName),
      SIM_ENTRY(cuGetErrorString),
      SIM_ENTRY(cuDevicePrimaryCtxRetain),
      SIM_ENTRY(cuDevicePrimaryCtxRelease),
      SIM_ENTRY(cuCtxSetCurrent),
      SIM_ENTRY(cuCtxPushCurrent),
      SIM_ENTRY(cuCtxPopCurrent),
      SIM_ENTRY(cuMemAlloc),
      SIM_ENTRY(cuMemFree),
      SIM_ENTRY(cuIpcGetMemHandle),
      SIM_ENTRY(cuIpcOpenMemHandle),
      SIM_ENTRY(cuIpcCloseMemHandle),
      SIM_ENTRY(cuMemGetAllocationGranularity),
      SIM_ENTRY(cuMemCreate),
      SIM_ENTRY(cuMemRelease),
      SIM_ENTRY(cuMemExportToShareableHandle),
      SIM_ENTRY(cuMemImportFromShareableHandle),
      SIM_ENTRY(cuMemAddressReserve),
      SIM_ENTRY(cuMemAddressFree),
      SIM_ENTRY(cuMemMap),
      SIM_ENTRY(cuMemUnmap),
      SIM_ENTRY(cuMemSetAccess),
      SIM_ENTRY(cuMemHostRegister),
      SIM_ENTRY(cuMemHostUnregister),
      SIM_ENTRY(cuStreamCreate),
      SIM_ENTRY(cuStreamDestroy),
      SIM_ENTRY(cuStreamSynchronize),
      SIM_ENTRY(cuEventCreate),
      SIM_ENTRY(cuEventDestroy),
      SIM_ENTRY(cuEventRecord),
      SIM_ENTRY(cuEventSynchronize),
      SIM_ENTRY(cuMemsetD8Async),
      SIM_ENTRY(cuMemcpyHtoDAsync),
      SIM_ENTRY(cuMemcpyHtoD),
      SIM_ENTRY(cuMemcpyDtoH),
#undef SIM_ENTRY
  };
  *function = nullptr;
  if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  if (cuda_version < 12000 || flags != CU_GET_PROC_ADDRESS_DEFAULT) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  {
    Simulation& sim = Sim();
    absl::MutexLock lock(&sim.mutex);
    if (sim.missing.count(symbol) != 0) return CUDA_ERROR_NOT_FOUND;
  }
  for (const Named& entry : kEntryPoints) {
    if (std::strcmp(entry.name, symbol) == 0) {
      *function = entry.function;
      if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SUCCESS;
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_NOT_FOUND;
}

// --- Test controls (cuda_sim.h) ---------------------------------------------

void warmstart_sim_inject(const char* call, int nth, int error_code) {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  sim.faults.push_back(
      {call, sim.calls[call] + nth, static_cast<CUresult>(error_code)});
}

void warmstart_sim_pause_streams(int paused) {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  sim.paused = paused != 0;
}

int warmstart_sim_live_allocations() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return static_cast<int>(sim.linear.size() + sim.physical.size());
}

int warmstart_sim_live_address_ranges() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return static_cast<int>(sim.reservations.size() + sim.mappings.size());
}

int warmstart_sim_live_ipc_mappings() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return static_cast<int>(sim.ipc_mappings.size());
}

int warmstart_sim_registered_host_regions() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return static_cast<int>(sim.host_regions.size());
}

int warmstart_sim_outstanding_copies() {
  return Sim().outstanding_copies.load();
}

int warmstart_sim_live_streams() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return static_cast<int>(sim.streams.size());
}

int warmstart_sim_live_events() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return static_cast<int>(sim.events.size());
}

int warmstart_sim_context_retains() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return sim.context_retains;
}

int warmstart_sim_pageable_copies() {
  Simulation& sim = Sim();
  absl::MutexLock lock(&sim.mutex);
  return sim.pageable_copies;
}

}  // extern "C"
