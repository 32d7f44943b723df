#include "daemon/formats/tensorizer.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "daemon/formats/dtype.h"
#include "daemon/formats/text_util.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kMagic = "|TZR|";
constexpr uint64_t kVersionOffset = 5;
constexpr uint64_t kFlagsOffset = 9;
constexpr uint64_t kFlagsBytes = 32;
constexpr uint64_t kTensorCountOffset = 57;
constexpr uint64_t kMetadataLenOffset = 65;
constexpr uint64_t kFileHeaderBytes = 73;
constexpr uint32_t kMinVersion = 1;
constexpr uint32_t kMaxVersion = 4;
constexpr uint32_t kOpaqueDTypeVersion = 2;
constexpr uint32_t kEncryptionVersion = 3;
constexpr uint32_t kMetaTensorVersion = 4;

// An index entry with an empty name, dtype and shape: name_len, type,
// dtype_len, ndim, then header offset, data offset and data length.
constexpr uint64_t kMinIndexEntryBytes = 2 + 1 + 1 + 1 + 3 * 8;
// A header with an empty name, dtype, shape and hash list: header_size,
// module_idx, type, name_len, dtype_len, ndim, hash_block_len, hash_count,
// data_length.
constexpr uint64_t kMinHeaderBytes = 8 + 2 + 1 + 2 + 1 + 1 + 2 + 1 + 8;

constexpr uint8_t kTypeStateDict = 2;
constexpr uint8_t kMaxTensorType = 2;

constexpr uint8_t kHashCrc32 = 0;
constexpr uint8_t kHashSha256 = 1;
constexpr uint8_t kCrc32Bytes = 4;
constexpr uint8_t kSha256Bytes = 32;

constexpr uint16_t kChunkKeyDerivation = 1;
constexpr uint16_t kChunkXSalsa20Parallel = 2;
constexpr uint16_t kChunkXSalsa20Sequential = 3;
constexpr uint16_t kKdfMethodPwhash = 1;
constexpr int32_t kKdfAlgArgon2id13 = 2;
constexpr uint64_t kMinCipherChunkSize = 1024;
constexpr uint64_t kCipherChunkAlignment = 64;
constexpr uint64_t kMacBytes = 16;

// How much FieldReader fetches at once: the whole of almost any header, and
// the metadata index in a few reads.
constexpr uint64_t kWindowBytes = 64 * 1024;

struct NumpyDType {
  absl::string_view numpy;
  absl::string_view name;
};
constexpr NumpyDType kNumpyDTypes[] = {
    {"<f4", "F32"},  {"<f2", "F16"},   {"<f8", "F64"}, {"<i8", "I64"},
    {"<i4", "I32"},  {"<i2", "I16"},   {"|i1", "I8"},  {"|u1", "U8"},
    {"|b1", "BOOL"}, {"<u2", "U16"},   {"<u4", "U32"}, {"<u8", "U64"},
    {"<c8", "C64"},  {"<c16", "C128"},
};

struct OpaqueDType {
  absl::string_view torch;
  absl::string_view name;
};
constexpr OpaqueDType kOpaqueDTypes[] = {
    {"torch.bfloat16", "BF16"},
    {"torch.complex32", "C32"},
    {"torch.float8_e4m3fn", "F8_E4M3"},
    {"torch.float8_e5m2", "F8_E5M2"},
    {"torch.float8_e4m3fnuz", "F8_E4M3FNUZ"},
    {"torch.float8_e5m2fnuz", "F8_E5M2FNUZ"},
    {"torch.float8_e8m0fnu", "F8_E8M0"},
};

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The role TensorEntry::role records for a tensor type (0-2; checked).
absl::string_view TensorRole(uint8_t type) {
  switch (type) {
    case 0:
      return "parameter";
    case 1:
      return "buffer";
    default:
      return "state_dict";
  }
}

std::string TensorLabel(absl::string_view name) {
  return absl::StrCat("tensor ", Quote(name));
}

template <typename T>
T DecodeLittleEndian(const char* bytes) {
  using Unsigned = std::make_unsigned_t<T>;
  Unsigned value = 0;
  for (size_t i = sizeof(T); i > 0; --i) {
    value = static_cast<Unsigned>(value << 8) |
            static_cast<unsigned char>(bytes[i - 1]);
  }
  return static_cast<T>(value);
}

absl::Status Malformed(const ByteSource& source, uint64_t offset,
                       absl::string_view field, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(
      source.name(), ": at byte ", offset, ": ", field, ": ", reason));
}

// Reads exactly `length` bytes at `offset`. A range past the end of the file
// is a malformed (truncated) file, not a caller error, so it becomes
// InvalidArgument; other read failures pass through unchanged.
absl::Status ReadExact(const ByteSource& source, uint64_t offset,
                       uint64_t length, absl::string_view field, char* out) {
  const uint64_t size = source.size();
  absl::Status status;
  if (offset > size || length > size - offset) {
    status = absl::OutOfRangeError("past the end");
  } else {
    status = source.ReadAt(offset, length, out);
  }
  if (absl::IsOutOfRange(status)) {
    return Malformed(source, offset, field,
                     absl::StrCat("the file is truncated: ", length,
                                  " bytes are needed here, but the file ends "
                                  "at byte ",
                                  size));
  }
  return status;
}

template <typename T>
absl::StatusOr<T> ReadIntAt(const ByteSource& source, uint64_t offset,
                            absl::string_view field) {
  char bytes[sizeof(T)];
  WS_RETURN_IF_ERROR(ReadExact(source, offset, sizeof(T), field, bytes));
  return DecodeLittleEndian<T>(bytes);
}

// Reads consecutive little-endian fields from [begin, end) of a source. It
// fetches a window at a time, so walking a header costs one ReadAt rather
// than one per field, and it never reads past `end`, so a field that claims
// more bytes than its region holds is reported against that region.
class FieldReader {
 public:
  // `end_description` completes "... remain before <end_description>".
  // REQUIRES: begin <= end <= source.size().
  FieldReader(const ByteSource& source, uint64_t begin, uint64_t end,
              std::string end_description)
      : source_(source),
        position_(begin),
        end_(end),
        end_description_(std::move(end_description)) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return end_ - position_; }

  absl::Status Read(uint64_t length, absl::string_view field, char* out) {
    WS_RETURN_IF_ERROR(CheckRoom(length, field));
    const uint64_t window_end = window_start_ + window_.size();
    if (position_ < window_start_ || position_ + length > window_end) {
      const uint64_t fetch =
          std::min(std::max(length, kWindowBytes), remaining());
      window_.resize(fetch);
      WS_RETURN_IF_ERROR(
          ReadExact(source_, position_, fetch, field, window_.data()));
      window_start_ = position_;
    }
    if (length > 0) {
      std::memcpy(out, window_.data() + (position_ - window_start_), length);
    }
    position_ += length;
    return absl::OkStatus();
  }

  template <typename T>
  absl::StatusOr<T> ReadInt(absl::string_view field) {
    char bytes[sizeof(T)];
    WS_RETURN_IF_ERROR(Read(sizeof(T), field, bytes));
    return DecodeLittleEndian<T>(bytes);
  }

  absl::StatusOr<std::string> ReadString(uint64_t length,
                                         absl::string_view field) {
    // Check before allocating: `length` comes from the file.
    WS_RETURN_IF_ERROR(CheckRoom(length, field));
    std::string out(length, '\0');
    WS_RETURN_IF_ERROR(Read(length, field, out.data()));
    return out;
  }

 private:
  absl::Status CheckRoom(uint64_t length, absl::string_view field) const {
    if (length <= remaining()) return absl::OkStatus();
    return Malformed(
        source_, position_, field,
        absl::StrCat("needs ", length, " bytes, but only ", remaining(),
                     " remain before ", end_description_));
  }

  const ByteSource& source_;
  uint64_t position_;
  const uint64_t end_;
  const std::string end_description_;
  uint64_t window_start_ = 0;
  std::string window_;
};

// Checks a structured name (the part after 0x1E) event by event: exactly one
// array whose elements are strings or non-negative integers. Nothing nested
// is ever entered, so a hostile name cannot make the parse deep.
class PathHandler : public nlohmann::json_sax<Json> {
 public:
  // Why the name was rejected; empty when it was accepted.
  const std::string& problem() const { return problem_; }

  bool null() override { return Reject("null"); }
  bool boolean(bool) override { return Reject("a boolean"); }
  bool number_integer(number_integer_t value) override {
    // The lexer reports every literal with a minus sign here; "-0" is 0,
    // which Python's json (the reference reader) accepts as an int.
    if (value < 0) return Reject("a negative integer");
    return Element();
  }
  bool number_unsigned(number_unsigned_t) override { return Element(); }
  bool number_float(number_float_t, const string_t&) override {
    return Reject("a non-integer number");
  }
  bool string(string_t&) override { return Element(); }
  bool binary(binary_t&) override { return Reject("binary data"); }
  bool start_object(std::size_t) override { return Reject("an object"); }
  bool key(string_t&) override { return Reject("an object"); }
  bool end_object() override { return Reject("an object"); }
  bool start_array(std::size_t) override {
    if (opened_) return Reject("a nested array");
    opened_ = true;
    return true;
  }
  bool end_array() override {
    if (elements_ == 0) return Fail("the path is empty");
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    return Fail(absl::StrCat("not valid JSON (at character ", position, ")"));
  }

 private:
  bool Element() {
    if (!opened_) return Reject("a bare value");
    ++elements_;
    return true;
  }
  bool Reject(absl::string_view what) {
    return Fail(absl::StrCat("path component ", elements_, " is ", what,
                             " (only strings and non-negative integers are "
                             "allowed)"));
  }
  bool Fail(std::string problem) {
    if (problem_.empty()) problem_ = std::move(problem);
    return false;
  }

  bool opened_ = false;
  size_t elements_ = 0;
  std::string problem_;
};

// Returns why `name` is not an acceptable tensor name for a tensor of type
// `type`, or an empty string.
std::string NameProblem(absl::string_view name, uint8_t type) {
  if (name.empty() || name.front() != '\x1e') {
    const size_t bad = FindInvalidUtf8(name);
    if (bad == absl::string_view::npos) return "";
    return absl::StrCat("not valid UTF-8 (at byte ", bad, " of the name)");
  }
  if (type != kTypeStateDict) {
    return absl::StrCat(
        "a structured (0x1E) name is allowed only for STATE_DICT tensors "
        "(type 2); this tensor has type ",
        type);
  }
  const absl::string_view path = name.substr(1);
  if (path.find_first_of("\r\n") != absl::string_view::npos) {
    return "a structured (0x1E) name must not contain CR or LF";
  }
  if (path.size() < 2 || path.front() != '[' || path.back() != ']') {
    return "a structured (0x1E) name must be a JSON array: 0x1E[...]";
  }
  PathHandler handler;
  Json::sax_parse(path.begin(), path.end(), &handler);
  if (handler.problem().empty()) return "";
  return absl::StrCat("structured (0x1E) name: ", handler.problem());
}

struct MappedDType {
  const DTypeInfo* info;
  bool opaque;
};

// Maps a stored dtype string; the error message is only the reason.
absl::StatusOr<MappedDType> MapDType(absl::string_view dtype) {
  const size_t nul = dtype.find('\0');
  if (nul == absl::string_view::npos) {
    for (const NumpyDType& known : kNumpyDTypes) {
      if (known.numpy == dtype)
        return MappedDType{FindDType(known.name), false};
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", Quote(dtype)));
  }
  if (dtype.find('\0', nul + 1) != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("more than one NUL in dtype ", Quote(dtype)));
  }
  const absl::string_view view = dtype.substr(0, nul);
  const absl::string_view torch = dtype.substr(nul + 1);
  const DTypeInfo* info = nullptr;
  for (const OpaqueDType& known : kOpaqueDTypes) {
    if (known.torch == torch) info = FindDType(known.name);
  }
  if (info == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", Quote(dtype)));
  }
  // The writer stores an opaque type as a same-size signed-int view with
  // 'i' replaced by 'V': "<V2", or "|V1" for one byte.
  uint64_t view_size = 0;
  bool well_formed = view.size() >= 3 && view.size() <= 5 &&
                     (view[0] == '<' || view[0] == '|') && view[1] == 'V';
  for (size_t i = 2; well_formed && i < view.size(); ++i) {
    well_formed = view[i] >= '0' && view[i] <= '9';
    view_size = view_size * 10 + static_cast<uint64_t>(view[i] - '0');
  }
  if (!well_formed) {
    return absl::InvalidArgumentError(
        absl::StrCat("opaque dtype ", Quote(dtype),
                     ": expected a void view such as <V2 before the NUL"));
  }
  if (info->block_elements != 1 || view_size != info->block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "opaque dtype ", Quote(dtype), ": the view is ", view_size,
        " bytes, but ", torch, " elements are ", info->block_bytes));
  }
  return MappedDType{info, true};
}

// What the metadata index says about one tensor.
struct IndexEntry {
  std::string name;
  uint8_t type = 0;
  std::string dtype_string;
  const DTypeInfo* dtype = nullptr;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;
  uint64_t data_length = 0;
  // Where these fields are, for messages.
  uint64_t header_offset_at = 0;
  uint64_t data_offset_at = 0;
  uint64_t data_length_at = 0;
};

struct StoredHash {
  uint8_t type;
  uint64_t value_offset;  // Relative to the start of the header.
  std::string value;
};

class Parser {
 public:
  explicit Parser(const ByteSource& source) : source_(source) {}

  absl::StatusOr<FileManifest> Parse() {
    FileManifest manifest;
    manifest.path = source_.name();
    manifest.format = Format::kTensorizer;
    manifest.file_size = source_.size();
    WS_RETURN_IF_ERROR(ParseFileHeader());
    manifest.format_version = version_;
    WS_RETURN_IF_ERROR(ParseIndex());
    uint64_t offset = kFileHeaderBytes + metadata_len_;
    manifest.tensors.reserve(index_.size());
    for (size_t i = 0; i < index_.size(); ++i) {
      TensorEntry tensor;
      WS_RETURN_IF_ERROR(ParseRecord(i, &offset, &tensor));
      manifest.tensors.push_back(std::move(tensor));
    }
    WS_RETURN_IF_ERROR(CheckEndMarker(offset));
    return manifest;
  }

 private:
  absl::Status Error(uint64_t offset, absl::string_view field,
                     absl::string_view reason) const {
    return Malformed(source_, offset, field, reason);
  }

  absl::Status ParseFileHeader() {
    const uint64_t size = source_.size();
    char header[kFileHeaderBytes];
    if (size < kMagic.size()) {
      return Error(0, "magic",
                   absl::StrCat("the file is ", size,
                                " bytes, too short for the tensorizer magic "
                                "|TZR|"));
    }
    WS_RETURN_IF_ERROR(ReadExact(source_, 0, std::min(size, kFileHeaderBytes),
                                 "file header", header));
    if (absl::string_view(header, kMagic.size()) != kMagic) {
      return Error(
          0, "magic",
          absl::StrCat("expected |TZR| (7c 54 5a 52 7c), found ",
                       Quote(absl::string_view(header, kMagic.size()))));
    }
    // The version is checked before the length, as the reference reader
    // does, so a file from a newer writer says so even when it is short.
    if (size >= kVersionOffset + sizeof(uint32_t)) {
      version_ = DecodeLittleEndian<uint32_t>(header + kVersionOffset);
      if (version_ < kMinVersion || version_ > kMaxVersion) {
        return Error(kVersionOffset, "data version",
                     absl::StrCat(version_, " is not supported (", kMinVersion,
                                  " to ", kMaxVersion, " are)"));
      }
    }
    if (size < kFileHeaderBytes) {
      return Error(
          size, "file header",
          absl::StrCat("the file is truncated: the header needs ",
                       kFileHeaderBytes, " bytes, the file has ", size));
    }
    const auto flags_low = static_cast<unsigned char>(header[kFlagsOffset]);
    bool unknown_flags = (flags_low & ~1u) != 0;
    for (uint64_t i = 1; i < kFlagsBytes; ++i) {
      unknown_flags |= header[kFlagsOffset + i] != 0;
    }
    if (unknown_flags) {
      return Error(kFlagsOffset, "feature_flags",
                   "unknown flag bits are set (only bit 0, encrypted, is "
                   "defined)");
    }
    const bool encrypted_flag = (flags_low & 1u) != 0;
    if (encrypted_flag && version_ < kEncryptionVersion) {
      return Error(kFlagsOffset, "feature_flags",
                   absl::StrCat("bit 0 (encrypted) is set, but encryption "
                                "needs data version ",
                                kEncryptionVersion, "; this file is version ",
                                version_));
    }
    // Version 3 files carry crypt_info in every header (and a zero flags
    // field); from version 4 the flag says whether they do.
    has_crypt_info_ = version_ == kEncryptionVersion ||
                      (version_ > kEncryptionVersion && encrypted_flag);
    // Bytes 41..56 (tensor_size and an unused field) are informational: the
    // 0-d meta quirk makes tensor_size differ from the sum of data lengths.
    tensor_count_ = DecodeLittleEndian<uint64_t>(header + kTensorCountOffset);
    metadata_len_ = DecodeLittleEndian<uint64_t>(header + kMetadataLenOffset);
    if (metadata_len_ > size - kFileHeaderBytes) {
      return Error(
          kMetadataLenOffset, "metadata_len",
          absl::StrCat(metadata_len_,
                       " runs past the end of the file (the index "
                       "starts at byte ",
                       kFileHeaderBytes, "; the file has ", size, " bytes)"));
    }
    if (tensor_count_ > metadata_len_ / kMinIndexEntryBytes) {
      return Error(kTensorCountOffset, "tensor_count",
                   absl::StrCat(tensor_count_, " entries cannot fit in ",
                                "metadata_len ", metadata_len_,
                                " (an entry takes at least ",
                                kMinIndexEntryBytes, " bytes)"));
    }
    return absl::OkStatus();
  }

  absl::Status ParseIndex() {
    const uint64_t end = kFileHeaderBytes + metadata_len_;
    FieldReader reader(
        source_, kFileHeaderBytes, end,
        absl::StrCat("the end of the metadata index (byte ", end,
                     ", set by metadata_len ", metadata_len_, ")"));
    std::unordered_map<std::string, size_t> seen;
    // Entries are appended as they parse, not allocated up front from
    // tensor_count, so memory follows the bytes actually present.
    for (uint64_t i = 0; i < tensor_count_; ++i) {
      IndexEntry& entry = index_.emplace_back();
      const std::string prefix = absl::StrCat("index entry ", i, ": ");
      WS_ASSIGN_OR_RETURN(const uint16_t name_len,
                          reader.ReadInt<uint16_t>(prefix + "name_len"));
      const uint64_t name_at = reader.position();
      WS_ASSIGN_OR_RETURN(entry.name,
                          reader.ReadString(name_len, prefix + "name"));
      const std::string label = TensorLabel(entry.name);
      const uint64_t type_at = reader.position();
      WS_ASSIGN_OR_RETURN(entry.type,
                          reader.ReadInt<uint8_t>(label + ": type"));
      if (entry.type > kMaxTensorType) {
        return Error(type_at, label + ": type",
                     absl::StrCat(entry.type,
                                  " is not PARAM (0), BUFFER (1) or "
                                  "STATE_DICT (2)"));
      }
      const std::string name_problem = NameProblem(entry.name, entry.type);
      if (!name_problem.empty()) {
        return Error(name_at, label + ": name", name_problem);
      }
      const auto [it, inserted] = seen.emplace(entry.name, i);
      if (!inserted) {
        return Error(name_at, label + ": name",
                     absl::StrCat("duplicate name: index entry ", it->second,
                                  " has the same name"));
      }

      WS_ASSIGN_OR_RETURN(const uint8_t dtype_len,
                          reader.ReadInt<uint8_t>(label + ": dtype_len"));
      const uint64_t dtype_at = reader.position();
      WS_ASSIGN_OR_RETURN(entry.dtype_string,
                          reader.ReadString(dtype_len, label + ": dtype"));
      absl::StatusOr<MappedDType> mapped = MapDType(entry.dtype_string);
      if (!mapped.ok()) {
        return Error(dtype_at, label + ": dtype", mapped.status().message());
      }
      if (mapped->opaque && version_ < kOpaqueDTypeVersion) {
        return Error(dtype_at, label + ": dtype",
                     absl::StrCat("opaque dtype ", Quote(entry.dtype_string),
                                  " needs data version ", kOpaqueDTypeVersion,
                                  "; this file is version ", version_));
      }
      entry.dtype = mapped->info;

      WS_ASSIGN_OR_RETURN(const uint8_t ndim,
                          reader.ReadInt<uint8_t>(label + ": ndim"));
      const uint64_t shape_at = reader.position();
      entry.shape.resize(ndim);
      for (uint8_t d = 0; d < ndim; ++d) {
        WS_ASSIGN_OR_RETURN(entry.shape[d],
                            reader.ReadInt<uint32_t>(label + ": shape"));
      }
      absl::StatusOr<uint64_t> count = ElementCount(entry.shape);
      absl::StatusOr<uint64_t> nbytes =
          count.ok() ? ByteSize(*entry.dtype, *count) : count.status();
      if (!nbytes.ok()) {
        return Error(shape_at, label + ": shape", nbytes.status().message());
      }
      entry.nbytes = *nbytes;

      entry.header_offset_at = reader.position();
      WS_ASSIGN_OR_RETURN(entry.header_offset,
                          reader.ReadInt<uint64_t>(label + ": header_offset"));
      entry.data_offset_at = reader.position();
      WS_ASSIGN_OR_RETURN(entry.data_offset,
                          reader.ReadInt<uint64_t>(label + ": data_offset"));
      entry.data_length_at = reader.position();
      WS_ASSIGN_OR_RETURN(entry.data_length,
                          reader.ReadInt<uint64_t>(label + ": data_length"));
      WS_RETURN_IF_ERROR(CheckDataLength(entry, label));
    }
    return absl::OkStatus();
  }

  // data_length must be the tensor's size, or 0 for a meta tensor. A 0-d
  // meta tensor is the exception the writer makes by mistake: it stores
  // data_length = itemsize and reserves that many bytes without writing them
  // (a hole or an fallocate'd range, so they read back as zeros). Such a
  // record is indistinguishable from a real scalar, and it needs no special
  // case: reading its bytes yields the zeros it stands for. Only its stored
  // hashes, computed by the writer over uninitialised memory, may fail to
  // verify.
  absl::Status CheckDataLength(const IndexEntry& entry,
                               const std::string& label) const {
    if (entry.data_length == entry.nbytes) return absl::OkStatus();
    if (entry.data_length == 0 && version_ >= kMetaTensorVersion) {
      return absl::OkStatus();
    }
    std::string reason = absl::StrCat(
        entry.data_length, ", but shape ", ShapeString(entry.shape), " of ",
        entry.dtype->name, " needs ", entry.nbytes, " bytes");
    if (entry.data_length == 0) {
      absl::StrAppend(&reason,
                      " (a meta tensor, which stores no data, needs data "
                      "version ",
                      kMetaTensorVersion, "; this file is version ", version_,
                      ")");
    }
    return Error(entry.data_length_at, label + ": data_length", reason);
  }

  // Parses record `i` at *offset, checks it against index entry `i`, and
  // moves *offset past its data.
  absl::Status ParseRecord(size_t i, uint64_t* offset, TensorEntry* tensor) {
    const IndexEntry& entry = index_[i];
    const std::string label = TensorLabel(entry.name);
    const uint64_t header_offset = *offset;
    if (entry.header_offset != header_offset) {
      return Error(entry.header_offset_at, label + ": header_offset",
                   absl::StrCat("the metadata index says ", entry.header_offset,
                                ", but records follow each other without "
                                "gaps, so this one starts at byte ",
                                header_offset));
    }
    WS_ASSIGN_OR_RETURN(
        const uint64_t header_size,
        ReadIntAt<uint64_t>(source_, header_offset, label + ": header_size"));
    if (header_size == 0) {
      return Error(
          header_offset, label + ": header_size",
          absl::StrCat("0 is the end marker, but the metadata index "
                       "lists ",
                       index_.size(), " tensors and this is tensor ", i));
    }
    if (header_size < kMinHeaderBytes) {
      return Error(
          header_offset, label + ": header_size",
          absl::StrCat(header_size, " is smaller than the ", kMinHeaderBytes,
                       " bytes of a header's fixed fields"));
    }
    const uint64_t size = source_.size();
    if (header_size > size - header_offset) {
      return Error(header_offset, label + ": header_size",
                   absl::StrCat(header_size,
                                " runs past the end of the file (the header "
                                "would end at byte ",
                                header_offset + header_size, "; the file has ",
                                size, " bytes): the file is truncated"));
    }
    const uint64_t data_offset = header_offset + header_size;
    const uint64_t data_length_at = data_offset - 8;
    WS_ASSIGN_OR_RETURN(
        const int64_t signed_length,
        ReadIntAt<int64_t>(source_, data_length_at, label + ": data_length"));
    if (signed_length < 0) {
      return Error(data_length_at, label + ": data_length",
                   absl::StrCat(signed_length,
                                " is negative (reserved for compression, "
                                "which no writer produces)"));
    }
    const auto data_length = static_cast<uint64_t>(signed_length);

    FieldReader reader(
        source_, header_offset + 8, data_length_at,
        absl::StrCat("the header's data_length field (at byte ", data_length_at,
                     ", set by header_size ", header_size, ")"));
    // module_idx only says which module owned the tensor; nothing to check.
    WS_RETURN_IF_ERROR(
        reader.ReadInt<uint16_t>(label + ": module_idx").status());
    const uint64_t type_at = reader.position();
    WS_ASSIGN_OR_RETURN(const uint8_t type,
                        reader.ReadInt<uint8_t>(label + ": type"));
    if (type != entry.type) {
      return Disagreement(type_at, label + ": type", absl::StrCat(type),
                          absl::StrCat(entry.type));
    }
    WS_ASSIGN_OR_RETURN(const uint16_t name_len,
                        reader.ReadInt<uint16_t>(label + ": name_len"));
    const uint64_t name_at = reader.position();
    WS_ASSIGN_OR_RETURN(const std::string name,
                        reader.ReadString(name_len, label + ": name"));
    if (name != entry.name) {
      return Disagreement(name_at, label + ": name", Quote(name),
                          Quote(entry.name));
    }
    WS_ASSIGN_OR_RETURN(const uint8_t dtype_len,
                        reader.ReadInt<uint8_t>(label + ": dtype_len"));
    const uint64_t dtype_at = reader.position();
    WS_ASSIGN_OR_RETURN(const std::string dtype,
                        reader.ReadString(dtype_len, label + ": dtype"));
    if (dtype != entry.dtype_string) {
      return Disagreement(dtype_at, label + ": dtype", Quote(dtype),
                          Quote(entry.dtype_string));
    }
    WS_ASSIGN_OR_RETURN(const uint8_t ndim,
                        reader.ReadInt<uint8_t>(label + ": ndim"));
    const uint64_t shape_at = reader.position();
    std::vector<uint64_t> shape(ndim);
    for (uint8_t d = 0; d < ndim; ++d) {
      WS_ASSIGN_OR_RETURN(shape[d],
                          reader.ReadInt<uint32_t>(label + ": shape"));
    }
    if (shape != entry.shape) {
      return Disagreement(shape_at, label + ": shape", ShapeString(shape),
                          ShapeString(entry.shape));
    }

    std::vector<StoredHash> hashes;
    WS_RETURN_IF_ERROR(ParseHashes(reader, header_offset, label, &hashes));
    const uint64_t hash_block_end = reader.position();

    if (has_crypt_info_) {
      WS_ASSIGN_OR_RETURN(tensor->encryption,
                          ParseCryptInfo(reader, label, data_length));
      if (!tensor->encryption.has_value() && data_length > 0 &&
          !shape.empty()) {
        return Error(hash_block_end, label + ": crypt_info",
                     absl::StrCat("no XSalsa20-Poly1305 chunk, but the tensor "
                                  "stores ",
                                  data_length,
                                  " bytes in an encrypted file (only meta "
                                  "tensors go unencrypted there)"));
      }
      // A 0-d tensor with data but no cipher chunk is the writer's 0-d meta
      // quirk (see CheckDataLength): its reserved bytes are plain zeros.
    }
    if (reader.remaining() != 0) {
      return Error(
          header_offset, label + ": header_size",
          absl::StrCat(header_size,
                       ", but the header's fields and data_length "
                       "take ",
                       reader.position() + 8 - header_offset, " bytes"));
    }

    if (data_length != entry.data_length) {
      return Disagreement(data_length_at, label + ": data_length",
                          absl::StrCat(data_length),
                          absl::StrCat(entry.data_length));
    }
    if (entry.data_offset != data_offset) {
      return Error(entry.data_offset_at, label + ": data_offset",
                   absl::StrCat("the metadata index says ", entry.data_offset,
                                ", but the header (header_size ", header_size,
                                ") puts the data at byte ", data_offset));
    }
    if (data_length > size - data_offset) {
      return Error(data_offset, label + ": data",
                   absl::StrCat(data_length,
                                " bytes run past the end of the file (the "
                                "data would end at byte ",
                                data_offset + data_length, "; the file has ",
                                size, " bytes): the file is truncated"));
    }

    tensor->name = entry.name;
    tensor->dtype = std::string(entry.dtype->name);
    tensor->role = std::string(TensorRole(entry.type));
    tensor->shape = entry.shape;
    tensor->nbytes = entry.nbytes;
    tensor->offset = data_offset;
    tensor->stored_bytes = data_length;
    if (!hashes.empty()) {
      WS_ASSIGN_OR_RETURN(const std::string prefix,
                          HashedHeader(header_offset, hash_block_end,
                                       data_length_at, hashes, label));
      for (StoredHash& hash : hashes) {
        StoredChecksum checksum;
        checksum.prefix = prefix;
        if (hash.type == kHashCrc32) {
          checksum.kind = StoredChecksum::Kind::kCrc32;
          // Stored little-endian; the manifest keeps CRC32 big-endian.
          checksum.digest.assign(hash.value.rbegin(), hash.value.rend());
        } else {
          checksum.kind = StoredChecksum::Kind::kSha256;
          checksum.digest = std::move(hash.value);
        }
        tensor->checksums.push_back(std::move(checksum));
      }
    }
    *offset = data_offset + data_length;
    return absl::OkStatus();
  }

  absl::Status Disagreement(uint64_t offset, const std::string& field,
                            absl::string_view header_value,
                            absl::string_view index_value) const {
    return Error(offset, field,
                 absl::StrCat("the header says ", header_value,
                              ", but the metadata index says ", index_value));
  }

  absl::Status ParseHashes(FieldReader& reader, uint64_t header_offset,
                           const std::string& label,
                           std::vector<StoredHash>* hashes) const {
    const uint64_t block_len_at = reader.position();
    WS_ASSIGN_OR_RETURN(const uint16_t block_len,
                        reader.ReadInt<uint16_t>(label + ": hash_block_len"));
    const uint64_t block_start = reader.position();
    WS_ASSIGN_OR_RETURN(const uint8_t count,
                        reader.ReadInt<uint8_t>(label + ": hash_count"));
    for (uint8_t h = 0; h < count; ++h) {
      const std::string field = absl::StrCat(label, ": hash ", h);
      StoredHash hash;
      const uint64_t type_at = reader.position();
      WS_ASSIGN_OR_RETURN(hash.type, reader.ReadInt<uint8_t>(field + " type"));
      WS_ASSIGN_OR_RETURN(const uint8_t length,
                          reader.ReadInt<uint8_t>(field + " length"));
      uint8_t expected_length;
      absl::string_view kind;
      if (hash.type == kHashCrc32) {
        expected_length = kCrc32Bytes;
        kind = "CRC32";
      } else if (hash.type == kHashSha256) {
        expected_length = kSha256Bytes;
        kind = "SHA-256";
      } else {
        return Error(
            type_at, field + " type",
            absl::StrCat(hash.type, " is not CRC32 (0) or SHA-256 (1)"));
      }
      if (length != expected_length) {
        return Error(type_at + 1, field + " length",
                     absl::StrCat(length, " bytes, but a ", kind, " is ",
                                  expected_length));
      }
      hash.value_offset = reader.position() - header_offset;
      WS_ASSIGN_OR_RETURN(hash.value,
                          reader.ReadString(length, field + " value"));
      hashes->push_back(std::move(hash));
    }
    const uint64_t taken = reader.position() - block_start;
    if (taken != block_len) {
      return Error(block_len_at, label + ": hash_block_len",
                   absl::StrCat(block_len, ", but hash_count and its ", count,
                                " entries take ", taken, " bytes"));
    }
    return absl::OkStatus();
  }

  // Parses the crypt_info block. Returns the encryption of the tensor's
  // data, or nullopt when there is nothing to decrypt (a block without a
  // cipher chunk, as the writer gives meta tensors, or a tensor with no
  // stored bytes).
  absl::StatusOr<std::optional<TensorEncryption>> ParseCryptInfo(
      FieldReader& reader, const std::string& label,
      uint64_t data_length) const {
    const uint64_t length_at = reader.position();
    if (reader.remaining() == 0) {
      return Error(length_at, label + ": crypt_info",
                   absl::StrCat("missing: every header of an encrypted file "
                                "(version 3, or version 4 with flag bit 0) "
                                "has a crypt_info block; this is version ",
                                version_));
    }
    WS_ASSIGN_OR_RETURN(
        const uint64_t length,
        reader.ReadInt<uint64_t>(label + ": crypt_info length"));
    if (length > reader.remaining()) {
      return Error(length_at, label + ": crypt_info length",
                   absl::StrCat(length,
                                " runs past the header's data_length "
                                "field (",
                                reader.remaining(), " bytes remain)"));
    }
    const uint64_t end = reader.position() + length;
    WS_ASSIGN_OR_RETURN(
        const uint16_t chunk_count,
        reader.ReadInt<uint16_t>(label + ": crypt_info chunks"));
    std::optional<KeyDerivation> key_derivation;
    std::optional<TensorEncryption> cipher;
    for (uint16_t c = 0; c < chunk_count; ++c) {
      const std::string field = absl::StrCat(label, ": crypt_info chunk ", c);
      const uint64_t chunk_at = reader.position();
      WS_ASSIGN_OR_RETURN(const uint64_t chunk_len,
                          reader.ReadInt<uint64_t>(field + " length"));
      if (chunk_len > end - std::min(end, reader.position())) {
        return Error(chunk_at, field + " length",
                     absl::StrCat(chunk_len,
                                  " runs past the end of the "
                                  "crypt_info block at byte ",
                                  end));
      }
      const uint64_t chunk_end = reader.position() + chunk_len;
      const uint64_t type_at = reader.position();
      WS_ASSIGN_OR_RETURN(const uint16_t chunk_type,
                          reader.ReadInt<uint16_t>(field + " type"));
      if (chunk_type == kChunkKeyDerivation) {
        if (key_derivation.has_value()) {
          return Error(type_at, field + " type",
                       "a second key derivation chunk");
        }
        WS_ASSIGN_OR_RETURN(key_derivation, ParseKeyDerivation(reader, field));
      } else if (chunk_type == kChunkXSalsa20Parallel) {
        if (cipher.has_value()) {
          return Error(type_at, field + " type",
                       "a second XSalsa20-Poly1305 chunk");
        }
        WS_ASSIGN_OR_RETURN(
            cipher, ParseCipherChunk(reader, field, data_length, chunk_end));
      } else if (chunk_type == kChunkXSalsa20Sequential) {
        return Error(type_at, field + " type",
                     "3 (sequential XSalsa20) is not supported; tensorizer "
                     "never writes it");
      } else {
        return Error(type_at, field + " type",
                     absl::StrCat(chunk_type,
                                  " is not key derivation (1) or "
                                  "XSalsa20-Poly1305 (2)"));
      }
      if (reader.position() != chunk_end) {
        return Error(chunk_at, field + " length",
                     absl::StrCat(chunk_len, ", but the chunk's fields take ",
                                  reader.position() - chunk_at - 8, " bytes"));
      }
    }
    if (reader.position() != end) {
      return Error(
          length_at, label + ": crypt_info length",
          absl::StrCat(length, ", but its ", chunk_count, " chunks take ",
                       reader.position() - length_at - 8, " bytes"));
    }
    if (key_derivation.has_value() && !cipher.has_value()) {
      return Error(length_at, label + ": crypt_info",
                   "a key derivation chunk without an XSalsa20-Poly1305 "
                   "chunk");
    }
    // With no stored bytes there is nothing to decrypt (num_macs is 0), so a
    // cipher chunk would only make readers ask for a key they do not need.
    if (!cipher.has_value() || data_length == 0) return std::nullopt;
    cipher->key_derivation = std::move(key_derivation);
    return cipher;
  }

  absl::StatusOr<KeyDerivation> ParseKeyDerivation(
      FieldReader& reader, const std::string& field) const {
    const uint64_t method_at = reader.position();
    WS_ASSIGN_OR_RETURN(const uint16_t method,
                        reader.ReadInt<uint16_t>(field + " method"));
    if (method != kKdfMethodPwhash) {
      return Error(method_at, field + " method",
                   absl::StrCat(method, " is not libsodium crypto_pwhash (1)"));
    }
    KeyDerivation kdf;
    WS_ASSIGN_OR_RETURN(kdf.opslimit,
                        reader.ReadInt<uint64_t>(field + " opslimit"));
    WS_ASSIGN_OR_RETURN(kdf.memlimit,
                        reader.ReadInt<uint64_t>(field + " memlimit"));
    const uint64_t alg_at = reader.position();
    WS_ASSIGN_OR_RETURN(kdf.algorithm, reader.ReadInt<int32_t>(field + " alg"));
    if (kdf.algorithm != kKdfAlgArgon2id13) {
      return Error(alg_at, field + " alg",
                   absl::StrCat(kdf.algorithm, " is not Argon2id13 (2)"));
    }
    WS_ASSIGN_OR_RETURN(const uint16_t salt_len,
                        reader.ReadInt<uint16_t>(field + " salt_len"));
    WS_ASSIGN_OR_RETURN(kdf.salt, reader.ReadString(salt_len, field + " salt"));
    return kdf;
  }

  absl::StatusOr<TensorEncryption> ParseCipherChunk(FieldReader& reader,
                                                    const std::string& field,
                                                    uint64_t data_length,
                                                    uint64_t chunk_end) const {
    TensorEncryption cipher;
    const uint64_t chunk_size_at = reader.position();
    WS_ASSIGN_OR_RETURN(cipher.chunk_size,
                        reader.ReadInt<uint64_t>(field + " chunk_size"));
    if (cipher.chunk_size < kMinCipherChunkSize ||
        cipher.chunk_size % kCipherChunkAlignment != 0) {
      return Error(chunk_size_at, field + " chunk_size",
                   absl::StrCat(cipher.chunk_size, " must be at least ",
                                kMinCipherChunkSize, " and a multiple of ",
                                kCipherChunkAlignment));
    }
    WS_RETURN_IF_ERROR(
        reader.Read(cipher.nonce.size(), field + " nonce",
                    reinterpret_cast<char*>(cipher.nonce.data())));
    const uint64_t num_macs_at = reader.position();
    WS_ASSIGN_OR_RETURN(const uint64_t num_macs,
                        reader.ReadInt<uint64_t>(field + " num_macs"));
    const uint64_t expected = data_length / cipher.chunk_size +
                              (data_length % cipher.chunk_size != 0 ? 1 : 0);
    if (num_macs != expected) {
      return Error(
          num_macs_at, field + " num_macs",
          absl::StrCat(num_macs, ", but ", data_length, " bytes in chunks of ",
                       cipher.chunk_size, " need ", expected));
    }
    // `expected` is bounded by the file's size, but check against the chunk
    // before allocating so the message says where the MACs ran out.
    const uint64_t room = chunk_end - std::min(chunk_end, reader.position());
    if (num_macs > room / kMacBytes) {
      return Error(num_macs_at, field + " num_macs",
                   absl::StrCat(num_macs, " MACs of ", kMacBytes,
                                " bytes do not fit in the chunk's remaining ",
                                room, " bytes"));
    }
    cipher.macs.resize(num_macs);
    for (auto& mac : cipher.macs) {
      WS_RETURN_IF_ERROR(reader.Read(mac.size(), field + " mac",
                                     reinterpret_cast<char*>(mac.data())));
    }
    return cipher;
  }

  // The header bytes the stored hashes cover ahead of the data: from
  // header_size through the hash block, then data_length (crypt_info is
  // left out), with every hash value zeroed.
  absl::StatusOr<std::string> HashedHeader(
      uint64_t header_offset, uint64_t hash_block_end, uint64_t data_length_at,
      const std::vector<StoredHash>& hashes, const std::string& label) const {
    const uint64_t head = hash_block_end - header_offset;
    std::string prefix(head + 8, '\0');
    WS_RETURN_IF_ERROR(ReadExact(source_, header_offset, head,
                                 label + ": header", prefix.data()));
    WS_RETURN_IF_ERROR(ReadExact(source_, data_length_at, 8,
                                 label + ": data_length",
                                 prefix.data() + head));
    for (const StoredHash& hash : hashes) {
      std::fill_n(prefix.begin() + static_cast<ptrdiff_t>(hash.value_offset),
                  hash.value.size(), '\0');
    }
    return prefix;
  }

  absl::Status CheckEndMarker(uint64_t offset) const {
    const uint64_t size = source_.size();
    if (size - offset < 8) {
      return Error(offset, "end marker",
                   absl::StrCat("missing: a u64 0 must follow the last of ",
                                index_.size(),
                                " records, but the file ends "
                                "at byte ",
                                size));
    }
    WS_ASSIGN_OR_RETURN(const uint64_t marker,
                        ReadIntAt<uint64_t>(source_, offset, "end marker"));
    if (marker != 0) {
      return Error(offset, "end marker",
                   absl::StrCat("expected a u64 0 after the last of ",
                                index_.size(), " records, found ", marker,
                                " (a record the metadata index does not "
                                "list?)"));
    }
    return absl::OkStatus();
  }

  const ByteSource& source_;
  uint32_t version_ = 0;
  bool has_crypt_info_ = false;
  uint64_t tensor_count_ = 0;
  uint64_t metadata_len_ = 0;
  std::vector<IndexEntry> index_;
};

}  // namespace

absl::StatusOr<FileManifest> ParseTensorizer(const ByteSource& source,
                                             const ParseOptions& /*options*/) {
  return Parser(source).Parse();
}

}  // namespace warmstart
