// Device: where loaded weights live, behind one narrow interface with two
// implementations: host shared memory (host_device.h) and GPU memory
// (cuda_device.h).
//
// The loader allocates one or more DeviceAllocations per model, copies
// tensors into them from pinned staging slabs, and the service exports them
// to clients. An allocation is freed when its owner (the registry, through
// the loaded model) destroys it.
#ifndef WARMSTART_DAEMON_DEVICE_DEVICE_H_
#define WARMSTART_DAEMON_DEVICE_DEVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace warmstart {

// How a client reaches an allocation.
struct ExportedMemory {
  enum class Kind { kHostMemfd, kCudaVmmFd, kCudaIpcHandle };
  Kind kind = Kind::kHostMemfd;
  // kHostMemfd and kCudaVmmFd: a descriptor owned by the allocation; the
  // service sends a duplicate. -1 otherwise.
  int fd = -1;
  // kCudaIpcHandle: the 64-byte legacy IPC handle.
  std::string ipc_handle;
  uint64_t size = 0;  // Bytes the client maps.
};

// A block of device memory. Destroying it frees the memory (the caller makes
// sure no copy into it is still in flight: Device::Synchronize).
class DeviceAllocation {
 public:
  virtual ~DeviceAllocation() = default;

  virtual uint64_t size() const = 0;
  // Where the bytes are, when the CPU can write them directly (host
  // memory); null for GPU memory.
  virtual char* host_data() = 0;
  // Blocks until [0, end) may be written directly through host_data():
  // host memory is reserved in the background, ahead of the writers. Fails
  // (ResourceExhausted) when the memory could not be had. CopyFromHost waits
  // by itself; code writing through host_data() must call it first.
  virtual absl::Status WaitWritable(uint64_t end) { return absl::OkStatus(); }
  // Whether writers should go through Device::CopyFromHost even though
  // host_data() could take the bytes directly (reads landing in place):
  // true for host memory that is written fastest through its descriptor.
  virtual bool PrefersCopies() const { return false; }

  // Makes the memory read-only for everyone it is exported to (host: seals
  // the memfd). Called once the load has completed; an error means the
  // allocation must not be served.
  virtual absl::Status Seal() = 0;
  virtual ExportedMemory Export() const = 0;
};

// What a device has left, as far as it can tell.
struct DeviceMemory {
  // Bytes that may still be allocated now (host: the least of MemAvailable
  // and what every memory cgroup limit of the process leaves); nullopt when
  // unknown. Memory a client still maps after the daemon freed it is
  // counted as used.
  std::optional<uint64_t> free_bytes;
  // Shared memory charged to the daemon (host: shmem of its memory cgroup):
  // its models' pages and those clients keep after they were freed; 0 when
  // unknown.
  uint64_t shared_bytes = 0;
  // Where the figures come from, for messages ("the memory cgroup limit
  // /sys/fs/cgroup/memory/x/memory.limit_in_bytes (1879048192 bytes)").
  std::string source;
};

// Thread safety: implementations are thread-safe.
class Device {
 public:
  virtual ~Device() = default;

  // "host", or the GPU's UUID ("GPU-...").
  virtual const std::string& uuid() const = 0;

  // Allocates `bytes` (rounded up to the device's granularity) of zeroed
  // memory. `label` names it in diagnostics (the model name). Fails with
  // ResourceExhausted, naming the size, when the memory is not there.
  virtual absl::StatusOr<std::unique_ptr<DeviceAllocation>> Allocate(
      uint64_t bytes, const std::string& label) = 0;

  // Allocates exactly `bytes` of zeroed memory to hold a file image: a
  // file's own bytes, which clients open as a file (/proc/self/fd/N), so
  // the exported size must be the file's to the byte. Only host memory can
  // be opened as a file; this default refuses (FailedPrecondition).
  virtual absl::StatusOr<std::unique_ptr<DeviceAllocation>> AllocateFileImage(
      uint64_t bytes, const std::string& label) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device ", uuid(), " cannot hold ", label, " as a file image (", bytes,
        " bytes): file images live in host memory; use the packed layout"));
  }

  // Makes [data, data+bytes) usable as a copy source (pins it for DMA).
  // The staging pool calls it once per slab region at start.
  virtual absl::Status RegisterHostMemory(void* data, uint64_t bytes) = 0;
  virtual void UnregisterHostMemory(void* data) = 0;

  // Copies `bytes` from `source` (registered host memory) into
  // `destination` at `offset`, possibly asynchronously. `done` runs exactly
  // once, on any thread, when `source` may be reused, with the copy's status.
  // REQUIRES: [offset, offset+bytes) lies inside `destination`, which
  // outlives the copy.
  virtual void CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                            const char* source, uint64_t bytes,
                            std::function<void(absl::Status)> done) = 0;

  // Waits until every copy issued so far has completed.
  virtual absl::Status Synchronize() = 0;

  // What the device has left. The registry reads it under its lock when it
  // reserves room for a load, so concurrent loads cannot both take the
  // same free memory. Cheap: a few small files at most.
  virtual DeviceMemory Memory() const { return DeviceMemory(); }
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_DEVICE_H_
