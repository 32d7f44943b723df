#include "daemon/formats/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "daemon/formats/dtype.h"

namespace warmstart {
namespace {

using Json = nlohmann::ordered_json;

// Header reads go through a window this large: a vocabulary of 150k strings
// then costs a few dozen ReadAt calls instead of 300k.
constexpr uint64_t kWindowBytes = 64 * 1024;

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxKeyBytes = 65535;
// ggml keeps names in a 64-byte buffer with a terminating NUL.
constexpr uint64_t kMaxTensorNameBytes = 63;
// ggml's cap on any string; bounds a single allocation on hostile input.
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;
constexpr uint64_t kMaxDims = 4;
constexpr uint64_t kMaxInt64 =
    static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
// Containers are reserved for at most this many entries up front. A count is
// only known to fit the file, and a file of many GiB could claim billions of
// tiny records; beyond this, memory grows with the records actually parsed.
constexpr uint64_t kMaxReserve = 1 << 16;

enum ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
constexpr uint32_t kValueTypeCount = 13;
// Version 1 predates UINT64, INT64 and FLOAT64.
constexpr uint32_t kV1ValueTypeCount = 10;

struct ValueTypeInfo {
  const char* name;
  uint32_t size;  // Bytes of a value; 0 for STRING and ARRAY.
};

constexpr ValueTypeInfo kValueTypes[kValueTypeCount] = {
    {"UINT8", 1},  {"INT8", 1},    {"UINT16", 2},  {"INT16", 2},  {"UINT32", 4},
    {"INT32", 4},  {"FLOAT32", 4}, {"BOOL", 1},    {"STRING", 0}, {"ARRAY", 0},
    {"UINT64", 8}, {"INT64", 8},   {"FLOAT64", 8},
};

// ggml's type ids, indexed by id (GGUF_FORMAT.md §6). Sizes are not repeated
// here: they come from dtype.h under the same name, so an id whose name
// dtype.h does not know (the newest types) is reported as unsupported.
struct GgmlType {
  const char* name;
  bool removed;  // Withdrawn from GGUF files; never valid.
};

constexpr GgmlType kGgmlTypes[] = {
    {"F32", false},       {"F16", false},       {"Q4_0", false},
    {"Q4_1", false},      {"Q4_2", true},       {"Q4_3", true},
    {"Q5_0", false},      {"Q5_1", false},      {"Q8_0", false},
    {"Q8_1", false},      {"Q2_K", false},      {"Q3_K", false},
    {"Q4_K", false},      {"Q5_K", false},      {"Q6_K", false},
    {"Q8_K", false},      {"IQ2_XXS", false},   {"IQ2_XS", false},
    {"IQ3_XXS", false},   {"IQ1_S", false},     {"IQ4_NL", false},
    {"IQ3_S", false},     {"IQ2_S", false},     {"IQ4_XS", false},
    {"I8", false},        {"I16", false},       {"I32", false},
    {"I64", false},       {"F64", false},       {"IQ1_M", false},
    {"BF16", false},      {"Q4_0_4_4", true},   {"Q4_0_4_8", true},
    {"Q4_0_8_8", true},   {"TQ1_0", false},     {"TQ2_0", false},
    {"IQ4_NL_4_4", true}, {"IQ4_NL_4_8", true}, {"IQ4_NL_8_8", true},
    {"MXFP4", false},     {"NVFP4", false},     {"Q1_0", false},
    {"Q2_0", false},
};
constexpr uint32_t kGgmlTypeCount = sizeof(kGgmlTypes) / sizeof(kGgmlTypes[0]);

uint64_t Decode(absl::string_view bytes, bool big_endian) {
  uint64_t value = 0;
  const size_t n = bytes.size();
  for (size_t i = 0; i < n; ++i) {
    const size_t index = big_endian ? i : n - 1 - i;
    value = (value << 8) | static_cast<unsigned char>(bytes[index]);
  }
  return value;
}

// JSON has no NaN or infinities; they become strings so that the metadata
// always serialises.
Json FloatJson(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return value;
}

// How much of an array's contents the result keeps.
enum class ArrayMode {
  kSummary,  // {"type": ..., "len": ...}.
  kFull,     // Every element.
  kDiscard,  // Nothing (elements of a summarised array): validate only.
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is contiguous.
  const DTypeInfo* dtype = nullptr;
  uint64_t nbytes = 0;
  uint64_t relative_offset = 0;
  uint64_t offset_at = 0;  // File position of the offset field.
  uint64_t absolute_offset = 0;
};

class GgufParser {
 public:
  GgufParser(const ByteSource& source, const ParseOptions& options)
      : source_(source), options_(options), size_(source.size()) {}

  absl::StatusOr<FileManifest> Parse();

 private:
  absl::Status ReadHeader(uint64_t* tensor_count, uint64_t* kv_count);
  absl::Status ReadKeyValue(uint64_t index, Json::object_t* metadata);
  absl::Status ReadValue(uint32_t type, int depth, bool keep, Json* out);
  absl::Status ReadArray(int depth, ArrayMode mode, Json* out);
  absl::Status ReadTensorInfo(uint64_t index, TensorInfo* info);
  absl::Status PlaceTensors(std::vector<TensorInfo>* tensors);

  // Reads a value type id, checked against the version.
  absl::StatusOr<uint32_t> ReadValueType(absl::string_view what);
  // Reads a count or a length: u32 in version 1, u64 later.
  absl::StatusOr<uint64_t> ReadCount(absl::string_view what);
  // Reads an unsigned integer of `bytes` bytes in the file's byte order.
  absl::StatusOr<uint64_t> ReadUint(uint64_t bytes, absl::string_view what);
  // Reads a gguf_string of at most `max_bytes` bytes that must be valid
  // UTF-8; `label` names it in errors. The view is valid until the next read.
  absl::StatusOr<absl::string_view> ReadString(absl::string_view what,
                                               uint64_t max_bytes,
                                               absl::string_view label);
  // Returns the next `n` bytes and moves past them. The view is valid until
  // the next read.
  absl::StatusOr<absl::string_view> Take(uint64_t n, absl::string_view what);
  // Moves past `n` bytes without reading them.
  absl::Status Skip(uint64_t n, absl::string_view what);
  absl::Status CheckRemaining(uint64_t n, absl::string_view what) const;

  uint64_t remaining() const { return size_ - pos_; }

  // "<source>: at byte <at>: <field>: <reason>", where <field> is where_,
  // the element indices of the arrays being read, then `what`.
  absl::Status Error(uint64_t at, absl::string_view what,
                     absl::string_view reason) const;

  const ByteSource& source_;
  const ParseOptions& options_;
  const uint64_t size_;
  uint32_t version_ = 0;
  bool big_endian_ = false;
  uint64_t alignment_ = kDefaultAlignment;

  uint64_t pos_ = 0;  // Next byte to parse.
  // Bytes [window_start_, window_start_ + window_.size()) of the file.
  std::string window_;
  uint64_t window_start_ = 0;
  // Holds a single read larger than the window.
  std::string large_;

  // The item being parsed (`kv 3`, `key "x"`, `tensor "y"`) and the index of
  // the element being read in each enclosing array.
  std::string where_;
  std::vector<uint64_t> element_path_;

  // Keys seen so far, and where each one's pair starts.
  std::unordered_map<std::string, uint64_t> key_offsets_;
};

absl::Status GgufParser::Error(uint64_t at, absl::string_view what,
                               absl::string_view reason) const {
  std::string field = where_;
  for (uint64_t index : element_path_) absl::StrAppend(&field, "[", index, "]");
  if (!what.empty()) {
    if (!field.empty()) field.push_back(' ');
    absl::StrAppend(&field, what);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source_.name(), ": at byte ", at, ": ", field, ": ", reason));
}

absl::Status GgufParser::CheckRemaining(uint64_t n,
                                        absl::string_view what) const {
  if (n <= remaining()) return absl::OkStatus();
  return Error(pos_, what,
               absl::StrCat("file is truncated: needs ", n, " bytes, only ",
                            remaining(), " left"));
}

absl::StatusOr<absl::string_view> GgufParser::Take(uint64_t n,
                                                   absl::string_view what) {
  WS_RETURN_IF_ERROR(CheckRemaining(n, what));
  const uint64_t at = pos_;
  char* destination;
  if (at >= window_start_ && at - window_start_ <= window_.size() &&
      n <= window_.size() - (at - window_start_)) {
    pos_ += n;
    return absl::string_view(window_.data() + (at - window_start_), n);
  }
  uint64_t length;
  if (n <= kWindowBytes) {
    length = std::min(kWindowBytes, remaining());
    window_.resize(length);
    window_start_ = at;
    destination = window_.data();
  } else {
    length = n;
    large_.resize(n);
    destination = large_.data();
  }
  absl::Status status = source_.ReadAt(at, length, destination);
  if (!status.ok()) {
    // The window must not claim bytes it failed to read.
    window_.clear();
    // The size was checked above, so reading past the end means the source
    // is shorter than it said: still a truncated file to the caller.
    if (absl::IsOutOfRange(status)) {
      return Error(at, what,
                   absl::StrCat("file is truncated: ", status.message()));
    }
    return status;
  }
  pos_ += n;
  return absl::string_view(destination, n);
}

absl::Status GgufParser::Skip(uint64_t n, absl::string_view what) {
  WS_RETURN_IF_ERROR(CheckRemaining(n, what));
  pos_ += n;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> GgufParser::ReadUint(uint64_t bytes,
                                              absl::string_view what) {
  WS_ASSIGN_OR_RETURN(absl::string_view raw, Take(bytes, what));
  return Decode(raw, big_endian_);
}

absl::StatusOr<uint64_t> GgufParser::ReadCount(absl::string_view what) {
  return ReadUint(version_ == 1 ? 4 : 8, what);
}

absl::StatusOr<uint32_t> GgufParser::ReadValueType(absl::string_view what) {
  const uint64_t at = pos_;
  WS_ASSIGN_OR_RETURN(uint64_t type, ReadUint(4, what));
  if (type >= kValueTypeCount) {
    return Error(at, what, absl::StrCat("unknown value type ", type));
  }
  if (version_ == 1 && type >= kV1ValueTypeCount) {
    return Error(at, what,
                 absl::StrCat("value type ", type, " (", kValueTypes[type].name,
                              ") does not exist in GGUF version 1"));
  }
  return static_cast<uint32_t>(type);
}

absl::StatusOr<absl::string_view> GgufParser::ReadString(
    absl::string_view what, uint64_t max_bytes, absl::string_view label) {
  const uint64_t at = pos_;
  WS_ASSIGN_OR_RETURN(uint64_t length, ReadCount(what));
  // Against the file first: a corrupt length is far more often a damaged
  // file than an oversized string, and this is what ggml reports too.
  if (length > remaining()) {
    return Error(at, what,
                 absl::StrCat(label, " length ", length, " exceeds the ",
                              remaining(), " bytes left in the file"));
  }
  if (length > max_bytes) {
    return Error(at, what,
                 absl::StrCat(label, " length ", length,
                              " exceeds the limit of ", max_bytes, " bytes"));
  }
  const uint64_t data_at = pos_;
  WS_ASSIGN_OR_RETURN(absl::string_view text, Take(length, what));
  const size_t bad = FindInvalidUtf8(text);
  if (bad != absl::string_view::npos) {
    return Error(data_at + bad, what,
                 absl::StrCat(label, " is not valid UTF-8 (byte 0x",
                              absl::Hex(static_cast<unsigned char>(text[bad]),
                                        absl::kZeroPad2),
                              " at position ", bad, ")"));
  }
  return text;
}

absl::Status GgufParser::ReadHeader(uint64_t* tensor_count,
                                    uint64_t* kv_count) {
  WS_ASSIGN_OR_RETURN(absl::string_view magic, Take(4, "magic"));
  if (magic != "GGUF") {
    return Error(0, "magic",
                 absl::StrCat("expected \"GGUF\", found \"",
                              absl::CHexEscape(magic), "\": not a GGUF file"));
  }
  WS_ASSIGN_OR_RETURN(absl::string_view version_bytes, Take(4, "version"));
  const uint64_t little = Decode(version_bytes, /*big_endian=*/false);
  const uint64_t big = Decode(version_bytes, /*big_endian=*/true);
  // Nothing marks a big-endian file but its version, which reads
  // byte-swapped on little-endian terms.
  if (little >= 1 && little <= 3) {
    version_ = static_cast<uint32_t>(little);
  } else if (big >= 1 && big <= 3) {
    if (big != 3) {
      return Error(4, "version",
                   absl::StrCat("big-endian version ", big,
                                ": GGUF allows big-endian files only from "
                                "version 3"));
    }
    version_ = 3;
    big_endian_ = true;
  } else {
    return Error(4, "version",
                 absl::StrCat("unsupported GGUF version ", little,
                              " (supported: 1, 2 and 3, little- or "
                              "big-endian)"));
  }

  // Every pair and record has a minimum size, so the file's size bounds the
  // counts before anything is allocated for them.
  const uint64_t length_bytes = version_ == 1 ? 4 : 8;
  const uint64_t min_kv_bytes = length_bytes + 1 + 4 + 1;
  const uint64_t min_tensor_bytes = length_bytes + 4 + 4 + 8;

  const uint64_t tensor_count_at = pos_;
  WS_ASSIGN_OR_RETURN(*tensor_count, ReadCount("tensor_count"));
  const uint64_t kv_count_at = pos_;
  WS_ASSIGN_OR_RETURN(*kv_count, ReadCount("kv_count"));
  if (*kv_count > remaining() / min_kv_bytes) {
    const std::string reason =
        absl::StrCat("kv_count ", *kv_count, " cannot fit: the ", remaining(),
                     " bytes after the header hold at most ",
                     remaining() / min_kv_bytes, " key/value pairs");
    return Error(kv_count_at, "kv_count", reason);
  }
  if (*tensor_count > remaining() / min_tensor_bytes) {
    return Error(
        tensor_count_at, "tensor_count",
        absl::StrCat("tensor_count ", *tensor_count, " cannot fit: the ",
                     remaining(), " bytes after the header hold at most ",
                     remaining() / min_tensor_bytes, " tensor infos"));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ReadKeyValue(uint64_t index,
                                      Json::object_t* metadata) {
  where_ = absl::StrCat("kv ", index);
  const uint64_t kv_at = pos_;
  WS_ASSIGN_OR_RETURN(absl::string_view key_view,
                      ReadString("key", kMaxKeyBytes, "key"));
  if (key_view.empty()) return Error(kv_at, "key", "empty key");
  for (size_t i = 0; i < key_view.size(); ++i) {
    const auto byte = static_cast<unsigned char>(key_view[i]);
    if (byte >= 0x80) {
      const uint64_t data_at = pos_ - key_view.size();
      return Error(data_at + i, "key",
                   absl::StrCat("key is not ASCII (byte 0x",
                                absl::Hex(byte, absl::kZeroPad2),
                                " at position ", i, ")"));
    }
  }
  std::string key(key_view);
  const auto inserted = key_offsets_.emplace(key, kv_at);
  if (!inserted.second) {
    return Error(
        kv_at, "key",
        absl::StrCat("duplicate key \"", absl::CHexEscape(key),
                     "\" (first at byte ", inserted.first->second, ")"));
  }
  where_ = absl::StrCat("key \"", absl::CHexEscape(key), "\"");

  const uint64_t type_at = pos_;
  WS_ASSIGN_OR_RETURN(uint32_t type, ReadValueType("value type"));
  const uint64_t value_at = pos_;
  Json value;
  WS_RETURN_IF_ERROR(ReadValue(type, /*depth=*/0, /*keep=*/true, &value));

  if (key == "general.alignment") {
    // The container's layout depends on this key, so it is held to ggml's
    // rules rather than taken as any integer.
    if (type != kUint32) {
      return Error(type_at, "value type",
                   absl::StrCat("general.alignment must be UINT32, not ",
                                kValueTypes[type].name));
    }
    const uint64_t alignment = *value.get_ptr<const Json::number_unsigned_t*>();
    if (alignment == 0) {
      return Error(value_at, "", "alignment must be non-zero");
    }
    if ((alignment & (alignment - 1)) != 0) {
      return Error(
          value_at, "",
          absl::StrCat("alignment ", alignment, " is not a power of two"));
    }
    alignment_ = alignment;
  }
  // key_offsets_ already guarantees uniqueness; ordered_map's own insertion
  // searches linearly and would make many-key files quadratic.
  metadata->emplace_back(std::move(key), std::move(value));
  return absl::OkStatus();
}

absl::Status GgufParser::ReadValue(uint32_t type, int depth, bool keep,
                                   Json* out) {
  const uint64_t at = pos_;
  switch (type) {
    case kString: {
      WS_ASSIGN_OR_RETURN(absl::string_view text,
                          ReadString("", kMaxStringBytes, "string"));
      if (keep) *out = std::string(text);
      return absl::OkStatus();
    }
    case kArray: {
      ArrayMode mode = ArrayMode::kDiscard;
      if (keep) {
        mode = depth == 0 && !options_.full_metadata ? ArrayMode::kSummary
                                                     : ArrayMode::kFull;
      }
      return ReadArray(depth + 1, mode, out);
    }
    case kBool: {
      WS_ASSIGN_OR_RETURN(uint64_t byte, ReadUint(1, ""));
      if (byte > 1) {
        return Error(at, "",
                     absl::StrCat("BOOL value ", byte, " is neither 0 nor 1"));
      }
      if (keep) *out = byte == 1;
      return absl::OkStatus();
    }
    default:
      break;
  }
  const uint32_t size = kValueTypes[type].size;
  WS_ASSIGN_OR_RETURN(uint64_t bits, ReadUint(size, ""));
  if (!keep) return absl::OkStatus();
  switch (type) {
    case kUint8:
    case kUint16:
    case kUint32:
    case kUint64:
      *out = bits;
      break;
    case kInt8:
      *out = static_cast<int64_t>(static_cast<int8_t>(bits));
      break;
    case kInt16:
      *out = static_cast<int64_t>(static_cast<int16_t>(bits));
      break;
    case kInt32:
      *out = static_cast<int64_t>(static_cast<int32_t>(bits));
      break;
    case kInt64:
      *out = static_cast<int64_t>(bits);
      break;
    case kFloat32: {
      const auto narrow = static_cast<uint32_t>(bits);
      float value;
      std::memcpy(&value, &narrow, sizeof(value));
      *out = FloatJson(value);
      break;
    }
    case kFloat64: {
      double value;
      std::memcpy(&value, &bits, sizeof(value));
      *out = FloatJson(value);
      break;
    }
    default:
      break;
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ReadArray(int depth, ArrayMode mode, Json* out) {
  const uint64_t at = pos_;
  if (depth > kGgufMaxArrayDepth) {
    return Error(at, "",
                 absl::StrCat("arrays nested deeper than ", kGgufMaxArrayDepth,
                              " levels"));
  }
  WS_ASSIGN_OR_RETURN(uint32_t type, ReadValueType("array element type"));
  const uint64_t count_at = pos_;
  WS_ASSIGN_OR_RETURN(uint64_t count, ReadCount("array length"));

  const uint64_t length_bytes = version_ == 1 ? 4 : 8;
  uint64_t min_element_bytes = kValueTypes[type].size;
  if (type == kString) min_element_bytes = length_bytes;
  if (type == kArray) min_element_bytes = 4 + length_bytes;
  if (count > remaining() / min_element_bytes) {
    return Error(count_at, "array length",
                 absl::StrCat("array length ", count, " of ",
                              kValueTypes[type].name, " exceeds what the ",
                              remaining(), " bytes left in the file can hold"));
  }

  if (mode == ArrayMode::kSummary) {
    *out = Json::object();
    Json::object_t& summary = *out->get_ptr<Json::object_t*>();
    summary.emplace_back("type", kValueTypes[type].name);
    summary.emplace_back("len", count);
  }
  const bool keep = mode == ArrayMode::kFull;
  // Numbers need no checking, so unkept ones are skipped unread.
  if (!keep && kValueTypes[type].size > 0 && type != kBool) {
    return Skip(count * min_element_bytes, "array");
  }
  Json::array_t* elements = nullptr;
  if (keep) {
    *out = Json::array();
    elements = out->get_ptr<Json::array_t*>();
    elements->reserve(std::min(count, kMaxReserve));
  }
  element_path_.push_back(0);
  Json element;
  for (uint64_t i = 0; i < count; ++i) {
    element_path_.back() = i;
    WS_RETURN_IF_ERROR(ReadValue(type, depth, keep, &element));
    if (keep) elements->push_back(std::move(element));
  }
  element_path_.pop_back();
  return absl::OkStatus();
}

absl::Status GgufParser::ReadTensorInfo(uint64_t index, TensorInfo* info) {
  where_ = absl::StrCat("tensor ", index);
  WS_ASSIGN_OR_RETURN(absl::string_view name,
                      ReadString("name", kMaxTensorNameBytes, "tensor name"));
  info->name = std::string(name);
  where_ =
      absl::StrCat("tensor \"", absl::Utf8SafeCHexEscape(info->name), "\"");

  const uint64_t n_dims_at = pos_;
  WS_ASSIGN_OR_RETURN(uint64_t n_dims, ReadUint(4, "n_dims"));
  if (n_dims > kMaxDims) {
    return Error(
        n_dims_at, "n_dims",
        absl::StrCat("n_dims ", n_dims, " exceeds the maximum of ", kMaxDims));
  }
  const uint64_t dims_at = pos_;
  info->dims.resize(n_dims);
  for (uint64_t d = 0; d < n_dims; ++d) {
    const std::string what = absl::StrCat("dims[", d, "]");
    const uint64_t at = pos_;
    WS_ASSIGN_OR_RETURN(info->dims[d], ReadCount(what));
    if (info->dims[d] > kMaxInt64) {
      return Error(
          at, what,
          absl::StrCat("dimension ", info->dims[d], " exceeds 2^63 - 1"));
    }
  }

  const uint64_t type_at = pos_;
  WS_ASSIGN_OR_RETURN(uint64_t type_id, ReadUint(4, "type"));
  if (type_id >= kGgmlTypeCount) {
    return Error(type_at, "type", absl::StrCat("unknown ggml type ", type_id));
  }
  const GgmlType& type = kGgmlTypes[type_id];
  if (type.removed) {
    return Error(type_at, "type",
                 absl::StrCat("ggml type ", type_id, " (", type.name,
                              ") was removed and is not valid in GGUF files"));
  }
  info->dtype = FindDType(type.name);
  if (info->dtype == nullptr) {
    return Error(type_at, "type",
                 absl::StrCat("ggml type ", type_id, " (", type.name,
                              ") is not supported"));
  }

  // Blocks never cross rows, so the row length must be whole blocks.
  const uint64_t block = info->dtype->block_elements;
  const uint64_t row = n_dims > 0 ? info->dims[0] : 1;
  if (row % block != 0) {
    return Error(n_dims > 0 ? dims_at : type_at, "dims[0]",
                 absl::StrCat("dims[0] = ", row, " is not a multiple of the ",
                              type.name, " block size ", block));
  }
  uint64_t elements = 1;
  bool empty = false;
  for (uint64_t dim : info->dims) empty = empty || dim == 0;
  if (empty) {
    elements = 0;
  } else {
    for (uint64_t dim : info->dims) {
      if (elements > kMaxInt64 / dim) {
        return Error(dims_at, "dims", "element count overflows int64");
      }
      elements *= dim;
    }
  }
  const uint64_t blocks = elements / block;
  if (blocks > kMaxInt64 / info->dtype->block_bytes) {
    return Error(dims_at, "dims",
                 absl::StrCat("byte size of ", elements, " elements of ",
                              type.name, " overflows int64"));
  }
  info->nbytes = blocks * info->dtype->block_bytes;

  info->offset_at = pos_;
  WS_ASSIGN_OR_RETURN(info->relative_offset, ReadUint(8, "offset"));
  if (info->relative_offset % alignment_ != 0) {
    return Error(
        info->offset_at, "offset",
        absl::StrCat("offset ", info->relative_offset,
                     " is not a multiple of the alignment ", alignment_));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::PlaceTensors(std::vector<TensorInfo>* tensors) {
  const uint64_t info_end = pos_;
  const uint64_t data_start =
      (info_end + alignment_ - 1) / alignment_ * alignment_;
  if (tensors->empty()) return absl::OkStatus();
  if (data_start > size_) {
    where_ = "data section";
    return Error(
        info_end, "",
        absl::StrCat("starts at byte ", data_start,
                     " after padding to the alignment ", alignment_,
                     ", past the end of the file (", size_, " bytes)"));
  }
  for (TensorInfo& info : *tensors) {
    where_ =
        absl::StrCat("tensor \"", absl::Utf8SafeCHexEscape(info.name), "\"");
    if (info.relative_offset > size_ - data_start) {
      return Error(info.offset_at, "offset",
                   absl::StrCat("offset ", info.relative_offset,
                                " points past the end of the file (the data "
                                "section holds ",
                                size_ - data_start, " bytes)"));
    }
    info.absolute_offset = data_start + info.relative_offset;
    if (info.nbytes > size_ - info.absolute_offset) {
      return Error(
          info.offset_at, "offset",
          absl::StrCat("data [", info.absolute_offset, ", ",
                       info.absolute_offset + info.nbytes,
                       ") runs past the end of the file (", size_, " bytes)"));
    }
  }

  // Sorting by start, a tensor overlaps an earlier one exactly when it starts
  // before the furthest end seen so far. Empty tensors occupy nothing.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors->size());
  for (const TensorInfo& info : *tensors) {
    if (info.nbytes > 0) by_offset.push_back(&info);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) {
              return a->absolute_offset < b->absolute_offset;
            });
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo* info : by_offset) {
    if (furthest != nullptr &&
        info->absolute_offset < furthest->absolute_offset + furthest->nbytes) {
      where_ =
          absl::StrCat("tensor \"", absl::Utf8SafeCHexEscape(info->name), "\"");
      return Error(
          info->offset_at, "offset",
          absl::StrCat("data [", info->absolute_offset, ", ",
                       info->absolute_offset + info->nbytes,
                       ") overlaps tensor \"",
                       absl::Utf8SafeCHexEscape(furthest->name), "\" [",
                       furthest->absolute_offset, ", ",
                       furthest->absolute_offset + furthest->nbytes, ")"));
    }
    if (furthest == nullptr ||
        info->absolute_offset + info->nbytes >
            furthest->absolute_offset + furthest->nbytes) {
      furthest = info;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<FileManifest> GgufParser::Parse() {
  uint64_t tensor_count = 0;
  uint64_t kv_count = 0;
  WS_RETURN_IF_ERROR(ReadHeader(&tensor_count, &kv_count));

  FileManifest manifest;
  manifest.path = source_.name();
  manifest.format = Format::kGguf;
  manifest.format_version = version_;
  manifest.file_size = size_;
  manifest.big_endian = big_endian_;
  Json::object_t& metadata = *manifest.metadata.get_ptr<Json::object_t*>();
  metadata.reserve(std::min(kv_count, kMaxReserve));
  for (uint64_t i = 0; i < kv_count; ++i) {
    WS_RETURN_IF_ERROR(ReadKeyValue(i, &metadata));
  }

  std::vector<TensorInfo> tensors;
  tensors.reserve(std::min(tensor_count, kMaxReserve));
  std::unordered_map<std::string, uint64_t> tensor_indices;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    const uint64_t name_at = pos_;
    TensorInfo& info = tensors.emplace_back();
    WS_RETURN_IF_ERROR(ReadTensorInfo(i, &info));
    const auto inserted = tensor_indices.emplace(info.name, i);
    if (!inserted.second) {
      where_ = absl::StrCat("tensor ", i);
      return Error(
          name_at, "name",
          absl::StrCat("duplicate tensor name \"",
                       absl::Utf8SafeCHexEscape(info.name), "\" (also tensor ",
                       inserted.first->second, ")"));
    }
  }
  WS_RETURN_IF_ERROR(PlaceTensors(&tensors));

  manifest.tensors.reserve(tensors.size());
  for (TensorInfo& info : tensors) {
    TensorEntry entry;
    entry.name = std::move(info.name);
    entry.dtype = std::string(info.dtype->name);
    entry.shape.assign(info.dims.rbegin(), info.dims.rend());
    entry.nbytes = info.nbytes;
    entry.offset = info.absolute_offset;
    entry.stored_bytes = info.nbytes;
    manifest.tensors.push_back(std::move(entry));
  }
  return manifest;
}

}  // namespace

absl::StatusOr<FileManifest> ParseGguf(const ByteSource& source,
                                       const ParseOptions& options) {
  return GgufParser(source, options).Parse();
}

}  // namespace warmstart
