// GPU memory that warmstartd exported, imported into this process through
// the CUDA driver API.
//
// Internal to the client library (which depends on proto/ only: this is a
// second, minimal loader of the driver, not the daemon's). The driver is
// loaded at run time, on the first import: dlopen of $WARMSTART_LIBCUDA when
// set (tests point it at the simulated driver), else "libcuda.so.1"; entry
// points are resolved through cuGetProcAddress_v2 at the ABI of CUDA 12.0.
// The outcome of that first load (and cuInit) is kept for the life of the
// process, and the library is never unloaded.
//
// The GPU is found by its UUID, formatted as the daemon formats it
// ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" from cuDeviceGetUuid), because
// ordinals differ between processes and containers. Memory is imported into
// that device's primary context, which each import retains until it is
// released; the context is pushed current on the calling thread for the
// import and the release only, and whatever was current before is current
// again afterwards.
#ifndef WARMSTART_CLIENT_CUDA_IMPORT_H_
#define WARMSTART_CLIENT_CUDA_IMPORT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace warmstart {
namespace client {
namespace internal {

class CudaImportDriver;

// One imported allocation: owns the driver objects that map it (for a VMM
// import the imported handle, the address reservation and the mapping; for
// a legacy IPC handle the opened handle) and one retain of the device's
// primary context. Move-only; the destructor releases everything.
//
// Thread safety: const methods may be called from any thread; Release(),
// assignment and destruction must not run concurrently with any other use
// of the same object. Different objects are independent.
class CudaImport {
 public:
  enum class Kind { kNone, kVmm, kLegacyIpc };

  // Holds nothing.
  CudaImport() = default;
  // Calls Release() and ignores its status.
  ~CudaImport();
  CudaImport(CudaImport&& other) noexcept;
  // Releases what this object held first.
  CudaImport& operator=(CudaImport&& other) noexcept;
  CudaImport(const CudaImport&) = delete;
  CudaImport& operator=(const CudaImport&) = delete;

  // Imports a CUDA VMM allocation from its POSIX file descriptor:
  // cuMemImportFromShareableHandle, then an address range of `size` rounded
  // up to the allocation granularity, cuMemMap, and cuMemSetAccess for the
  // device, read-only where the driver grants it, else read-write (see
  // read_only(); a one-time warning goes to stderr). `fd` is borrowed: the
  // caller may close it once this returns, the import keeps the memory.
  //
  // Errors: FailedPrecondition when no usable CUDA driver can be loaded;
  // NotFound (naming the UUID) when this process cannot see that GPU (e.g.
  // CUDA_VISIBLE_DEVICES hides it); Unimplemented when the driver lacks the
  // VMM API; InvalidArgument for a zero size; otherwise the driver's error,
  // naming the call. On any error nothing stays imported, mapped or
  // retained.
  static absl::StatusOr<CudaImport> ImportVmmFd(absl::string_view device_uuid,
                                                uint64_t size, int fd);

  // Opens a legacy CUDA IPC handle (its 64 bytes) with cuIpcOpenMemHandle
  // and CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS. The mapping is read-write: the
  // legacy API has no read-only mode. Opening the handle of an allocation
  // that is already open in this process gives the same pointer (the
  // driver counts opens). Errors as ImportVmmFd, plus InvalidArgument when
  // `handle` is not 64 bytes; a handle whose exporter has gone fails with
  // the driver's error.
  static absl::StatusOr<CudaImport> OpenIpcHandle(absl::string_view device_uuid,
                                                  uint64_t size,
                                                  absl::string_view handle);

  Kind kind() const { return kind_; }
  // The first byte, as a CUdeviceptr; 0 when nothing is held.
  uint64_t device_pointer() const { return pointer_; }
  // Bytes mapped at device_pointer(): at least the size asked for.
  uint64_t mapped_size() const { return mapped_size_; }
  // The GPU's UUID ("GPU-...") and its ordinal in this process.
  const std::string& device_uuid() const { return device_uuid_; }
  int device_ordinal() const { return ordinal_; }
  // Whether the device may only read the memory through this mapping:
  // true for a VMM import given CU_MEM_ACCESS_FLAGS_PROT_READ, false for
  // one the driver only gave read-write and for legacy IPC.
  bool read_only() const { return read_only_; }

  // Unmaps and releases, in the reverse order of the import (VMM: unmap,
  // free the address range, release the imported handle; legacy:
  // cuIpcCloseMemHandle), then releases the primary context. Everything is
  // attempted whatever fails; returns the first error. Idempotent.
  absl::Status Release();

 private:
  // Finds the GPU and retains its primary context (the first step of
  // either import). On error, what was retained stays recorded for
  // Release().
  absl::Status RetainDevice(const CudaImportDriver& driver,
                            absl::string_view device_uuid);
  void Swap(CudaImport& other) noexcept;

  const CudaImportDriver* driver_ = nullptr;
  Kind kind_ = Kind::kNone;
  std::string device_uuid_;
  int ordinal_ = -1;
  // The CUdevice and the retained primary CUcontext; null until retained.
  int device_ = 0;
  void* context_ = nullptr;
  // VMM: the imported CUmemGenericAllocationHandle, the reservation and
  // the mapping, each released only when set.
  uint64_t vmm_handle_ = 0;
  bool have_vmm_handle_ = false;
  bool reserved_ = false;
  bool mapped_ = false;
  // Legacy IPC: whether cuIpcOpenMemHandle succeeded.
  bool ipc_open_ = false;
  uint64_t pointer_ = 0;
  uint64_t mapped_size_ = 0;
  bool read_only_ = false;
};

}  // namespace internal
}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_CUDA_IMPORT_H_
