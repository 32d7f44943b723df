#include "client/model_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/connection.h"
#include "client/cuda_import.h"
#include "client/session.h"
#include "common/scoped_fd.h"

namespace warmstart {
namespace client {
namespace {

bool CarriesFd(v1::MemoryKind kind) {
  return kind == v1::HOST_MEMFD || kind == v1::CUDA_VMM_FD;
}

// The repeated tensors of a daemon that sends no packed table, packed here
// so that everything after reads one form.
absl::StatusOr<std::string> PackRepeatedTensors(const v1::Lease& lease) {
  return EncodeTensorTable(lease.tensors_size(), [&lease](size_t i) {
    const v1::Tensor& tensor = lease.tensors(static_cast<int>(i));
    return TensorTableEntry{
        tensor.name(),
        tensor.dtype(),
        tensor.role(),
        absl::MakeConstSpan(tensor.shape().data(), tensor.shape_size()),
        tensor.nbytes(),
        tensor.offset()};
  });
}

}  // namespace

LeaseOnArena LeaseOnArena::Make() {
  // The reply of a model with thousands of tensors is hundreds of KiB:
  // blocks grow to 256 KiB instead of protobuf's default 8 KiB.
  google::protobuf::ArenaOptions options;
  options.start_block_size = 4096;
  options.max_block_size = 256 << 10;
  LeaseOnArena made;
  made.arena = std::make_unique<google::protobuf::Arena>(options);
  made.lease =
      google::protobuf::Arena::CreateMessage<v1::Lease>(made.arena.get());
  return made;
}

ModelMapping::ModelMapping() = default;

ModelMapping::~ModelMapping() { Release().IgnoreError(); }

ModelMapping::ModelMapping(ModelMapping&& other) noexcept { Swap(other); }

ModelMapping& ModelMapping::operator=(ModelMapping&& other) noexcept {
  if (this != &other) {
    Release().IgnoreError();
    Swap(other);
  }
  return *this;
}

void ModelMapping::Swap(ModelMapping& other) noexcept {
  std::swap(connection_, other.connection_);
  std::swap(session_, other.session_);
  std::swap(arena_, other.arena_);
  std::swap(lease_, other.lease_);
  std::swap(metadata_json_, other.metadata_json_);
  std::swap(table_, other.table_);
  std::swap(fds_, other.fds_);
  std::swap(regions_, other.regions_);
  std::swap(imports_, other.imports_);
  std::swap(allocations_, other.allocations_);
  std::swap(lazy_, other.lazy_);
  std::swap(held_, other.held_);
}

size_t ModelMapping::tensor_count() const {
  if (!held_) return 0;
  return allocations_.size() * table_.view().size();
}

TensorRecord ModelMapping::tensor_record(size_t index) const {
  // Every allocation holds the lease's whole tensor list, in one layout.
  const TensorTableView& table = table_.view();
  const size_t allocation = index / table.size();
  const size_t t = index % table.size();
  const MappedAllocation& mapped = allocations_[allocation];
  TensorRecord record;
  record.name = table.name(t);
  record.dtype = table.dtype(t);
  record.role = table.role(t);
  record.shape = table.shape(t);
  record.nbytes = table.nbytes(t);
  record.offset = table.offset(t);
  record.device_uuid =
      &lease().allocations(static_cast<int>(allocation)).device_uuid();
  // For GPU memory this is pointer arithmetic on a device address, which
  // the CPU never dereferences.
  record.data = mapped.base == nullptr ? nullptr : mapped.base + record.offset;
  record.read_only = mapped.read_only;
  return record;
}

const std::vector<TensorView>& ModelMapping::tensors() const {
  static const std::vector<TensorView>* const kNone =
      new std::vector<TensorView>();
  if (!held_ || lazy_ == nullptr) return *kNone;
  LazyViews& lazy = *lazy_;
  absl::call_once(lazy.views_built, [this, &lazy] {
    const size_t count = tensor_count();
    lazy.views.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      const TensorRecord record = tensor_record(i);
      TensorView view;
      view.name = std::string(record.name);
      view.dtype = std::string(record.dtype);
      view.shape.assign(record.shape.begin(), record.shape.end());
      view.nbytes = record.nbytes;
      view.role = std::string(record.role);
      view.device_uuid = *record.device_uuid;
      view.data = record.data;
      view.read_only = record.read_only;
      lazy.views.push_back(std::move(view));
    }
  });
  return lazy.views;
}

const TensorView* ModelMapping::Find(absl::string_view name,
                                     absl::string_view device_uuid) const {
  const std::vector<TensorView>& views = tensors();
  if (views.empty()) return nullptr;
  LazyViews& lazy = *lazy_;
  const TensorTableView& table = table_.view();
  absl::call_once(lazy.index_built, [&table, &lazy] {
    lazy.first_position.reserve(table.size());
    for (size_t t = 0; t < table.size(); ++t) {
      // try_emplace keeps the first of repeated names, as tensors() lists
      // them first.
      lazy.first_position.try_emplace(table.name(t), t);
    }
  });
  auto found = lazy.first_position.find(name);
  if (found == lazy.first_position.end()) return nullptr;
  const size_t per_allocation = table.size();
  for (size_t a = 0; a < allocations_.size(); ++a) {
    if (device_uuid.empty() ||
        lease().allocations(static_cast<int>(a)).device_uuid() == device_uuid) {
      return &views[a * per_allocation + found->second];
    }
  }
  return nullptr;
}

absl::StatusOr<std::string> ModelMapping::FilePath() const {
  const std::string& name = lease().model().name();
  if (!held_) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", name, ": the lease was released"));
  }
  if (lease().model().layout() != v1::FILE_IMAGE) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", name,
        " is held in the packed layout, which is not a file; load it with "
        "layout FILE_IMAGE (warmstartctl load --layout file_image) to open "
        "it as a file"));
  }
  for (const v1::Allocation& allocation : lease().allocations()) {
    if (allocation.kind() == v1::HOST_MEMFD &&
        allocation.fd_index() < fds_.size() &&
        fds_[allocation.fd_index()] >= 0) {
      return absl::StrCat("/proc/self/fd/", fds_[allocation.fd_index()]);
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "model ", name, " has no file image in host memory to open"));
}

absl::Status ModelMapping::Release() {
  if (!held_) return absl::OkStatus();
  held_ = false;
  lazy_.reset();
  table_ = TensorTable();
  allocations_.clear();
  // GPU memory is unmapped while the lease still keeps it allocated in the
  // daemon. A failure leaves nothing to retry; the lease goes regardless.
  absl::Status unmapped;
  for (internal::CudaImport& import : imports_) {
    absl::Status released = import.Release();
    if (unmapped.ok()) unmapped = std::move(released);
  }
  imports_.clear();
  for (const Region& region : regions_) ::munmap(region.base, region.size);
  regions_.clear();
  for (int fd : fds_) {
    if (fd >= 0) ::close(fd);
  }
  fds_.clear();
  absl::Status status =
      connection_->ReleaseLease(*session_, lease().lease_id());
  if (status.ok()) status = std::move(unmapped);
  // Dropping the session lets its socket close once nothing else uses it.
  session_.reset();
  connection_.reset();
  return status;
}

absl::StatusOr<ModelMapping> ModelMapping::Map(
    std::shared_ptr<internal::Connection> connection,
    std::shared_ptr<internal::Session> session, LeaseOnArena lease,
    std::vector<ScopedFd> fds) {
  ModelMapping mapping;
  mapping.connection_ = std::move(connection);
  mapping.session_ = std::move(session);
  mapping.arena_ = std::move(lease.arena);
  mapping.lease_ = lease.lease;
  if (!mapping.lease().metadata_json().empty()) {
    mapping.metadata_json_ = mapping.lease().metadata_json();
  }
  mapping.fds_.reserve(fds.size());
  for (ScopedFd& fd : fds) mapping.fds_.push_back(fd.release());
  mapping.held_ = true;
  // From here on the mapping owns everything: on error, Release() unmaps,
  // closes the descriptors and ends the lease.
  if (absl::Status read = mapping.ReadTensorTable(); !read.ok()) {
    mapping.Release().IgnoreError();
    return read;
  }
  if (absl::Status mapped = mapping.MapAllocations(); !mapped.ok()) {
    mapping.Release().IgnoreError();
    return mapped;
  }
  mapping.lazy_ = std::make_unique<LazyViews>();
  return mapping;
}

absl::Status ModelMapping::ReadTensorTable() {
  const v1::Lease& lease = this->lease();
  const auto malformed = [&lease](absl::string_view field,
                                  const absl::Status& status) {
    return absl::Status(status.code(),
                        absl::StrCat("model ", lease.model().name(), ": lease ",
                                     lease.lease_id(), ": the daemon's ", field,
                                     " (", status.message(), ")"));
  };
  if (lease.tensor_table().empty()) {
    // A daemon that predates the packed table.
    absl::StatusOr<std::string> packed = PackRepeatedTensors(lease);
    if (!packed.ok()) return malformed("Lease.tensors", packed.status());
    absl::StatusOr<TensorTable> table = TensorTable::Parse(*packed);
    if (!table.ok()) return malformed("Lease.tensors", table.status());
    table_ = *std::move(table);
    return absl::OkStatus();
  }
  if (lease.tensors_size() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", lease.model().name(), ": lease ", lease.lease_id(),
        ": the daemon sent both Lease.tensor_table and ", lease.tensors_size(),
        " Lease.tensors"));
  }
  absl::StatusOr<TensorTable> table = TensorTable::Parse(lease.tensor_table());
  if (!table.ok()) return malformed("Lease.tensor_table", table.status());
  table_ = *std::move(table);
  return absl::OkStatus();
}

absl::Status ModelMapping::MapAllocations() {
  const std::string& model = lease().model().name();
  int fd_allocations = 0;
  for (const v1::Allocation& allocation : lease().allocations()) {
    if (CarriesFd(allocation.kind())) ++fd_allocations;
  }
  if (static_cast<size_t>(fd_allocations) != fds_.size()) {
    return absl::DataLossError(
        absl::StrCat("lease ", lease().lease_id(), " on model ", model,
                     ": the daemon sent ", fds_.size(), " descriptors for ",
                     fd_allocations, " allocations that need one"));
  }
  const TensorTableView& table = table_.view();
  if (lease().allocations().empty() && table.size() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease ", lease().lease_id(), " on model ", model, ": ",
                     table.size(), " tensors but no allocations"));
  }
  for (int a = 0; a < lease().allocations_size(); ++a) {
    const v1::Allocation& allocation = lease().allocations(a);
    for (size_t t = 0; t < table.size(); ++t) {
      const uint64_t offset = table.offset(t);
      const uint64_t nbytes = table.nbytes(t);
      if (offset > allocation.size() || nbytes > allocation.size() - offset) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model ", model, ": tensor ", table.name(t), " (bytes ", offset,
            " + ", nbytes, ") lies outside its allocation of ",
            allocation.size(), " bytes on ", allocation.device_uuid()));
      }
    }
    if (CarriesFd(allocation.kind()) && allocation.fd_index() >= fds_.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lease ", lease().lease_id(), " on model ", model, ": allocation ", a,
          " names descriptor ", allocation.fd_index(), " of ", fds_.size()));
    }
    switch (allocation.kind()) {
      case v1::HOST_MEMFD:
      case v1::CUDA_VMM_FD:
      case v1::CUDA_IPC_HANDLE:
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "lease ", lease().lease_id(), " on model ", model, ": allocation ",
            a, " has unknown memory kind ", allocation.kind()));
    }
  }
  // Everything checked; now map.
  allocations_.reserve(lease().allocations_size());
  for (int a = 0; a < lease().allocations_size(); ++a) {
    const v1::Allocation& allocation = lease().allocations(a);
    if (allocation.kind() != v1::HOST_MEMFD) {
      if (absl::Status imported = ImportGpuAllocation(a); !imported.ok()) {
        return imported;
      }
      continue;
    }
    const int fd = fds_[allocation.fd_index()];
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      return absl::DataLossError(absl::StrCat("model ", model,
                                              ": fstat(descriptor ", a,
                                              "): ", std::strerror(errno)));
    }
    if (static_cast<uint64_t>(st.st_size) < allocation.size()) {
      return absl::DataLossError(
          absl::StrCat("model ", model, ": the descriptor for allocation ", a,
                       " holds ", st.st_size, " bytes, fewer than the ",
                       allocation.size(), " the lease names"));
    }
    // A memfd that could shrink would turn reads into SIGBUS, one that
    // could be written would let the daemon change weights under us.
    const int seals = ::fcntl(fd, F_GET_SEALS);
    const bool unwritable =
        seals >= 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) != 0;
    if (seals < 0 || (seals & F_SEAL_SHRINK) == 0 || !unwritable) {
      return absl::DataLossError(absl::StrCat(
          "model ", model, ": the memfd for allocation ", a,
          " is not sealed against shrinking and writing; not mapping it"));
    }
    const char* base = nullptr;
    if (allocation.size() > 0) {
      void* address =
          ::mmap(nullptr, allocation.size(), PROT_READ, MAP_SHARED, fd, 0);
      if (address == MAP_FAILED) {
        const int error = errno;
        return absl::ResourceExhaustedError(absl::StrCat(
            "model ", model, ": mmap of ", allocation.size(),
            " bytes (allocation ", a, "): ", std::strerror(error)));
      }
      regions_.push_back({address, allocation.size()});
      base = static_cast<const char*>(address);
    }
    allocations_.push_back({base, /*read_only=*/true});
  }
  return absl::OkStatus();
}

absl::Status ModelMapping::ImportGpuAllocation(int index) {
  const v1::Allocation& allocation = lease().allocations(index);
  // The import holds the memory by itself: the descriptor would only count
  // against this process's limit until Release().
  ScopedFd fd;
  if (allocation.kind() == v1::CUDA_VMM_FD) {
    fd.reset(std::exchange(fds_[allocation.fd_index()], -1));
  }
  if (allocation.size() == 0) {
    allocations_.push_back({nullptr, /*read_only=*/true});
    return absl::OkStatus();
  }
  absl::StatusOr<internal::CudaImport> imported;
  if (allocation.kind() == v1::CUDA_VMM_FD) {
    imported = internal::CudaImport::ImportVmmFd(allocation.device_uuid(),
                                                 allocation.size(), fd.get());
  } else {
    imported = internal::CudaImport::OpenIpcHandle(
        allocation.device_uuid(), allocation.size(), allocation.ipc_handle());
  }
  if (!imported.ok()) {
    return absl::Status(
        imported.status().code(),
        absl::StrCat("model ", lease().model().name(), ", allocation ", index,
                     ": ", imported.status().message()));
  }
  imports_.push_back(*std::move(imported));
  const internal::CudaImport& import = imports_.back();
  allocations_.push_back({reinterpret_cast<const char*>(
                              static_cast<uintptr_t>(import.device_pointer())),
                          import.read_only()});
  return absl::OkStatus();
}

}  // namespace client
}  // namespace warmstart
