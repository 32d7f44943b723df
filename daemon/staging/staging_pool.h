// StagingPool: a fixed set of page-aligned, pinned host slabs that reads
// land in before they are copied to the device.
//
// Resident only while loads use it, or for a while after. Create reserves
// the address range and nothing more; MakeResident (the loader calls it when
// a load starts; the daemon also once at start)
// touches the memory, pins it slab by slab with the device (pinning is slow:
// 1-2 GB/s, and a 16 GiB pin in one call has taken 8 s) and registers it
// with the read engine as fixed buffers. ReleaseIfQuiet, called periodically
// by the daemon, undoes all three once no load has used the pool for
// `release_after`, so that an idle daemon holds no staging memory. Its size
// bounds the daemon's host memory for loading whatever the model size: when
// every slab is in use, Acquire waits for one to come back; nothing
// allocates more.
//
// Thread safety: thread-safe. Slabs may be returned from any thread.
#ifndef WARMSTART_DAEMON_STAGING_STAGING_POOL_H_
#define WARMSTART_DAEMON_STAGING_STAGING_POOL_H_

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/device/device.h"
#include "daemon/io/read_engine.h"
#include "daemon/io/read_memory.h"

namespace warmstart {

struct StagingPoolOptions {
  uint64_t total_bytes = uint64_t{256} << 20;
  // Each slab is one unit of reading and copying; a multiple of 4096 and at
  // least as large as one encrypted chunk (2 MiB) plus O_DIRECT alignment.
  uint64_t slab_bytes = uint64_t{16} << 20;
  // How long the pool stays resident after its last Residency ends;
  // ReleaseIfQuiet returns the memory after that. InfiniteDuration: kept.
  absl::Duration release_after = absl::Seconds(30);
  // The time source ReleaseIfQuiet judges by (tests inject their own).
  std::function<absl::Time()> now = [] { return absl::Now(); };
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

  // A claim that keeps the pool resident: Acquire and TryAcquire need one
  // to be live. Move-only; the quiet period starts when the last one ends.
  class Residency {
   public:
    Residency() = default;
    ~Residency() { End(); }
    Residency(Residency&& other) noexcept : pool_(other.pool_) {
      other.pool_ = nullptr;
    }
    Residency& operator=(Residency&& other) noexcept;
    Residency(const Residency&) = delete;
    Residency& operator=(const Residency&) = delete;

   private:
    friend class StagingPool;
    explicit Residency(StagingPool* pool) : pool_(pool) {}
    void End();

    StagingPool* pool_ = nullptr;
  };

  // Reserves the pool's address range; no memory is touched or pinned yet.
  // Fails with InvalidArgument on sizes that are not multiples of 4096 or
  // hold no slab, or ResourceExhausted when the range cannot be mapped.
  // `device` and `engine` (may be null: no fixed buffers) must outlive the
  // pool; the pool alone registers buffers with `engine`.
  static absl::StatusOr<std::unique_ptr<StagingPool>> Create(
      const StagingPoolOptions& options, Device* device,
      ReadEngine* engine = nullptr);

  // REQUIRES: every slab has been returned.
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // Makes the pool resident if it is not (touches its pages, pins them
  // with the device, registers them with the engine) and returns a claim
  // that keeps it so. Errors: the device's error when pinning fails (named
  // "pin slab I of N"); nothing stays pinned or touched then.
  absl::StatusOr<Residency> MakeResident();

  // Returns the memory when the pool is resident, no Residency is live and
  // the last one ended `release_after` ago or more: unregisters the engine's
  // fixed buffers and the device's pins, then drops the pages
  // (MADV_DONTNEED). Returns whether it released. Any thread, any time.
  bool ReleaseIfQuiet();

  // Blocks until a slab is free and lends it.
  // REQUIRES: a live Residency (aborts otherwise: a slab of a released pool
  // would be unpinned memory the engine no longer knows).
  Slab Acquire();
  // Lends a free slab, or returns an invalid one when none is free.
  // REQUIRES: a live Residency.
  Slab TryAcquire();

  // One entry per slab, in index order.
  std::vector<iovec> Regions() const;

  int slab_count() const { return static_cast<int>(slab_count_); }
  uint64_t slab_bytes() const { return slab_bytes_; }
  // The slabs' memory (ReadMemory): whether it is advised for transparent
  // huge pages, and how many of its bytes are in them now (nullopt when
  // /proc/self/smaps cannot be read). For the benchmark's report.
  bool huge_page_advised() const { return memory_.advised(); }
  std::optional<uint64_t> HugePageBytes() const {
    return memory_.HugePageBytes();
  }
  int free_slabs() const;
  // slab_count() * slab_bytes() while resident, else 0.
  uint64_t resident_bytes() const;

 private:
  StagingPool(const StagingPoolOptions& options, Device* device,
              ReadEngine* engine, ReadMemory memory, uint64_t slab_count);
  absl::Status BecomeResidentLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void UnpinLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void CheckResidentLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  Slab LendLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Release(int index);
  void EndResidency();

  Device* const device_;
  ReadEngine* const engine_;  // May be null.
  ReadMemory memory_;         // Never reassigned: base_ points into it.
  char* const base_;          // memory_.data()
  const uint64_t slab_bytes_;
  const uint64_t slab_count_;
  const absl::Duration release_after_;
  const std::function<absl::Time()> now_;

  mutable absl::Mutex mutex_;
  std::vector<int> free_ ABSL_GUARDED_BY(mutex_);
  // Slabs pinned with the device (all of them while resident).
  uint64_t pinned_ ABSL_GUARDED_BY(mutex_) = 0;
  bool resident_ ABSL_GUARDED_BY(mutex_) = false;
  int residencies_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Time last_used_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_STAGING_STAGING_POOL_H_
