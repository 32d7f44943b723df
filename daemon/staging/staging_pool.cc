#include "daemon/staging/staging_pool.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/errno_status.h"

namespace warmstart {
namespace {

constexpr uint64_t kPageBytes = 4096;

}  // namespace

StagingPool::Slab& StagingPool::Slab::operator=(Slab&& other) noexcept {
  if (this != &other) {
    Return();
    pool_ = other.pool_;
    data_ = other.data_;
    size_ = other.size_;
    index_ = other.index_;
    other.pool_ = nullptr;
    other.data_ = nullptr;
    other.size_ = 0;
    other.index_ = -1;
  }
  return *this;
}

void StagingPool::Slab::Return() {
  if (pool_ != nullptr) pool_->Release(index_);
  pool_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  index_ = -1;
}

absl::StatusOr<std::unique_ptr<StagingPool>> StagingPool::Create(
    const StagingPoolOptions& options, Device* device) {
  if (options.slab_bytes == 0 || options.slab_bytes % kPageBytes != 0 ||
      options.total_bytes % kPageBytes != 0 ||
      options.total_bytes < options.slab_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging pool: ", options.total_bytes, " bytes in slabs of ",
        options.slab_bytes,
        " bytes: both must be multiples of 4096 and hold at least one slab"));
  }
  const uint64_t count = options.total_bytes / options.slab_bytes;
  const uint64_t bytes = count * options.slab_bytes;
  // MAP_POPULATE touches every page now, once, so no read into a slab ever
  // pays a page fault.
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (base == MAP_FAILED) {
    absl::Status status = ErrnoToStatus(
        errno, absl::StrCat("staging pool: map ", bytes, " bytes"));
    return absl::ResourceExhaustedError(status.message());
  }
  std::unique_ptr<StagingPool> pool(new StagingPool(
      device, static_cast<char*>(base), options.slab_bytes, count));
  for (uint64_t i = 0; i < count; ++i) {
    absl::Status status = device->RegisterHostMemory(
        pool->base_ + i * options.slab_bytes, options.slab_bytes);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("staging pool: pin slab ", i, " of ",
                                       count, ": ", status.message()));
    }
    ++pool->registered_;
  }
  return pool;
}

StagingPool::StagingPool(Device* device, char* base, uint64_t slab_bytes,
                         uint64_t slab_count)
    : device_(device),
      base_(base),
      slab_bytes_(slab_bytes),
      slab_count_(slab_count) {
  absl::MutexLock lock(&mutex_);
  // Lent from the back, so slab 0 goes first.
  for (uint64_t i = slab_count; i > 0; --i) {
    free_.push_back(static_cast<int>(i - 1));
  }
}

StagingPool::~StagingPool() {
  {
    absl::MutexLock lock(&mutex_);
    WS_CHECK(free_.size() == slab_count_)
        << "StagingPool destroyed with " << slab_count_ - free_.size() << " of "
        << slab_count_ << " slabs on loan";
  }
  for (uint64_t i = 0; i < registered_; ++i) {
    device_->UnregisterHostMemory(base_ + i * slab_bytes_);
  }
  ::munmap(base_, slab_bytes_ * slab_count_);
}

StagingPool::Slab StagingPool::Acquire() {
  absl::MutexLock lock(&mutex_);
  mutex_.Await(absl::Condition(
      +[](std::vector<int>* free) { return !free->empty(); }, &free_));
  return LendLocked();
}

StagingPool::Slab StagingPool::TryAcquire() {
  absl::MutexLock lock(&mutex_);
  if (free_.empty()) return Slab();
  return LendLocked();
}

StagingPool::Slab StagingPool::LendLocked() {
  Slab slab;
  slab.pool_ = this;
  slab.index_ = free_.back();
  free_.pop_back();
  slab.data_ = base_ + static_cast<uint64_t>(slab.index_) * slab_bytes_;
  slab.size_ = slab_bytes_;
  return slab;
}

void StagingPool::Release(int index) {
  absl::MutexLock lock(&mutex_);
  free_.push_back(index);
}

std::vector<iovec> StagingPool::Regions() const {
  std::vector<iovec> regions;
  for (uint64_t i = 0; i < slab_count_; ++i) {
    regions.push_back(iovec{base_ + i * slab_bytes_, slab_bytes_});
  }
  return regions;
}

int StagingPool::free_slabs() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(free_.size());
}

}  // namespace warmstart
