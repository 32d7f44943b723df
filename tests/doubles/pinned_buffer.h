// PinnedBuffer: page-aligned host memory registered (pinned) with a Device
// for its lifetime, as a copy source in device tests.
//
// Ownership: owns the mapping and its registration (unregistered and
// unmapped when destroyed); neither copyable nor movable.
// Thread safety: not thread-safe; copies may read data() from any thread
// while the buffer lives.
#ifndef WARMSTART_TESTS_DOUBLES_PINNED_BUFFER_H_
#define WARMSTART_TESTS_DOUBLES_PINNED_BUFFER_H_

#include <sys/mman.h>

#include <cstdint>

#include "common/testing/status_matchers.h"
#include "daemon/device/device.h"

namespace warmstart {
namespace testing {

class PinnedBuffer {
 public:
  // REQUIRES: `device` outlives the buffer.
  PinnedBuffer(Device* device, uint64_t bytes)
      : device_(device), bytes_(bytes) {
    void* data = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(data, MAP_FAILED);
    data_ = static_cast<char*>(data);
    EXPECT_OK(device_->RegisterHostMemory(data_, bytes_));
  }
  ~PinnedBuffer() {
    device_->UnregisterHostMemory(data_);
    ::munmap(data_, bytes_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  char* data() { return data_; }

 private:
  Device* const device_;
  const uint64_t bytes_;
  char* data_ = nullptr;
};

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_TESTS_DOUBLES_PINNED_BUFFER_H_
