// A model's weights as mapped into this process: the lease that keeps them
// allocated in the daemon, the mappings, and views of the tensors.
#ifndef WARMSTART_CLIENT_MODEL_MAPPING_H_
#define WARMSTART_CLIENT_MODEL_MAPPING_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/tensor_table.h"
#include "google/protobuf/arena.h"
#include "proto/warmstart.pb.h"

namespace warmstart {

class ScopedFd;

namespace client {

namespace internal {
class Connection;
class CudaImport;
class Session;
}  // namespace internal

// One tensor in one allocation (one device's copy of the model). Plain
// data; `data` points into memory owned by the ModelMapping it came from.
struct TensorView {
  std::string name;
  // As `warmstartctl inspect` names it ("F32", "BF16", "Q4_K", ...).
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  // What the tensor is to its module where the format records it
  // ("parameter", "buffer", "state_dict": tensorizer), else empty.
  std::string role;
  // "host", or the GPU's UUID ("GPU-...").
  std::string device_uuid;
  // The tensor's first byte. Host memory: this process may read it;
  // writing faults (the mapping is PROT_READ, the memfd sealed). GPU
  // memory: a device pointer (a CUdeviceptr) mapped in the device's
  // primary context, the one the CUDA runtime (and so PyTorch) uses; for
  // kernels and cuMemcpy*, not for the CPU. Null for an empty allocation.
  const void* data = nullptr;
  // Whether this process's mapping refuses writes. Host memory: always.
  // GPU memory imported from a CUDA VMM descriptor: when the driver granted
  // read-only access (CU_MEM_ACCESS_FLAGS_PROT_READ); where it refused,
  // the memory is mapped read-write and this is false. GPU memory opened
  // from a legacy CUDA IPC handle: never (that API has no read-only mode).
  // Writing is wrong either way: every worker shares these weights.
  bool read_only = true;
};

// Tensor `index` of ModelMapping::tensors() without a TensorView: the
// lease's own record of it (read in place from the mapping's packed tensor
// table) and where it lies in this process. References into the
// ModelMapping, valid until its Release() (or destruction).
struct TensorRecord {
  // As the daemon sent them (v1::Tensor's fields). Each string's data is
  // followed by a NUL, so .data() is also a C string.
  absl::string_view name;
  absl::string_view dtype;
  absl::string_view role;
  absl::Span<const uint64_t> shape;
  uint64_t nbytes = 0;
  uint64_t offset = 0;
  // "host", or the GPU's UUID ("GPU-...").
  const std::string* device_uuid = nullptr;
  // As TensorView::data and TensorView::read_only.
  const void* data = nullptr;
  bool read_only = true;
};

// A v1::Lease parsed on its own arena: every tensor record, string and
// shape of a reply of thousands of tensors lands in a few large blocks
// instead of an allocation each. Move-only; `lease` is owned by `arena`.
struct LeaseOnArena {
  // An empty lease on a new arena.
  static LeaseOnArena Make();

  std::unique_ptr<google::protobuf::Arena> arena;
  v1::Lease* lease = nullptr;
};

// Owns a lease on a model and its mappings. Move-only. Holds the client's
// connection and session, so it may outlive the Client it came from (the
// session, and so the lease, stays open while any mapping uses it).
//
// Thread safety: const methods may be called from several threads at once;
// Release(), assignment and destruction must not run concurrently with any
// other use of the same object.
class ModelMapping {
 public:
  // An empty mapping, holding nothing (as a moved-from one).
  ModelMapping();
  // Calls Release() and ignores its status (which may block for up to
  // kDefaultCallTimeout on the ReleaseModel call).
  ~ModelMapping();
  ModelMapping(ModelMapping&& other) noexcept;
  // Releases what this mapping held first.
  ModelMapping& operator=(ModelMapping&& other) noexcept;
  ModelMapping(const ModelMapping&) = delete;
  ModelMapping& operator=(const ModelMapping&) = delete;

  // The model as it was when the lease was granted.
  const v1::ModelStatus& model() const { return lease().model(); }
  const std::string& lease_id() const { return lease().lease_id(); }
  // The checkpoint's key-value metadata, a JSON object (v1::Lease's
  // metadata_json; "{}" from a daemon that sends none). Kept after
  // Release().
  const std::string& metadata_json() const { return metadata_json_; }

  // Every tensor in every allocation, allocation by allocation, each in
  // the daemon's order. Empty once released. REQUIRES: the views' data
  // pointers are used only until Release() (or destruction).
  // The views are built on the first call (or Find()), not at Acquire: a
  // caller that reads tensor_count() and tensor_record() instead (the C
  // interface) pays no allocation per tensor.
  const std::vector<TensorView>& tensors() const;

  // The number of entries tensors() has (0 once released), without
  // building the views.
  size_t tensor_count() const;

  // Entry `index` of tensors() as references into the mapping's tensor
  // table, without building the views or allocating. REQUIRES: index <
  // tensor_count().
  TensorRecord tensor_record(size_t index) const;

  // The tensor named `name` on `device_uuid`, or on the first allocation's
  // device when `device_uuid` is empty; null when there is none. The name
  // index is built on the first call.
  const TensorView* Find(absl::string_view name,
                         absl::string_view device_uuid = "") const;

  // Whether the lease is still held (not released, not moved from).
  bool held() const { return held_; }

  // A path under which this process can open the model as its file, for
  // code that maps a model file (llama.cpp, gguf.GGUFReader,
  // safetensors.safe_open): "/proc/self/fd/N" of the mapped memfd, whose
  // bytes are the file's. Read-only: opening it for writing, writing and
  // resizing fail (the memfd is sealed). Valid until Release(); child
  // processes do not inherit the descriptor (close-on-exec).
  // Errors: FailedPrecondition when the model is not held as a file image
  // in host memory (ModelStatus.layout PACKED, or a GPU model) or the lease
  // has been released.
  absl::StatusOr<std::string> FilePath() const;

  // Unmaps the memory, closes the descriptors and sends ReleaseModel.
  // Idempotent: later calls return OK and do nothing. The local resources
  // are freed whatever the status; Unavailable when the session has closed
  // (the daemon already ended the lease) or the daemon cannot be reached,
  // else the daemon's error.
  absl::Status Release();

 private:
  friend class Client;

  struct Region {
    void* base;
    size_t size;
  };

  // Takes ownership of `lease` and `fds` (the bundle the daemon sent with
  // it, in fd_index order), reads its tensors (the packed
  // Lease.tensor_table, or Lease.tensors from a daemon that sends no table)
  // and maps the lease's allocations: host memfds with mmap, GPU memory
  // through the CUDA driver (cuda_import.h). On any error the descriptors
  // are closed, nothing stays mapped or imported and the lease is
  // released. Errors: DataLoss when the descriptors do not match the
  // allocations (count, size) or a memfd is not sealed; InvalidArgument
  // when the tensor table is malformed (naming the model and the field), a
  // tensor lies outside its allocation or an allocation is of an unknown
  // kind; ResourceExhausted when mmap fails;
  // for GPU allocations FailedPrecondition when this process has no usable
  // CUDA driver, NotFound when it cannot see the allocation's GPU, and the
  // driver's errors.
  static absl::StatusOr<ModelMapping> Map(
      std::shared_ptr<internal::Connection> connection,
      std::shared_ptr<internal::Session> session, LeaseOnArena lease,
      std::vector<ScopedFd> fds);

  // The lease, or an empty one when this mapping holds none (moved from).
  const v1::Lease& lease() const {
    return lease_ == nullptr ? v1::Lease::default_instance() : *lease_;
  }

  // Where one allocation lies in this process.
  struct MappedAllocation {
    // The allocation's first byte (a device address for GPU memory); null
    // for an empty allocation.
    const char* base;
    bool read_only;
  };

  // What tensors() and Find() build on first use. Held by pointer so that
  // the once-flags move with the mapping.
  struct LazyViews {
    absl::once_flag views_built;
    std::vector<TensorView> views;
    absl::once_flag index_built;
    // Tensor name (viewing table_) to its first position in the tensor
    // list.
    absl::flat_hash_map<absl::string_view, size_t> first_position;
  };

  // Reads the lease's tensors into table_ (checking them).
  absl::Status ReadTensorTable();
  // Maps every allocation and fills allocations_. REQUIRES: held_.
  absl::Status MapAllocations();
  // Imports GPU allocation `index` (checked by MapAllocations) into
  // imports_ and records it in allocations_; closes its descriptor either
  // way.
  absl::Status ImportGpuAllocation(int index);

  void Swap(ModelMapping& other) noexcept;

  std::shared_ptr<internal::Connection> connection_;
  std::shared_ptr<internal::Session> session_;
  // Owns lease_ (kept after Release(): model() and lease_id() stay).
  std::unique_ptr<google::protobuf::Arena> arena_;
  v1::Lease* lease_ = nullptr;
  std::string metadata_json_ = "{}";
  // The lease's tensors, in the daemon's order, checked; read in place.
  TensorTable table_;
  // Owned descriptors, closed by Release().
  std::vector<int> fds_;
  // Owned mappings, unmapped by Release().
  std::vector<Region> regions_;
  // Owned GPU imports, released by Release() before the lease.
  std::vector<internal::CudaImport> imports_;
  // One per lease allocation, in its order, once mapped.
  std::vector<MappedAllocation> allocations_;
  // Null once released (or moved from).
  std::unique_ptr<LazyViews> lazy_;
  bool held_ = false;
};

}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_MODEL_MAPPING_H_
