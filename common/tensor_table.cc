#include "common/tensor_table.h"

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/utf8.h"

namespace warmstart {
namespace {

constexpr uint64_t kMax32 = std::numeric_limits<uint32_t>::max();

// Header fields' byte offsets (version 1).
constexpr size_t kMagicAt = 0;
constexpr size_t kVersionAt = 4;
constexpr size_t kHeaderSizeAt = 8;
constexpr size_t kRecordSizeAt = 12;
constexpr size_t kTensorCountAt = 16;
constexpr size_t kDimCountAt = 24;
constexpr size_t kStringBytesAt = 32;

template <typename T>
void Put(char* at, T value) {
  std::memcpy(at, &value, sizeof(value));
}

template <typename T>
T Get(const char* at) {
  T value;
  std::memcpy(&value, at, sizeof(value));
  return value;
}

absl::Status Invalid(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("tensor table: ", why));
}

// Where each distinct dtype and role lies in the string area: they repeat
// across thousands of tensors, so each is stored once, ahead of the names.
class SharedStrings {
 public:
  void Add(absl::string_view text) {
    if (offsets_.try_emplace(text, bytes_).second) bytes_ += text.size() + 1;
  }
  uint64_t bytes() const { return bytes_; }
  uint32_t OffsetOf(absl::string_view text) const {
    return static_cast<uint32_t>(offsets_.at(text));
  }
  void WriteTo(char* strings) const {
    for (const auto& [text, offset] : offsets_) {
      std::memcpy(strings + offset, text.data(), text.size());
      strings[offset + text.size()] = '\0';
    }
  }

 private:
  absl::flat_hash_map<absl::string_view, uint64_t> offsets_;
  uint64_t bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::string> EncodeTensorTable(
    size_t count, absl::FunctionRef<TensorTableEntry(size_t)> entry) {
  SharedStrings shared;
  uint64_t name_bytes = 0;
  uint64_t dim_count = 0;
  for (size_t i = 0; i < count; ++i) {
    const TensorTableEntry tensor = entry(i);
    shared.Add(tensor.dtype);
    shared.Add(tensor.role);
    name_bytes += tensor.name.size() + 1;
    dim_count += tensor.shape.size();
  }
  const uint64_t string_bytes = shared.bytes() + name_bytes;
  if (string_bytes > kMax32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor table: ", string_bytes,
        " bytes of names, dtypes and roles, more than the format's 4 GiB"));
  }
  if (dim_count > kMax32) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor table: ", dim_count,
                     " dimensions in all, more than the format's 2^32 - 1"));
  }
  const uint64_t records_at = kTensorTableHeaderSize;
  const uint64_t dims_at = records_at + count * kTensorTableRecordSize;
  const uint64_t strings_at = dims_at + dim_count * sizeof(uint64_t);
  std::string table(strings_at + string_bytes, '\0');
  char* bytes = table.data();
  Put<uint32_t>(bytes + kMagicAt, kTensorTableMagic);
  Put<uint32_t>(bytes + kVersionAt, kTensorTableVersion);
  Put<uint32_t>(bytes + kHeaderSizeAt, kTensorTableHeaderSize);
  Put<uint32_t>(bytes + kRecordSizeAt, kTensorTableRecordSize);
  Put<uint64_t>(bytes + kTensorCountAt, count);
  Put<uint64_t>(bytes + kDimCountAt, dim_count);
  Put<uint64_t>(bytes + kStringBytesAt, string_bytes);
  char* strings = bytes + strings_at;
  shared.WriteTo(strings);

  uint64_t next_name = shared.bytes();
  uint64_t next_dim = 0;
  for (size_t i = 0; i < count; ++i) {
    const TensorTableEntry tensor = entry(i);
    char* record = bytes + records_at + i * kTensorTableRecordSize;
    Put<uint64_t>(record + 0, tensor.offset);
    Put<uint64_t>(record + 8, tensor.nbytes);
    Put<uint32_t>(record + 16, static_cast<uint32_t>(next_name));
    Put<uint32_t>(record + 20, static_cast<uint32_t>(tensor.name.size()));
    Put<uint32_t>(record + 24, shared.OffsetOf(tensor.dtype));
    Put<uint32_t>(record + 28, static_cast<uint32_t>(tensor.dtype.size()));
    Put<uint32_t>(record + 32, shared.OffsetOf(tensor.role));
    Put<uint32_t>(record + 36, static_cast<uint32_t>(tensor.role.size()));
    Put<uint32_t>(record + 40, static_cast<uint32_t>(next_dim));
    Put<uint32_t>(record + 44, static_cast<uint32_t>(tensor.shape.size()));
    // The string was sized with its NUL, which the fill already wrote.
    std::memcpy(strings + next_name, tensor.name.data(), tensor.name.size());
    next_name += tensor.name.size() + 1;
    if (!tensor.shape.empty()) {
      std::memcpy(bytes + dims_at + next_dim * sizeof(uint64_t),
                  tensor.shape.data(), tensor.shape.size() * sizeof(uint64_t));
    }
    next_dim += tensor.shape.size();
  }
  return table;
}

namespace {

// Checks that string `field` ("name", "dtype", "role") of tensor `index`,
// at `offset` for `size` bytes, lies in the string area, starts a UTF-8
// sequence and is followed by its NUL. The area as a whole was checked as
// UTF-8, so a string that starts a sequence and ends before a NUL holds
// whole sequences only.
absl::Status CheckString(absl::string_view strings, size_t index,
                         const char* field, uint32_t offset, uint32_t size) {
  const uint64_t end = uint64_t{offset} + size;
  if (end >= strings.size()) {
    return Invalid(absl::StrCat("tensor ", index, ": ", field, " (offset ",
                                offset, ", size ", size,
                                ", and its NUL) runs past the string area of ",
                                strings.size(), " bytes"));
  }
  if (strings[end] != '\0') {
    return Invalid(absl::StrCat("tensor ", index, ": ", field, " (offset ",
                                offset, ", size ", size,
                                ") is not followed by a NUL"));
  }
  const unsigned char first = static_cast<unsigned char>(strings[offset]);
  if (size > 0 && (first & 0xC0) == 0x80) {
    return Invalid(absl::StrCat("tensor ", index, ": ", field, " (offset ",
                                offset, ") starts inside a UTF-8 sequence"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TensorTableView> ParseTensorTable(absl::string_view bytes) {
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(uint64_t) != 0) {
    return Invalid("the table's bytes are not 8-byte aligned in memory");
  }
  if (bytes.size() < kTensorTableHeaderSize) {
    return Invalid(absl::StrCat(bytes.size(), " bytes, fewer than the ",
                                kTensorTableHeaderSize, " of the header"));
  }
  const char* data = bytes.data();
  const uint32_t magic = Get<uint32_t>(data + kMagicAt);
  if (magic != kTensorTableMagic) {
    return Invalid(absl::StrFormat("magic: 0x%08x, not 0x%08x (\"WSTT\")",
                                   magic, kTensorTableMagic));
  }
  const uint32_t version = Get<uint32_t>(data + kVersionAt);
  if (version != kTensorTableVersion) {
    return Invalid(absl::StrCat("version: ", version, "; this reader reads ",
                                kTensorTableVersion));
  }
  const uint64_t header_size = Get<uint32_t>(data + kHeaderSizeAt);
  if (header_size < kTensorTableHeaderSize || header_size % 8 != 0 ||
      header_size > bytes.size()) {
    return Invalid(absl::StrCat(
        "header_size: ", header_size, ", not a multiple of 8 from ",
        kTensorTableHeaderSize, " to the table's ", bytes.size(), " bytes"));
  }
  const uint64_t record_size = Get<uint32_t>(data + kRecordSizeAt);
  if (record_size < kTensorTableRecordSize || record_size % 8 != 0) {
    return Invalid(absl::StrCat("record_size: ", record_size,
                                ", not a multiple of 8 of at least ",
                                kTensorTableRecordSize));
  }
  const uint64_t count = Get<uint64_t>(data + kTensorCountAt);
  const uint64_t dim_count = Get<uint64_t>(data + kDimCountAt);
  const uint64_t string_bytes = Get<uint64_t>(data + kStringBytesAt);
  // Each part is checked against what is left, so nothing overflows.
  uint64_t left = bytes.size() - header_size;
  if (count > left / record_size) {
    return Invalid(absl::StrCat("tensor_count: ", count, " records of ",
                                record_size, " bytes do not fit in the ", left,
                                " bytes after the header"));
  }
  left -= count * record_size;
  if (dim_count > left / sizeof(uint64_t)) {
    return Invalid(absl::StrCat("dim_count: ", dim_count,
                                " dimensions do not fit in the ", left,
                                " bytes after the records"));
  }
  left -= dim_count * sizeof(uint64_t);
  if (string_bytes != left) {
    return Invalid(absl::StrCat("string_bytes: ", string_bytes,
                                ", but the table has ", left,
                                " bytes after the dimensions"));
  }
  const absl::string_view strings = bytes.substr(bytes.size() - string_bytes);
  if (size_t bad = FindInvalidUtf8(strings); bad != absl::string_view::npos) {
    return Invalid(absl::StrCat("string area: byte ", bad, " is not UTF-8"));
  }

  TensorTableView view;
  view.records_ = data + header_size;
  view.record_size_ = record_size;
  view.count_ = count;
  view.dims_ = reinterpret_cast<const uint64_t*>(data + header_size +
                                                 count * record_size);
  view.strings_ = strings.data();
  for (size_t i = 0; i < count; ++i) {
    using V = TensorTableView;
    for (auto [field, at] :
         {std::pair<const char*, size_t>{"name", V::kNameField},
          {"dtype", V::kDtypeField},
          {"role", V::kRoleField}}) {
      if (absl::Status ok = CheckString(strings, i, field, view.Field32(i, at),
                                        view.Field32(i, at + 4));
          !ok.ok()) {
        return ok;
      }
    }
    const uint64_t shape_index = view.Field32(i, V::kShapeIndexField);
    const uint64_t ndim = view.Field32(i, V::kNdimField);
    if (shape_index + ndim > dim_count) {
      return Invalid(absl::StrCat("tensor ", i, ": shape_index ", shape_index,
                                  " + ndim ", ndim, " runs past the ",
                                  dim_count, " dimensions"));
    }
  }
  return view;
}

absl::StatusOr<TensorTable> TensorTable::Parse(absl::string_view bytes) {
  TensorTable table;
  const size_t words = (bytes.size() + sizeof(uint64_t) - 1) / sizeof(uint64_t);
  table.storage_.reset(new uint64_t[words == 0 ? 1 : words]);
  if (!bytes.empty())
    std::memcpy(table.storage_.get(), bytes.data(), bytes.size());
  absl::StatusOr<TensorTableView> view = ParseTensorTable(absl::string_view(
      reinterpret_cast<const char*>(table.storage_.get()), bytes.size()));
  if (!view.ok()) return view.status();
  table.view_ = *view;
  return table;
}

}  // namespace warmstart
