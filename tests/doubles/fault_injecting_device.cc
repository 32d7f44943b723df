#include "tests/doubles/fault_injecting_device.h"

#include "absl/strings/str_cat.h"

namespace warmstart {
namespace testing {
namespace {

// Forwards to the real allocation and counts itself out when destroyed.
class CountedAllocation : public DeviceAllocation {
 public:
  CountedAllocation(std::unique_ptr<DeviceAllocation> inner,
                    std::atomic<int>* live)
      : inner_(std::move(inner)), live_(live) {
    live_->fetch_add(1);
  }
  ~CountedAllocation() override { live_->fetch_sub(1); }

  uint64_t size() const override { return inner_->size(); }
  char* host_data() override { return inner_->host_data(); }
  absl::Status WaitWritable(uint64_t end) override {
    return inner_->WaitWritable(end);
  }
  bool PrefersCopies() const override { return inner_->PrefersCopies(); }
  absl::Status Seal() override { return inner_->Seal(); }
  ExportedMemory Export() const override { return inner_->Export(); }
  DeviceAllocation& inner() { return *inner_; }

 private:
  std::unique_ptr<DeviceAllocation> inner_;
  std::atomic<int>* live_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceAllocation>>
FaultInjectingDevice::Allocate(uint64_t bytes, const std::string& label) {
  if (faults_.hold_allocations != nullptr) {
    faults_.hold_allocations->WaitForNotification();
  }
  if (++allocation_calls_ == faults_.fail_allocation_at) {
    return absl::ResourceExhaustedError(
        absl::StrCat("injected: out of device memory allocating ", bytes,
                     " bytes for ", label));
  }
  auto inner = inner_->Allocate(bytes, label);
  if (!inner.ok()) return inner.status();
  return std::unique_ptr<DeviceAllocation>(
      new CountedAllocation(std::move(*inner), &live_allocations_));
}

absl::StatusOr<std::unique_ptr<DeviceAllocation>>
FaultInjectingDevice::AllocateFileImage(uint64_t bytes,
                                        const std::string& label) {
  if (++allocation_calls_ == faults_.fail_allocation_at) {
    return absl::ResourceExhaustedError(
        absl::StrCat("injected: out of device memory allocating ", bytes,
                     " bytes for ", label));
  }
  auto inner = inner_->AllocateFileImage(bytes, label);
  if (!inner.ok()) return inner.status();
  return std::unique_ptr<DeviceAllocation>(
      new CountedAllocation(std::move(*inner), &live_allocations_));
}

absl::Status FaultInjectingDevice::RegisterHostMemory(void* data,
                                                      uint64_t bytes) {
  if (++register_calls_ == faults_.fail_register_at) {
    return absl::InternalError("injected: cannot pin host memory");
  }
  absl::Status status = inner_->RegisterHostMemory(data, bytes);
  if (status.ok()) ++registered_;
  return status;
}

void FaultInjectingDevice::UnregisterHostMemory(void* data) {
  --registered_;
  inner_->UnregisterHostMemory(data);
}

void FaultInjectingDevice::CopyFromHost(
    DeviceAllocation& destination, uint64_t offset, const char* source,
    uint64_t bytes, std::function<void(absl::Status)> done) {
  if (++copies_ == faults_.fail_copy_at) {
    done(absl::InternalError(
        absl::StrCat("injected: copy of ", bytes, " bytes failed")));
    return;
  }
  inner_->CopyFromHost(static_cast<CountedAllocation&>(destination).inner(),
                       offset, source, bytes, std::move(done));
}

}  // namespace testing
}  // namespace warmstart
