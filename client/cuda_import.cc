#include "client/cuda_import.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/cuda_driver_loader.h"

namespace warmstart {
namespace client {
namespace internal {
namespace {

// The driver entry points an importer calls.
struct Api {
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuGetErrorString_v6000 get_error_string = nullptr;
  PFN_cuDeviceGetCount_v2000 device_get_count = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDeviceGetUuid_v11040 device_get_uuid = nullptr;
  PFN_cuDevicePrimaryCtxRetain_v7000 primary_ctx_retain = nullptr;
  PFN_cuDevicePrimaryCtxRelease_v11000 primary_ctx_release = nullptr;
  PFN_cuCtxPushCurrent_v4000 ctx_push_current = nullptr;
  PFN_cuCtxPopCurrent_v4000 ctx_pop_current = nullptr;
  // Legacy IPC (optional as a group).
  PFN_cuIpcOpenMemHandle_v11000 ipc_open_mem_handle = nullptr;
  PFN_cuIpcCloseMemHandle_v4010 ipc_close_mem_handle = nullptr;
  // VMM (optional as a group).
  PFN_cuMemGetAllocationGranularity_v10020 mem_get_allocation_granularity =
      nullptr;
  PFN_cuMemImportFromShareableHandle_v10020 mem_import_from_shareable_handle =
      nullptr;
  PFN_cuMemAddressReserve_v10020 mem_address_reserve = nullptr;
  PFN_cuMemAddressFree_v10020 mem_address_free = nullptr;
  PFN_cuMemMap_v10020 mem_map = nullptr;
  PFN_cuMemUnmap_v10020 mem_unmap = nullptr;
  PFN_cuMemSetAccess_v10020 mem_set_access = nullptr;
  PFN_cuMemRelease_v10020 mem_release = nullptr;
};

}  // namespace

// The driver as loaded for this process. Immutable once loaded; the CUDA
// driver API is thread-safe.
class CudaImportDriver {
 public:
  // The process's driver, loaded on the first call.
  static absl::StatusOr<const CudaImportDriver*> Get() {
    static const absl::StatusOr<const CudaImportDriver*>* const loaded =
        new absl::StatusOr<const CudaImportDriver*>(Load());
    return *loaded;
  }

  const Api& api() const { return api_; }
  bool has_ipc() const { return api_.ipc_open_mem_handle != nullptr; }
  bool has_vmm() const {
    return api_.mem_import_from_shareable_handle != nullptr;
  }

  // OK for CUDA_SUCCESS, else "<what> failed: <name>: <text> (<code>)".
  // Codes: out of memory -> ResourceExhausted, invalid value ->
  // InvalidArgument, not supported -> Unimplemented, no device or driver
  // -> FailedPrecondition (never Unavailable, which the client keeps for
  // an unreachable daemon), anything else -> Internal.
  absl::Status Check(CUresult result, absl::string_view what) const {
    return CudaResultToStatus(api_.get_error_name, api_.get_error_string,
                              result, what,
                              absl::StatusCode::kFailedPrecondition);
  }

  // The ordinal and CUdevice of the GPU whose UUID is `uuid`.
  absl::Status FindDevice(absl::string_view uuid, int* ordinal,
                          CUdevice* device) const {
    int count = 0;
    if (!sees_no_gpu_) {
      absl::Status counted =
          Check(api_.device_get_count(&count), "cuDeviceGetCount");
      if (!counted.ok()) return counted;
    }
    std::vector<std::string> seen;
    for (int i = 0; i < count; ++i) {
      CUdevice candidate = 0;
      CUuuid bytes;
      absl::Status status =
          Check(api_.device_get(&candidate, i), "cuDeviceGet");
      if (status.ok()) {
        status =
            Check(api_.device_get_uuid(&bytes, candidate), "cuDeviceGetUuid");
      }
      if (!status.ok()) return status;
      std::string formatted = FormatGpuUuid(bytes);
      if (formatted == uuid) {
        *ordinal = i;
        *device = candidate;
        return absl::OkStatus();
      }
      seen.push_back(std::move(formatted));
    }
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    return absl::NotFoundError(absl::StrCat(
        "GPU ", uuid, " is not visible to this process: the CUDA driver sees ",
        seen.empty()
            ? std::string("no GPU")
            : absl::StrCat(seen.size(), " (", absl::StrJoin(seen, ", "), ")"),
        visible != nullptr
            ? absl::StrCat("; CUDA_VISIBLE_DEVICES=\"", visible, "\"")
            : std::string()));
  }

 private:
  static absl::StatusOr<const CudaImportDriver*> Load() {
    absl::StatusOr<CudaDriverLibrary> library = OpenCudaDriver();
    if (!library.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no CUDA driver in this process: ", library.status().message()));
    }
    const std::string& path = library->path;
    auto fail = [handle = library->handle](std::string message) {
      ::dlclose(handle);
      return absl::FailedPreconditionError(std::move(message));
    };
    const PFN_cuGetProcAddress_v12000 get_proc = library->get_proc;
    // Never deleted, and the library never closed: imports may be released
    // by destructors that run at exit.
    auto* driver = new CudaImportDriver;
    const CUresult initialised = library->init(0);
    if (initialised == CUDA_ERROR_NO_DEVICE) {
      // What CUDA_VISIBLE_DEVICES="" gives: a driver that sees no GPU, so
      // every GPU is "not visible" (NotFound) rather than "no driver".
      driver->sees_no_gpu_ = true;
    } else if (initialised != CUDA_SUCCESS) {
      delete driver;
      return fail(absl::StrCat("unusable CUDA driver ", path,
                               ": cuInit failed with error ", initialised));
    }
    Api& api = driver->api_;
    const std::vector<CudaEntryPoint> required = {
        CudaEntry("cuGetErrorName", &api.get_error_name),
        CudaEntry("cuGetErrorString", &api.get_error_string),
        CudaEntry("cuDeviceGetCount", &api.device_get_count),
        CudaEntry("cuDeviceGet", &api.device_get),
        CudaEntry("cuDeviceGetUuid", &api.device_get_uuid),
        CudaEntry("cuDevicePrimaryCtxRetain", &api.primary_ctx_retain),
        CudaEntry("cuDevicePrimaryCtxRelease", &api.primary_ctx_release),
        CudaEntry("cuCtxPushCurrent", &api.ctx_push_current),
        CudaEntry("cuCtxPopCurrent", &api.ctx_pop_current),
    };
    if (!driver->sees_no_gpu_ &&
        ResolveCudaEntryPoints(get_proc, required) != nullptr) {
      delete driver;
      return fail(absl::StrCat("unusable CUDA driver ", path,
                               ": it lacks a device or context entry point"));
    }
    ResolveCudaEntryPoints(
        get_proc,
        {CudaEntry("cuIpcOpenMemHandle", &api.ipc_open_mem_handle),
         CudaEntry("cuIpcCloseMemHandle", &api.ipc_close_mem_handle)});
    ResolveCudaEntryPoints(
        get_proc, {CudaEntry("cuMemGetAllocationGranularity",
                             &api.mem_get_allocation_granularity),
                   CudaEntry("cuMemImportFromShareableHandle",
                             &api.mem_import_from_shareable_handle),
                   CudaEntry("cuMemAddressReserve", &api.mem_address_reserve),
                   CudaEntry("cuMemAddressFree", &api.mem_address_free),
                   CudaEntry("cuMemMap", &api.mem_map),
                   CudaEntry("cuMemUnmap", &api.mem_unmap),
                   CudaEntry("cuMemSetAccess", &api.mem_set_access),
                   CudaEntry("cuMemRelease", &api.mem_release)});
    return driver;
  }

  CudaImportDriver() = default;

  Api api_;
  // cuInit said CUDA_ERROR_NO_DEVICE; no entry point is resolved.
  bool sees_no_gpu_ = false;
};

namespace {

// Makes `context` current on this thread until destroyed, then makes the
// previous one current again (push/pop keeps whatever the caller had).
class ScopedContext {
 public:
  ScopedContext(const CudaImportDriver& driver, CUcontext context)
      : driver_(driver) {
    status_ = driver_.Check(driver_.api().ctx_push_current(context),
                            "cuCtxPushCurrent");
  }
  ~ScopedContext() {
    if (!status_.ok()) return;
    CUcontext popped = nullptr;
    // Nothing to do about a failure here; the import's own status stands.
    (void)driver_.api().ctx_pop_current(&popped);
  }
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

  const absl::Status& status() const { return status_; }

 private:
  const CudaImportDriver& driver_;
  absl::Status status_;
};

// `status` with `prefix` in front of its message, keeping its code.
absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  return absl::Status(status.code(),
                      absl::StrCat(prefix, ": ", status.message()));
}

void WarnReadWriteOnce(absl::string_view uuid, const absl::Status& refused) {
  static std::atomic<bool> warned{false};
  if (warned.exchange(true)) return;
  std::fprintf(stderr,
               "warmstart client: the CUDA driver refused read-only access to "
               "imported GPU memory on %s (%s); mapped read-write instead\n",
               std::string(uuid).c_str(),
               std::string(refused.message()).c_str());
}

}  // namespace

CudaImport::~CudaImport() { Release().IgnoreError(); }

CudaImport::CudaImport(CudaImport&& other) noexcept { Swap(other); }

CudaImport& CudaImport::operator=(CudaImport&& other) noexcept {
  if (this != &other) {
    Release().IgnoreError();
    Swap(other);
  }
  return *this;
}

void CudaImport::Swap(CudaImport& other) noexcept {
  std::swap(driver_, other.driver_);
  std::swap(kind_, other.kind_);
  std::swap(device_uuid_, other.device_uuid_);
  std::swap(ordinal_, other.ordinal_);
  std::swap(device_, other.device_);
  std::swap(context_, other.context_);
  std::swap(vmm_handle_, other.vmm_handle_);
  std::swap(have_vmm_handle_, other.have_vmm_handle_);
  std::swap(reserved_, other.reserved_);
  std::swap(mapped_, other.mapped_);
  std::swap(ipc_open_, other.ipc_open_);
  std::swap(pointer_, other.pointer_);
  std::swap(mapped_size_, other.mapped_size_);
  std::swap(read_only_, other.read_only_);
}

absl::Status CudaImport::RetainDevice(const CudaImportDriver& driver,
                                      absl::string_view device_uuid) {
  driver_ = &driver;
  device_uuid_ = std::string(device_uuid);
  CUdevice device = 0;
  if (absl::Status found = driver.FindDevice(device_uuid, &ordinal_, &device);
      !found.ok()) {
    return found;
  }
  CUcontext context = nullptr;
  if (absl::Status retained =
          driver.Check(driver.api().primary_ctx_retain(&context, device),
                       "cuDevicePrimaryCtxRetain");
      !retained.ok()) {
    return retained;
  }
  device_ = device;
  context_ = context;
  return absl::OkStatus();
}

absl::StatusOr<CudaImport> CudaImport::ImportVmmFd(
    absl::string_view device_uuid, uint64_t size, int fd) {
  const std::string what = absl::StrCat("import CUDA VMM memory (", size,
                                        " bytes) on ", device_uuid);
  if (size == 0) return absl::InvalidArgumentError(what + ": size 0");
  absl::StatusOr<const CudaImportDriver*> loaded = CudaImportDriver::Get();
  if (!loaded.ok()) return Prefixed(loaded.status(), what);
  const CudaImportDriver& driver = **loaded;
  if (!driver.has_vmm()) {
    return absl::UnimplementedError(
        what +
        ": the CUDA driver lacks the VMM API (cuMemImportFrom"
        "ShareableHandle, cuMemMap, ...)");
  }
  const Api& api = driver.api();
  // From here on `import` owns what is acquired: an early return releases
  // it (after `current` is popped).
  CudaImport import;
  if (absl::Status status = import.RetainDevice(driver, device_uuid);
      !status.ok()) {
    return Prefixed(status, what);
  }
  import.kind_ = Kind::kVmm;
  const CUdevice device = import.device_;
  ScopedContext current(driver, static_cast<CUcontext>(import.context_));
  if (!current.status().ok()) return Prefixed(current.status(), what);

  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  size_t granularity = 0;
  if (absl::Status status = driver.Check(
          api.mem_get_allocation_granularity(&granularity, &prop,
                                             CU_MEM_ALLOC_GRANULARITY_MINIMUM),
          "cuMemGetAllocationGranularity");
      !status.ok()) {
    return Prefixed(status, what);
  }
  if (granularity == 0) granularity = 1;
  if (size > std::numeric_limits<uint64_t>::max() - granularity) {
    return absl::InvalidArgumentError(what + ": size out of range");
  }
  const uint64_t mapped_size =
      (size + granularity - 1) / granularity * granularity;

  CUmemGenericAllocationHandle handle = 0;
  // The driver takes the POSIX descriptor in the pointer's bits.
  if (absl::Status status = driver.Check(
          api.mem_import_from_shareable_handle(
              &handle, reinterpret_cast<void*>(static_cast<uintptr_t>(fd)),
              CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
          "cuMemImportFromShareableHandle");
      !status.ok()) {
    return Prefixed(status, what);
  }
  import.vmm_handle_ = handle;
  import.have_vmm_handle_ = true;

  CUdeviceptr pointer = 0;
  if (absl::Status status = driver.Check(
          api.mem_address_reserve(&pointer, mapped_size, granularity, 0, 0),
          "cuMemAddressReserve");
      !status.ok()) {
    return Prefixed(status, what);
  }
  import.pointer_ = pointer;
  import.mapped_size_ = mapped_size;
  import.reserved_ = true;

  if (absl::Status status = driver.Check(
          api.mem_map(pointer, mapped_size, 0, handle, 0), "cuMemMap");
      !status.ok()) {
    return Prefixed(status, what);
  }
  import.mapped_ = true;

  // Read-only first: the weights are shared with every other worker.
  CUmemAccessDesc access = {};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READ;
  const absl::Status read_only =
      driver.Check(api.mem_set_access(pointer, mapped_size, &access, 1),
                   "cuMemSetAccess(PROT_READ)");
  if (read_only.ok()) {
    import.read_only_ = true;
  } else {
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    const absl::Status read_write =
        driver.Check(api.mem_set_access(pointer, mapped_size, &access, 1),
                     "cuMemSetAccess(PROT_READWRITE)");
    if (!read_write.ok()) {
      return Prefixed(read_write,
                      absl::StrCat(what, " (", read_only.message(), ")"));
    }
    import.read_only_ = false;
    WarnReadWriteOnce(device_uuid, read_only);
  }
  return import;
}

absl::StatusOr<CudaImport> CudaImport::OpenIpcHandle(
    absl::string_view device_uuid, uint64_t size, absl::string_view handle) {
  const std::string what =
      absl::StrCat("open CUDA IPC handle (", size, " bytes) on ", device_uuid);
  if (handle.size() != CU_IPC_HANDLE_SIZE) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the handle has ", handle.size(), " bytes, not ",
                     CU_IPC_HANDLE_SIZE));
  }
  if (size == 0) return absl::InvalidArgumentError(what + ": size 0");
  absl::StatusOr<const CudaImportDriver*> loaded = CudaImportDriver::Get();
  if (!loaded.ok()) return Prefixed(loaded.status(), what);
  const CudaImportDriver& driver = **loaded;
  if (!driver.has_ipc()) {
    return absl::UnimplementedError(
        what + ": the CUDA driver lacks cuIpcOpenMemHandle");
  }
  const Api& api = driver.api();
  CudaImport import;
  if (absl::Status status = import.RetainDevice(driver, device_uuid);
      !status.ok()) {
    return Prefixed(status, what);
  }
  import.kind_ = Kind::kLegacyIpc;
  // Opened in this device's own primary context: opening it elsewhere
  // would create a context on the exporter's GPU.
  ScopedContext current(driver, static_cast<CUcontext>(import.context_));
  if (!current.status().ok()) return Prefixed(current.status(), what);
  CUipcMemHandle ipc;
  std::memcpy(ipc.reserved, handle.data(), CU_IPC_HANDLE_SIZE);
  CUdeviceptr pointer = 0;
  if (absl::Status status =
          driver.Check(api.ipc_open_mem_handle(
                           &pointer, ipc, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
                       "cuIpcOpenMemHandle");
      !status.ok()) {
    return Prefixed(status, what);
  }
  import.ipc_open_ = true;
  import.pointer_ = pointer;
  import.mapped_size_ = size;
  import.read_only_ = false;
  return import;
}

absl::Status CudaImport::Release() {
  if (driver_ == nullptr) return absl::OkStatus();
  const CudaImportDriver& driver = *driver_;
  const Api& api = driver.api();
  absl::Status first;
  auto note = [&first](absl::Status status) {
    if (first.ok()) first = std::move(status);
  };
  if (context_ != nullptr) {
    ScopedContext current(driver, static_cast<CUcontext>(context_));
    note(current.status());
    // The reverse order of the import: the mapping goes before its
    // address range, the imported handle last.
    if (mapped_) {
      note(driver.Check(api.mem_unmap(pointer_, mapped_size_), "cuMemUnmap"));
    }
    if (reserved_) {
      note(driver.Check(api.mem_address_free(pointer_, mapped_size_),
                        "cuMemAddressFree"));
    }
    if (have_vmm_handle_) {
      note(driver.Check(api.mem_release(vmm_handle_), "cuMemRelease"));
    }
    if (ipc_open_) {
      note(driver.Check(api.ipc_close_mem_handle(pointer_),
                        "cuIpcCloseMemHandle"));
    }
  }
  if (context_ != nullptr) {
    note(driver.Check(api.primary_ctx_release(device_),
                      "cuDevicePrimaryCtxRelease"));
  }
  const std::string uuid = device_uuid_;
  // Everything is freed: forget it (with driver_ null, the assignment's own
  // Release() does nothing).
  driver_ = nullptr;
  *this = CudaImport();
  if (!first.ok()) {
    return Prefixed(first, absl::StrCat("release GPU memory on ", uuid));
  }
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace client
}  // namespace warmstart
