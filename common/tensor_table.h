// The packed tensor table: a model's tensor list as one byte string
// (v1::Lease.tensor_table), built once per model by the daemon and read in
// place by the client, with no allocation per tensor on either side.
//
// Layout, version 1 (every integer little-endian; the byte-by-byte
// description is in proto/warmstart.proto, on Lease.tensor_table):
//
//   header   40 bytes: magic "WSTT", version, header_size, record_size,
//            tensor_count, dim_count, string_bytes
//   records  tensor_count x record_size bytes (48 in version 1), from byte
//            header_size
//   dims     dim_count x uint64: every tensor's shape, back to back
//   strings  string_bytes: names, dtypes and roles, each followed by a NUL
//
// header_size and record_size are multiples of 8, so records and dims are
// 8-byte aligned when the table's first byte is. Nothing follows the
// strings: the table's size is exactly the sum of the four parts.
//
// Thread safety: the functions are pure; a TensorTableView and a
// TensorTable are immutable once made, and may be read from any thread.
#ifndef WARMSTART_COMMON_TENSOR_TABLE_H_
#define WARMSTART_COMMON_TENSOR_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace warmstart {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the packed tensor table is read in place: little-endian only");

// "WSTT" as the first four bytes.
inline constexpr uint32_t kTensorTableMagic = 0x54545357;
inline constexpr uint32_t kTensorTableVersion = 1;
inline constexpr uint32_t kTensorTableHeaderSize = 40;
inline constexpr uint32_t kTensorTableRecordSize = 48;

// One tensor as the encoder takes it; views into the caller's data.
struct TensorTableEntry {
  absl::string_view name;
  absl::string_view dtype;
  absl::string_view role;
  absl::Span<const uint64_t> shape;
  uint64_t nbytes = 0;
  uint64_t offset = 0;
};

// Encodes `count` tensors, entry(i) giving tensor i (called twice per
// tensor: once to size the table, once to write it; it must return the
// same entry both times). Dtypes and roles are stored once per distinct
// value. InvalidArgument when the strings or the dims outgrow the
// format's 32-bit fields (4 GiB of strings, 2^32 dims in all).
absl::StatusOr<std::string> EncodeTensorTable(
    size_t count, absl::FunctionRef<TensorTableEntry(size_t)> entry);

// A table checked by ParseTensorTable, read where it lies: every record's
// strings and shape are inside the table, every string is UTF-8 followed
// by a NUL. Does not own the bytes, which must outlive it. Copyable.
class TensorTableView {
 public:
  // An empty table (no tensors).
  TensorTableView() = default;

  size_t size() const { return count_; }

  // Tensor i's fields. REQUIRES: i < size(). Every string_view's data is
  // followed by a NUL, so .data() is usable as a C string (which ends early
  // if the name itself holds a NUL).
  absl::string_view name(size_t i) const { return String(i, kNameField); }
  absl::string_view dtype(size_t i) const { return String(i, kDtypeField); }
  absl::string_view role(size_t i) const { return String(i, kRoleField); }
  // Points into the table (8-byte aligned); empty for a 0-dim tensor.
  absl::Span<const uint64_t> shape(size_t i) const {
    return absl::MakeConstSpan(dims_ + Field32(i, kShapeIndexField),
                               Field32(i, kNdimField));
  }
  uint64_t nbytes(size_t i) const { return Field64(i, kNbytesField); }
  // Where the tensor starts in each of the model's allocations.
  uint64_t offset(size_t i) const { return Field64(i, kOffsetField); }

 private:
  friend absl::StatusOr<TensorTableView> ParseTensorTable(
      absl::string_view bytes);

  // Byte offsets of a record's fields (version 1).
  static constexpr size_t kOffsetField = 0;
  static constexpr size_t kNbytesField = 8;
  static constexpr size_t kNameField = 16;   // offset, then size
  static constexpr size_t kDtypeField = 24;  // offset, then size
  static constexpr size_t kRoleField = 32;   // offset, then size
  static constexpr size_t kShapeIndexField = 40;
  static constexpr size_t kNdimField = 44;

  // memcpy: the records are aligned, but reading them as bytes keeps the
  // accessors free of aliasing questions (it compiles to plain loads).
  uint32_t Field32(size_t i, size_t field) const {
    uint32_t value;
    std::memcpy(&value, records_ + i * record_size_ + field, sizeof(value));
    return value;
  }
  uint64_t Field64(size_t i, size_t field) const {
    uint64_t value;
    std::memcpy(&value, records_ + i * record_size_ + field, sizeof(value));
    return value;
  }
  absl::string_view String(size_t i, size_t field) const {
    return absl::string_view(strings_ + Field32(i, field),
                             Field32(i, field + 4));
  }

  const char* records_ = nullptr;
  size_t record_size_ = kTensorTableRecordSize;
  size_t count_ = 0;
  const uint64_t* dims_ = nullptr;
  const char* strings_ = "";
};

// Checks `bytes` as a packed tensor table and returns a view of it.
// REQUIRES: bytes.data() is 8-byte aligned (InvalidArgument otherwise:
// TensorTable copies bytes that are not). InvalidArgument, saying which
// field of which tensor and why, for anything else wrong: a short header,
// a bad magic or version, counts that do not add up to the table's size,
// a string or shape outside its area, a string not followed by its NUL or
// not UTF-8. Reads nothing outside `bytes`.
absl::StatusOr<TensorTableView> ParseTensorTable(absl::string_view bytes);

// A checked table in storage of its own, 8-byte aligned. Move-only (the
// view stays valid across moves: the storage does not move).
class TensorTable {
 public:
  // An empty table (no tensors).
  TensorTable() = default;
  // A moved-from table is empty.
  TensorTable(TensorTable&& other) noexcept
      : storage_(std::move(other.storage_)),
        view_(std::exchange(other.view_, TensorTableView())) {}
  TensorTable& operator=(TensorTable&& other) noexcept {
    storage_ = std::move(other.storage_);
    view_ = std::exchange(other.view_, TensorTableView());
    return *this;
  }
  TensorTable(const TensorTable&) = delete;
  TensorTable& operator=(const TensorTable&) = delete;

  // Copies `bytes` into aligned storage (one allocation, one memcpy) and
  // parses them there. Errors: as ParseTensorTable.
  static absl::StatusOr<TensorTable> Parse(absl::string_view bytes);

  const TensorTableView& view() const { return view_; }

 private:
  std::unique_ptr<uint64_t[]> storage_;
  TensorTableView view_;
};

}  // namespace warmstart

#endif  // WARMSTART_COMMON_TENSOR_TABLE_H_
