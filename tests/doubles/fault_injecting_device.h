// FaultInjectingDevice: a Device for tests that wraps another and fails on
// request (out of memory at the N-th allocation, a pin or copy error at the
// N-th call), holds allocations back on request, and counts what is alive so
// tests can check that everything was given back.
//
// Ownership: borrows the inner device (it must outlive this one); the
// allocations it returns own the inner device's allocations and must not
// outlive this device (they count themselves in it).
// Thread safety: thread-safe.
#ifndef WARMSTART_TESTS_DOUBLES_FAULT_INJECTING_DEVICE_H_
#define WARMSTART_TESTS_DOUBLES_FAULT_INJECTING_DEVICE_H_

#include <atomic>
#include <functional>
#include <memory>

#include "absl/synchronization/notification.h"
#include "daemon/device/device.h"

namespace warmstart {
namespace testing {

struct DeviceFaults {
  int fail_allocation_at = 0;  // 1-based; 0 never. ResourceExhausted.
  int fail_register_at = 0;    // 1-based; 0 never. Internal.
  int fail_copy_at = 0;        // 1-based; 0 never. Internal (via `done`).
  // When set, every allocation waits until it is notified: a test holds a
  // load in progress (room reserved, nothing read yet) for as long as it
  // needs. Not owned; must outlive the allocations.
  absl::Notification* hold_allocations = nullptr;
  // When set, what Memory() reports (else the inner device's figures).
  std::function<DeviceMemory()> memory;
};

class FaultInjectingDevice : public Device {
 public:
  // `inner` does the real work and must outlive this device.
  FaultInjectingDevice(Device* inner, DeviceFaults faults)
      : inner_(inner), faults_(faults) {}

  const std::string& uuid() const override { return inner_->uuid(); }
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> Allocate(
      uint64_t bytes, const std::string& label) override;
  // The same faults as Allocate (allocation calls are counted together).
  absl::StatusOr<std::unique_ptr<DeviceAllocation>> AllocateFileImage(
      uint64_t bytes, const std::string& label) override;
  absl::Status RegisterHostMemory(void* data, uint64_t bytes) override;
  void UnregisterHostMemory(void* data) override;
  void CopyFromHost(DeviceAllocation& destination, uint64_t offset,
                    const char* source, uint64_t bytes,
                    std::function<void(absl::Status)> done) override;
  absl::Status Synchronize() override { return inner_->Synchronize(); }
  DeviceMemory Memory() const override {
    return faults_.memory ? faults_.memory() : inner_->Memory();
  }

  int live_allocations() const { return live_allocations_.load(); }
  int registered_regions() const { return registered_.load(); }
  int copies() const { return copies_.load(); }

 private:
  Device* const inner_;
  const DeviceFaults faults_;
  std::atomic<int> allocation_calls_{0};
  std::atomic<int> register_calls_{0};
  std::atomic<int> copies_{0};
  std::atomic<int> live_allocations_{0};
  std::atomic<int> registered_{0};
};

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_TESTS_DOUBLES_FAULT_INJECTING_DEVICE_H_
