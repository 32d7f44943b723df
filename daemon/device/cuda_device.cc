#include "daemon/device/cuda_device.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "daemon/base/logging.h"
#include "daemon/base/metrics.h"

namespace warmstart {
namespace {

constexpr int kMaxCopyStreams = 16;
// cuMemAlloc serves large allocations in 2 MiB pages, and a client maps the
// whole allocation through its IPC handle, so rounding costs nothing the GPU
// was not spending already.
constexpr uint64_t kLinearGranularity = uint64_t{2} << 20;

uint64_t RoundUp(uint64_t value, uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// `status` with `context` in front of its message, keeping its code.
absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(),
                      absl::StrCat(context, ": ", status.message()));
}

Counter* LegacyIpcFallbacks(Metrics& metrics) {
  return metrics.GetCounter(
      "warmstart_cuda_legacy_ipc_fallback_total",
      "GPUs opened with cuMemAlloc and legacy IPC handles because VMM "
      "file-descriptor export is unavailable.");
}

// Pinned device memory on `device` that can be exported as a POSIX file
// descriptor.
CUmemAllocationProp VmmProperties(CUdevice device) {
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

// Why VMM with file-descriptor export cannot be used on `device`; empty
// when it can.
absl::StatusOr<std::string> VmmUnavailableReason(const CudaDriver& driver,
                                                 CUdevice device) {
  if (!driver.has_vmm()) return std::string("the driver lacks the VMM API");
  const CudaApi& api = driver.api();
  int vmm = 0;
  WS_RETURN_IF_ERROR(driver.ToStatus(
      api.device_get_attribute(
          &vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
          device),
      "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)"));
  if (vmm == 0) {
    return std::string("the GPU does not support virtual memory management");
  }
  int posix_fd = 0;
  WS_RETURN_IF_ERROR(driver.ToStatus(
      api.device_get_attribute(
          &posix_fd,
          CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
          device),
      "cuDeviceGetAttribute(HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)"));
  if (posix_fd == 0) {
    return std::string(
        "the GPU cannot export memory as POSIX file descriptors");
  }
  return std::string();
}

// A stream of the current context. Non-blocking: its work never waits for
// what anything else in the process puts on the legacy default stream.
absl::StatusOr<CudaStream> NewStream(const CudaDriver& driver) {
  CUstream stream = nullptr;
  WS_RETURN_IF_ERROR(driver.ToStatus(
      driver.api().stream_create(&stream, CU_STREAM_NON_BLOCKING),
      "cuStreamCreate"));
  return CudaStream(&driver, stream);
}

}  // namespace

CudaAllocation::CudaAllocation(CudaDevice* device, uint64_t size)
    : device_(device), size_(size) {
  device_->live_allocations_.fetch_add(1);
  device_->allocated_bytes_->Add(static_cast<int64_t>(size_));
}

CudaAllocation::~CudaAllocation() {
  {
    ScopedContext scope(*device_->driver_, device_->context_);
    if (!scope.status().ok()) {
      // Freeing is still attempted: each failure is logged below too.
      Logger("device")->error("free GPU memory: {}", scope.status());
    }
    // Undone in the reverse order of AllocateVmm: the mapping goes before
    // its address range, and the physical memory is released last.
    exported_fd_.reset();
    mapping_.reset();
    reservation_.reset();
    physical_.reset();
    linear_.reset();
  }
  device_->allocated_bytes_->Add(-static_cast<int64_t>(size_));
  device_->live_allocations_.fetch_sub(1);
}

ExportedMemory CudaAllocation::Export() const {
  ExportedMemory exported;
  exported.size = size_;
  if (vmm()) {
    exported.kind = ExportedMemory::Kind::kCudaVmmFd;
    exported.fd = exported_fd_.get();
  } else {
    exported.kind = ExportedMemory::Kind::kCudaIpcHandle;
    exported.ipc_handle = ipc_handle_;
  }
  return exported;
}

absl::StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::Create(
    const CudaDriver* driver, int ordinal, CudaDeviceOptions options) {
  if (options.copy_streams < 1 || options.copy_streams > kMaxCopyStreams) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device: copy_streams ", options.copy_streams,
                     " out of range 1 to ", kMaxCopyStreams));
  }
  WS_ASSIGN_OR_RETURN(CudaDeviceInfo info, driver->Device(ordinal));
  const CudaApi& api = driver->api();
  CUdevice device = 0;
  WS_RETURN_IF_ERROR(
      driver->ToStatus(api.device_get(&device, ordinal), "cuDeviceGet"));
  CUcontext context = nullptr;
  WS_RETURN_IF_ERROR(
      driver->ToStatus(api.device_primary_ctx_retain(&context, device),
                       "cuDevicePrimaryCtxRetain"));
  // From here on the device's destructor undoes whatever was set up.
  std::unique_ptr<CudaDevice> cuda(
      new CudaDevice(driver, std::move(info), device,
                     PrimaryContext(driver, device), context, options.metrics));
  {
    ScopedContext scope(*driver, context);
    WS_RETURN_IF_ERROR(scope.status());
    std::string reason = "allow_vmm is off";
    if (options.allow_vmm) {
      WS_ASSIGN_OR_RETURN(reason, VmmUnavailableReason(*driver, device));
      if (!reason.empty()) {
        static std::atomic<bool> warned{false};
        if (!warned.exchange(true)) {
          Logger("device")->warn(
              "CUDA VMM file-descriptor export unavailable ({}): GPU memory "
              "is exported as legacy IPC handles, which fail across "
              "containers without a shared PID namespace",
              reason);
        }
        LegacyIpcFallbacks(
            GivenOrUnexported(options.metrics, cuda->unexported_metrics_))
            ->Add();
      }
    }
    cuda->vmm_ = reason.empty();
    if (cuda->vmm_) {
      const CUmemAllocationProp prop = VmmProperties(device);
      size_t granularity = 0;
      WS_RETURN_IF_ERROR(driver->ToStatus(
          api.mem_get_allocation_granularity(&granularity, &prop,
                                             CU_MEM_ALLOC_GRANULARITY_MINIMUM),
          "cuMemGetAllocationGranularity"));
      cuda->granularity_ = granularity;
    } else {
      cuda->granularity_ = kLinearGranularity;
    }
    for (int i = 0; i < options.copy_streams; ++i) {
      WS_ASSIGN_OR_RETURN(CudaStream stream, NewStream(*driver));
      cuda->copy_streams_.push_back(std::move(stream));
    }
    WS_ASSIGN_OR_RETURN(cuda->zero_stream_, NewStream(*driver));
  }
  cuda->completion_thread_ =
      std::thread(&CudaDevice::CompleteCopies, cuda.get());
  absl::Status started;
  {
    absl::MutexLock lock(&cuda->mutex_);
    cuda->mutex_.Await(absl::Condition(&cuda->thread_started_));
    started = cuda->thread_status_;
  }
  WS_RETURN_IF_ERROR(started);
  Logger("device")->info(
      "CUDA device {} ({}, {}): {}, {} copy streams", ordinal, cuda->name(),
      cuda->uuid(),
      cuda->vmm_ ? "VMM allocations exported as file descriptors"
                 : "cuMemAlloc allocations exported as legacy IPC handles",
      options.copy_streams);
  return cuda;
}

CudaDevice::CudaDevice(const CudaDriver* driver, CudaDeviceInfo info,
                       CUdevice device, PrimaryContext retained,
                       CUcontext context, Metrics* metrics)
    : driver_(driver),
      info_(std::move(info)),
      device_(device),
      retained_(std::move(retained)),
      context_(context),
      allocated_bytes_(GivenOrUnexported(metrics, unexported_metrics_)
                           .GetGauge("warmstart_cuda_allocated_bytes",
                                     "GPU memory held in allocations.")),
      copied_bytes_(GivenOrUnexported(metrics, unexported_metrics_)
                        .GetCounter("warmstart_cuda_copied_bytes_total",
                                    "Bytes copied from host to GPU memory.")),
      copy_errors_(GivenOrUnexported(metrics, unexported_metrics_)
                       .GetCounter("warmstart_cuda_copy_errors_total",
                                   "Host-to-GPU copies that failed.")) {}

CudaDevice::~CudaDevice() {
  if (completion_thread_.joinable()) {
    {
      absl::MutexLock lock(&mutex_);
      stopping_ = true;
    }
    // The thread reports every copy still pending before it exits.
    completion_thread_.join();
  }
  WS_CHECK(live_allocations_.load() == 0 && registered_regions_.load() == 0)
      << "CudaDevice " << info_.uuid << " destroyed with "
      << live_allocations_.load() << " allocations and "
      << registered_regions_.load() << " registered host regions still alive";
  {
    ScopedContext scope(*driver_, context_);
    if (!scope.status().ok()) {
      Logger("device")->error("close CUDA device {}: {}", info_.uuid,
                              scope.status());
    }
    {
      absl::MutexLock lock(&mutex_);
      free_events_.clear();
    }
    copy_streams_.clear();
    zero_stream_.reset();
  }
  // Released once nothing of it is current on this thread any more.
  retained_.reset();
}

absl::StatusOr<std::unique_ptr<DeviceAllocation>> CudaDevice::Allocate(
    uint64_t bytes, const std::string& label) {
  const uint64_t size = RoundUp(std::max<uint64_t>(bytes, 1), granularity_);
  ScopedContext scope(*driver_, context_);
  absl::Status status = scope.status();
  std::unique_ptr<CudaAllocation> allocation;
  if (status.ok()) {
    allocation.reset(new CudaAllocation(this, size));
    status = vmm_ ? AllocateVmm(*allocation) : AllocateLinear(*allocation);
    if (status.ok()) status = Zero(*allocation);
  }
  if (!status.ok()) {
    return Annotate(
        status, absl::StrCat("GPU memory for ", label, " on ", info_.uuid, ": ",
                             size, " bytes (", bytes, " asked for)"));
  }
  return std::unique_ptr<DeviceAllocation>(std::move(allocation));
}

DeviceMemory CudaDevice::Memory() const {
  DeviceMemory memory;
  ScopedContext scope(*driver_, context_);
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  absl::Status status = scope.status();
  if (status.ok()) {
    status = driver_->ToStatus(
        driver_->api().mem_get_info(&free_bytes, &total_bytes), "cuMemGetInfo");
  }
  if (!status.ok()) {
    // The loader's allocations still fail cleanly when the GPU is full;
    // say once why the figure is missing.
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      Logger("device")->warn("free memory of {} unknown: {}", info_.uuid,
                             status.message());
    }
    return memory;
  }
  memory.free_bytes = free_bytes;
  memory.source = absl::StrCat("cuMemGetInfo on ", info_.uuid, " (", free_bytes,
                               " of ", total_bytes, " bytes free)");
  return memory;
}

absl::Status CudaDevice::Zero(const CudaAllocation& allocation) {
  // Neither cuMemCreate nor cuMemAlloc clears memory, and the loader relies
  // on zeros for meta tensors and padding. The dedicated stream keeps this
  // wait clear of the copies in flight.
  const CudaApi& api = driver_->api();
  WS_RETURN_IF_ERROR(driver_->ToStatus(
      api.memset_d8_async(allocation.pointer_, 0, allocation.size_,
                          zero_stream_.get()),
      "cuMemsetD8Async"));
  return driver_->ToStatus(api.stream_synchronize(zero_stream_.get()),
                           "cuStreamSynchronize");
}

absl::Status CudaDevice::AllocateVmm(CudaAllocation& allocation) {
  const CudaApi& api = driver_->api();
  const uint64_t size = allocation.size_;
  const CUmemAllocationProp prop = VmmProperties(device_);
  CUmemGenericAllocationHandle handle = 0;
  WS_RETURN_IF_ERROR(driver_->ToStatus(api.mem_create(&handle, size, &prop, 0),
                                       "cuMemCreate"));
  allocation.physical_ = PhysicalMemory(driver_, handle);
  CUdeviceptr pointer = 0;
  WS_RETURN_IF_ERROR(driver_->ToStatus(
      api.mem_address_reserve(&pointer, size, granularity_, 0, 0),
      "cuMemAddressReserve"));
  allocation.reservation_ = AddressReservation(driver_, {pointer, size});
  allocation.pointer_ = pointer;
  WS_RETURN_IF_ERROR(
      driver_->ToStatus(api.mem_map(pointer, size, 0, handle, 0), "cuMemMap"));
  allocation.mapping_ = Mapping(driver_, {pointer, size});
  // Read-write for the daemon, which fills it; clients ask for read-only
  // access when they map their import.
  CUmemAccessDesc access = {};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  WS_RETURN_IF_ERROR(driver_->ToStatus(
      api.mem_set_access(pointer, size, &access, 1), "cuMemSetAccess"));
  // Exported once, now, so that Export() cannot fail and every client
  // receives a duplicate of the same descriptor.
  int fd = -1;
  WS_RETURN_IF_ERROR(driver_->ToStatus(
      api.mem_export_to_shareable_handle(
          &fd, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
      "cuMemExportToShareableHandle"));
  allocation.exported_fd_.reset(fd);
  return absl::OkStatus();
}

absl::Status CudaDevice::AllocateLinear(CudaAllocation& allocation) {
  const CudaApi& api = driver_->api();
  CUdeviceptr pointer = 0;
  WS_RETURN_IF_ERROR(driver_->ToStatus(
      api.mem_alloc(&pointer, allocation.size_), "cuMemAlloc"));
  allocation.linear_ = LinearMemory(driver_, pointer);
  allocation.pointer_ = pointer;
  // A legacy handle names the whole allocation by its base pointer.
  CUipcMemHandle handle;
  WS_RETURN_IF_ERROR(driver_->ToStatus(api.ipc_get_mem_handle(&handle, pointer),
                                       "cuIpcGetMemHandle"));
  allocation.ipc_handle_.assign(handle.reserved, CU_IPC_HANDLE_SIZE);
  return absl::OkStatus();
}

absl::Status CudaDevice::RegisterHostMemory(void* data, uint64_t bytes) {
  ScopedContext scope(*driver_, context_);
  WS_RETURN_IF_ERROR(scope.status());
  // Portable: one load's slabs feed every device it is placed on (a slab
  // read once is copied to each GPU), and pinning seen only by this
  // device's context would make the other devices' copies pageable.
  const absl::Status status =
      driver_->ToStatus(driver_->api().mem_host_register(
                            data, bytes, CU_MEMHOSTREGISTER_PORTABLE),
                        "cuMemHostRegister");
  if (!status.ok()) {
    return Annotate(status,
                    absl::StrCat("pin ", bytes, " bytes of host memory"));
  }
  registered_regions_.fetch_add(1);
  return absl::OkStatus();
}

void CudaDevice::UnregisterHostMemory(void* data) {
  ScopedContext scope(*driver_, context_);
  if (!scope.status().ok()) {
    Logger("device")->error("unpin host memory: {}", scope.status());
  }
  const CUresult result = driver_->api().mem_host_unregister(data);
  if (result != CUDA_SUCCESS) {
    LogCudaReleaseFailure(*driver_, result, "cuMemHostUnregister");
  }
  registered_regions_.fetch_sub(1);
}

absl::StatusOr<CudaEvent> CudaDevice::TakeEvent() {
  if (!free_events_.empty()) {
    CudaEvent event = std::move(free_events_.back());
    free_events_.pop_back();
    return event;
  }
  // Blocking sync: the completion thread sleeps in cuEventSynchronize
  // rather than spinning on a core that reads and decryption need. No
  // timing: cheaper to record.
  CUevent event = nullptr;
  WS_RETURN_IF_ERROR(driver_->ToStatus(
      driver_->api().event_create(
          &event, CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING),
      "cuEventCreate"));
  return CudaEvent(driver_, event);
}

absl::Status CudaDevice::Enqueue(CUdeviceptr target, const char* source,
                                 uint64_t bytes,
                                 std::function<void(absl::Status)>& done,
                                 CUstream* unmarked) {
  const CudaApi& api = driver_->api();
  // One lock around issue, record and queueing keeps the completion queue
  // in stream order, so callbacks of one stream run in the order its copies
  // complete.
  absl::MutexLock lock(&mutex_);
  WS_ASSIGN_OR_RETURN(CudaEvent event, TakeEvent());
  const CUstream stream =
      copy_streams_[next_stream_++ % copy_streams_.size()].get();
  absl::Status status =
      driver_->ToStatus(api.memcpy_htod_async(target, source, bytes, stream),
                        "cuMemcpyHtoDAsync");
  if (!status.ok()) {
    free_events_.push_back(std::move(event));
    return status;
  }
  // The copy is queued now: from here a failure must wait for it before
  // `done` may release the source.
  status =
      driver_->ToStatus(api.event_record(event.get(), stream), "cuEventRecord");
  if (!status.ok()) {
    *unmarked = stream;
    return status;
  }
  pending_.push_back({std::move(event), bytes, std::move(done)});
  ++queued_;
  return absl::OkStatus();
}

void CudaDevice::CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                              const char* source, uint64_t bytes,
                              std::function<void(absl::Status)> done) {
  const CUdeviceptr target =
      static_cast<CudaAllocation&>(destination).device_pointer() + offset;
  absl::Status status;
  {
    ScopedContext scope(*driver_, context_);
    status = scope.status();
    if (status.ok()) {
      CUstream unmarked = nullptr;
      status = Enqueue(target, source, bytes, done, &unmarked);
      if (status.ok()) return;
      if (unmarked != nullptr) {
        // Nothing marks the copy's end: wait for everything on its stream.
        const CUresult result = driver_->api().stream_synchronize(unmarked);
        if (result != CUDA_SUCCESS) {
          LogCudaReleaseFailure(*driver_, result, "cuStreamSynchronize");
        }
      }
    }
  }
  copy_errors_->Add();
  done(Annotate(status, absl::StrCat("copy ", bytes, " bytes to ", info_.uuid,
                                     " at offset ", offset)));
}

bool CudaDevice::CompletionReady() const {
  return !pending_.empty() || stopping_;
}

void CudaDevice::CompleteCopies() {
  const CudaApi& api = driver_->api();
  // The thread only ever works in this device's context: set it once.
  const absl::Status current =
      driver_->ToStatus(api.ctx_set_current(context_), "cuCtxSetCurrent");
  {
    absl::MutexLock lock(&mutex_);
    thread_status_ = current;
    thread_started_ = true;
  }
  if (!current.ok()) return;
  while (true) {
    {
      PendingCopy copy;
      {
        absl::MutexLock lock(&mutex_);
        mutex_.Await(absl::Condition(this, &CudaDevice::CompletionReady));
        if (pending_.empty()) return;  // Stopping, and nothing left.
        copy = std::move(pending_.front());
        pending_.pop_front();
      }
      absl::Status status = driver_->ToStatus(
          api.event_synchronize(copy.event.get()), "cuEventSynchronize");
      if (status.ok()) {
        copied_bytes_->Add(copy.bytes);
        absl::MutexLock lock(&mutex_);
        free_events_.push_back(std::move(copy.event));
      } else {
        // An event that failed is not trusted again.
        copy.event.reset();
        copy_errors_->Add();
        status = Annotate(status, absl::StrCat("copy ", copy.bytes,
                                               " bytes to ", info_.uuid));
      }
      copy.done(std::move(status));
    }
    // Counted once the callback and everything it captured are gone.
    absl::MutexLock lock(&mutex_);
    ++reported_;
  }
}

absl::Status CudaDevice::Synchronize() {
  absl::MutexLock lock(&mutex_);
  const uint64_t target = queued_;
  auto reached = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return reported_ >= target;
  };
  mutex_.Await(absl::Condition(&reached));
  return absl::OkStatus();
}

absl::Status CudaDevice::CopyToHost(const DeviceAllocation& source,
                                    uint64_t offset, char* destination,
                                    uint64_t bytes) {
  const CUdeviceptr from =
      static_cast<const CudaAllocation&>(source).device_pointer() + offset;
  ScopedContext scope(*driver_, context_);
  WS_RETURN_IF_ERROR(scope.status());
  return driver_->ToStatus(driver_->api().memcpy_dtoh(destination, from, bytes),
                           "cuMemcpyDtoH");
}

}  // namespace warmstart
