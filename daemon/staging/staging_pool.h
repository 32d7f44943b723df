// StagingPool: a fixed set of page-aligned, pinned host slabs that reads
// land in before they are copied to the device.
//
// Allocated, touched and pinned once at start (pinning is slow: 1-2 GB/s,
// and a 16 GiB pin in one call has taken 8 s, so it is done a slab at a
// time). Its size bounds the daemon's host memory for loading whatever the
// model size: when every slab is in use, Acquire waits for one to come back;
// nothing allocates more.
//
// Thread safety: thread-safe. Slabs may be returned from any thread.
#ifndef WARMSTART_DAEMON_STAGING_STAGING_POOL_H_
#define WARMSTART_DAEMON_STAGING_STAGING_POOL_H_

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/device/device.h"

namespace warmstart {

struct StagingPoolOptions {
  uint64_t total_bytes = uint64_t{256} << 20;
  // Each slab is one unit of reading and copying; a multiple of 4096 and at
  // least as large as one encrypted chunk (2 MiB) plus O_DIRECT alignment.
  uint64_t slab_bytes = uint64_t{16} << 20;
};

class StagingPool {
 public:
  // A slab on loan. Move-only; returns itself to the pool when destroyed.
  class Slab {
   public:
    Slab() = default;
    ~Slab() { Return(); }
    Slab(Slab&& other) noexcept { *this = std::move(other); }
    Slab& operator=(Slab&& other) noexcept;
    Slab(const Slab&) = delete;
    Slab& operator=(const Slab&) = delete;

    char* data() const { return data_; }
    uint64_t size() const { return size_; }
    int index() const { return index_; }
    bool valid() const { return pool_ != nullptr; }

   private:
    friend class StagingPool;
    void Return();

    StagingPool* pool_ = nullptr;
    char* data_ = nullptr;
    uint64_t size_ = 0;
    int index_ = -1;
  };

  // Maps, touches and registers (Device::RegisterHostMemory, slab by slab)
  // the pool. Fails with InvalidArgument on sizes that are not multiples of
  // 4096 or hold no slab, ResourceExhausted when memory cannot be had, or
  // the device's error when pinning fails. `device` must outlive the pool.
  static absl::StatusOr<std::unique_ptr<StagingPool>> Create(
      const StagingPoolOptions& options, Device* device);

  // REQUIRES: every slab has been returned.
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // Blocks until a slab is free and lends it.
  Slab Acquire();
  // Lends a free slab, or returns an invalid one when none is free.
  Slab TryAcquire();

  // One entry per slab, in index order (for io_uring buffer registration).
  std::vector<iovec> Regions() const;

  int slab_count() const { return static_cast<int>(slab_count_); }
  uint64_t slab_bytes() const { return slab_bytes_; }
  int free_slabs() const;

 private:
  StagingPool(Device* device, char* base, uint64_t slab_bytes,
              uint64_t slab_count);
  Slab LendLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Release(int index);

  Device* const device_;
  char* const base_;
  const uint64_t slab_bytes_;
  const uint64_t slab_count_;
  uint64_t registered_ = 0;  // Slabs registered with the device so far.

  mutable absl::Mutex mutex_;
  std::vector<int> free_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_STAGING_STAGING_POOL_H_
