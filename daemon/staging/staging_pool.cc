#include "daemon/staging/staging_pool.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/errno_status.h"
#include "common/status_macros.h"

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

StagingPool::Residency& StagingPool::Residency::operator=(
    Residency&& other) noexcept {
  if (this != &other) {
    End();
    pool_ = other.pool_;
    other.pool_ = nullptr;
  }
  return *this;
}

void StagingPool::Residency::End() {
  if (pool_ != nullptr) pool_->EndResidency();
  pool_ = nullptr;
}

absl::StatusOr<std::unique_ptr<StagingPool>> StagingPool::Create(
    const StagingPoolOptions& options, Device* device, ReadEngine* engine) {
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
  // Address space only: the pages are touched when a load needs them, so
  // an idle daemon holds no staging memory.
  // In huge pages where the system allows them: O_DIRECT reads into them
  // become larger block requests (ReadMemory).
  absl::StatusOr<ReadMemory> memory = ReadMemory::Map(bytes);
  if (!memory.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("staging pool: ", memory.status().message()));
  }
  return std::unique_ptr<StagingPool>(
      new StagingPool(options, device, engine, *std::move(memory), count));
}

StagingPool::StagingPool(const StagingPoolOptions& options, Device* device,
                         ReadEngine* engine, ReadMemory memory,
                         uint64_t slab_count)
    : device_(device),
      engine_(engine),
      memory_(std::move(memory)),
      base_(memory_.data()),
      slab_bytes_(options.slab_bytes),
      slab_count_(slab_count),
      release_after_(options.release_after),
      now_(options.now) {
  absl::MutexLock lock(&mutex_);
  // Lent from the back, so slab 0 goes first.
  for (uint64_t i = slab_count; i > 0; --i) {
    free_.push_back(static_cast<int>(i - 1));
  }
}

StagingPool::~StagingPool() {
  absl::MutexLock lock(&mutex_);
  WS_CHECK(free_.size() == slab_count_ && residencies_ == 0)
      << "StagingPool destroyed with " << slab_count_ - free_.size() << " of "
      << slab_count_ << " slabs on loan and " << residencies_
      << " residencies live";
  if (resident_ && engine_ != nullptr) engine_->UnregisterBuffers();
  UnpinLocked();
}

absl::StatusOr<StagingPool::Residency> StagingPool::MakeResident() {
  absl::MutexLock lock(&mutex_);
  if (!resident_) WS_RETURN_IF_ERROR(BecomeResidentLocked());
  ++residencies_;
  return Residency(this);
}

absl::Status StagingPool::BecomeResidentLocked() {
  const uint64_t bytes = slab_bytes_ * slab_count_;
  // Touching every page now, once, means no read into a slab pays a page
  // fault. MADV_POPULATE_WRITE (Linux 5.14) does it a slab per call: each
  // call holds the process's mmap lock, which the gRPC threads need to
  // start (their stacks are mappings), so it is not held for the whole
  // pool at once. Older kernels get a write per page.
  for (uint64_t i = 0; i < slab_count_; ++i) {
    memory_.Populate(i * slab_bytes_, slab_bytes_);
  }
  for (uint64_t i = 0; i < slab_count_; ++i) {
    absl::Status status =
        device_->RegisterHostMemory(base_ + i * slab_bytes_, slab_bytes_);
    if (!status.ok()) {
      UnpinLocked();
      ::madvise(base_, bytes, MADV_DONTNEED);
      return absl::Status(status.code(),
                          absl::StrCat("staging pool: pin slab ", i, " of ",
                                       slab_count_, ": ", status.message()));
    }
    ++pinned_;
  }
  if (engine_ != nullptr) {
    absl::Status status = engine_->RegisterBuffers(Regions());
    if (!status.ok()) {
      UnpinLocked();
      ::madvise(base_, bytes, MADV_DONTNEED);
      return absl::Status(status.code(),
                          absl::StrCat("staging pool: register with the read "
                                       "engine: ",
                                       status.message()));
    }
  }
  resident_ = true;
  return absl::OkStatus();
}

void StagingPool::UnpinLocked() {
  for (uint64_t i = 0; i < pinned_; ++i) {
    device_->UnregisterHostMemory(base_ + i * slab_bytes_);
  }
  pinned_ = 0;
}

void StagingPool::EndResidency() {
  absl::MutexLock lock(&mutex_);
  --residencies_;
  if (residencies_ == 0) last_used_ = now_();
}

bool StagingPool::ReleaseIfQuiet() {
  absl::MutexLock lock(&mutex_);
  if (!resident_ || residencies_ != 0 || free_.size() != slab_count_ ||
      now_() - last_used_ < release_after_) {
    return false;
  }
  // The engine lets go of its pinned pages first: until then they would
  // stay allocated behind the mapping, and a later read into a fixed buffer
  // would land in them instead of the fresh pages.
  if (engine_ != nullptr) engine_->UnregisterBuffers();
  UnpinLocked();
  // Private anonymous memory: the pages go back to the kernel now, and the
  // next touch gets zeroed ones.
  ::madvise(base_, slab_bytes_ * slab_count_, MADV_DONTNEED);
  resident_ = false;
  return true;
}

uint64_t StagingPool::resident_bytes() const {
  absl::MutexLock lock(&mutex_);
  return resident_ ? slab_bytes_ * slab_count_ : 0;
}

void StagingPool::CheckResidentLocked() const {
  WS_CHECK(residencies_ != 0)
      << "StagingPool: a slab was asked for without a Residency";
}

StagingPool::Slab StagingPool::Acquire() {
  absl::MutexLock lock(&mutex_);
  CheckResidentLocked();
  mutex_.Await(absl::Condition(
      +[](std::vector<int>* free) { return !free->empty(); }, &free_));
  return LendLocked();
}

StagingPool::Slab StagingPool::TryAcquire() {
  absl::MutexLock lock(&mutex_);
  CheckResidentLocked();
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
