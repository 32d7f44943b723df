#include "daemon/formats/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "daemon/formats/dtype.h"
#include "daemon/formats/text_util.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kLengthBytes = 8;

// The dtypes safetensors defines. dtype.h knows more (C32, GGUF block types),
// which a safetensors reader must not accept.
constexpr absl::string_view kSafetensorsDTypes[] = {
    "BOOL",    "F4",      "F6_E2M3", "F6_E3M2",     "U8",          "I8",
    "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16",
    "U16",     "F16",     "BF16",    "I32",         "U32",         "F32",
    "C64",     "F64",     "I64",     "U64",
};

const DTypeInfo* FindSafetensorsDType(absl::string_view name) {
  for (absl::string_view known : kSafetensorsDTypes) {
    if (known == name) return FindDType(name);
  }
  return nullptr;
}

std::string DescribeByte(char c) {
  const auto byte = static_cast<unsigned char>(c);
  if (byte > 0x20 && byte < 0x7f) {
    return absl::StrCat("'", std::string(1, c), "'");
  }
  return absl::StrCat("0x", absl::Hex(byte, absl::kZeroPad2));
}

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Reads through `source`, turning a read past the end into the
// InvalidArgument that every malformed-input error uses.
absl::Status ReadRange(const ByteSource& source, uint64_t offset,
                       uint64_t length, absl::string_view what, char* out) {
  absl::Status status = source.ReadAt(offset, length, out);
  if (absl::IsOutOfRange(status)) {
    return absl::InvalidArgumentError(absl::StrCat(
        source.name(), ": at byte ", offset, ": file is truncated: ", what,
        " needs ", length, " bytes, but the file has ", source.size(),
        " bytes in all"));
  }
  return status;
}

// One tensor entry as the header describes it.
struct Entry {
  std::string name;
  const DTypeInfo* dtype = nullptr;
  std::vector<uint64_t> shape;
  std::vector<uint64_t> offsets;  // [begin, end] once the entry is complete.
  uint64_t nbytes = 0;
};

// Walks the header's JSON events and checks each value where it appears, so
// that duplicate keys (which a DOM parser would merge silently) are seen and
// the first broken rule stops the parse. Nothing deeper than a tensor
// entry's arrays is ever entered, so the handler's state is flat.
class HeaderHandler : public nlohmann::json_sax<Json> {
 public:
  explicit HeaderHandler(const std::string& path) : path_(path) {}

  // The first rule the header broke, or OK.
  const absl::Status& status() const { return status_; }
  // True once the top-level object has been closed.
  bool finished() const { return state_ == State::kDone; }

  std::vector<Entry>& entries() { return entries_; }
  nlohmann::ordered_json& metadata() { return metadata_; }

  bool null() override { return RejectValue("null"); }
  bool boolean(bool) override { return RejectValue("a boolean"); }
  bool binary(binary_t&) override { return RejectValue("binary data"); }

  bool number_unsigned(number_unsigned_t value) override {
    if (state_ != State::kArray) return RejectValue("a number");
    Field().push_back(value);
    return true;
  }

  bool number_integer(number_integer_t value) override {
    if (state_ != State::kArray) return RejectValue("a number");
    // The lexer reports every literal with a minus sign here, "-0" included.
    if (value < 0) {
      return Fail(FieldWhere(), absl::StrCat(value, " is negative"));
    }
    Field().push_back(static_cast<uint64_t>(value));
    return true;
  }

  bool number_float(number_float_t, const string_t& literal) override {
    if (state_ != State::kArray) return RejectValue("a number");
    // Integer literals past the uint64 range arrive here as floats; tell
    // them apart from fractions so the message says what is wrong.
    absl::string_view digits = literal;
    const bool negative = absl::ConsumePrefix(&digits, "-");
    const bool integer = !digits.empty() &&
                         std::all_of(digits.begin(), digits.end(), [](char c) {
                           return absl::ascii_isdigit(c);
                         });
    // A literal can be arbitrarily long; 2^64 has 20 digits.
    constexpr size_t kMaxShown = 40;
    std::string shown = literal.substr(0, kMaxShown);
    if (literal.size() > kMaxShown) shown += "...";
    if (integer && negative) {
      return Fail(FieldWhere(), absl::StrCat(shown, " is negative"));
    }
    if (integer) {
      return Fail(FieldWhere(), absl::StrCat(shown, " exceeds 2^64-1"));
    }
    return Fail(FieldWhere(), absl::StrCat(shown, " is not an integer"));
  }

  bool string(string_t& value) override {
    if (state_ == State::kMetadataValue) {
      // Duplicates were rejected in key(); ordered_map's own insert would
      // search linearly, which is quadratic in the number of keys.
      metadata_.get_ptr<nlohmann::ordered_json::object_t*>()
          ->Container::emplace_back(std::move(metadata_key_), std::move(value));
      state_ = State::kMetadata;
      return true;
    }
    if (state_ == State::kEntryValue && field_ == FieldKind::kDtype) {
      entry_.dtype = FindSafetensorsDType(value);
      if (entry_.dtype == nullptr) {
        return Fail(FieldWhere(),
                    absl::StrCat("unknown safetensors dtype ", Quote(value)));
      }
      state_ = State::kEntry;
      return true;
    }
    return RejectValue("a string");
  }

  bool start_object(std::size_t) override {
    switch (state_) {
      case State::kStart:
        state_ = State::kTop;
        return true;
      case State::kTopValue:
        if (top_key_ == "__metadata__") {
          state_ = State::kMetadata;
        } else {
          entry_ = Entry();
          entry_.name = top_key_;
          seen_dtype_ = seen_shape_ = seen_offsets_ = false;
          state_ = State::kEntry;
        }
        return true;
      default:
        return RejectValue("an object");
    }
  }

  bool key(string_t& key) override {
    switch (state_) {
      case State::kTop:
        return TopKey(std::move(key));
      case State::kMetadata:
        if (!metadata_keys_.insert(key).second) {
          return Fail("key \"__metadata__\"",
                      absl::StrCat("duplicate key ", Quote(key)));
        }
        metadata_key_ = std::move(key);
        state_ = State::kMetadataValue;
        return true;
      default:
        // The only other object the handler enters is a tensor entry.
        return EntryKey(key);
    }
  }

  bool end_object() override {
    switch (state_) {
      case State::kMetadata:
        state_ = State::kTop;
        return true;
      case State::kTop:
        state_ = State::kDone;
        return true;
      default:
        // The only other object the handler enters is a tensor entry.
        return FinishEntry();
    }
  }

  bool start_array(std::size_t) override {
    if (state_ == State::kEntryValue && field_ != FieldKind::kDtype) {
      Field().clear();
      state_ = State::kArray;
      return true;
    }
    return RejectValue("an array");
  }

  bool end_array() override {
    // Arrays are entered only for shape and data_offsets.
    if (field_ == FieldKind::kOffsets && entry_.offsets.size() != 2) {
      return Fail(FieldWhere(),
                  absl::StrCat("must hold exactly 2 numbers [begin, end], "
                               "found ",
                               entry_.offsets.size()));
    }
    state_ = State::kEntry;
    return true;
  }

  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& error) override {
    // A number too large even for a double (1e400, a 400-digit integer) is
    // valid JSON that nlohmann reports as an error; judge it as the number
    // it is, where it is.
    constexpr int kNumberOverflow = 406;
    if (error.id == kNumberOverflow) return number_float(0, last_token);
    syntax_error_position_ = position;
    syntax_error_ = error.what();
    return false;
  }

  // Where the JSON parser stopped and why; empty when it did not fail.
  size_t syntax_error_position() const { return syntax_error_position_; }
  const std::string& syntax_error() const { return syntax_error_; }

 private:
  enum class State {
    kStart,          // Before the top-level object.
    kTop,            // In the top-level object, expecting a key.
    kTopValue,       // After a top-level key.
    kMetadata,       // In __metadata__, expecting a key.
    kMetadataValue,  // After a __metadata__ key.
    kEntry,          // In a tensor entry, expecting a key.
    kEntryValue,     // After a tensor entry key.
    kArray,          // In the shape or data_offsets array.
    kDone,           // The top-level object has been closed.
  };
  enum class FieldKind { kDtype, kShape, kOffsets };

  bool Fail(absl::string_view where, absl::string_view what) {
    status_ = absl::InvalidArgumentError(
        absl::StrCat(path_, ": ", where, ": ", what));
    return false;
  }

  std::string EntryWhere() const {
    return absl::StrCat("tensor ", Quote(entry_.name));
  }

  absl::string_view FieldName() const {
    switch (field_) {
      case FieldKind::kDtype:
        return "dtype";
      case FieldKind::kShape:
        return "shape";
      case FieldKind::kOffsets:
        return "data_offsets";
    }
    return "";
  }

  std::string FieldWhere() const {
    return absl::StrCat(EntryWhere(), ": ", FieldName());
  }

  std::vector<uint64_t>& Field() {
    return field_ == FieldKind::kShape ? entry_.shape : entry_.offsets;
  }

  // A value of the wrong type (`kind`) where the current state expects
  // something else.
  bool RejectValue(absl::string_view kind) {
    switch (state_) {
      case State::kTopValue:
        if (top_key_ == "__metadata__") {
          return Fail("key \"__metadata__\"",
                      absl::StrCat("must be an object mapping strings to "
                                   "strings, found ",
                                   kind));
        }
        return Fail(absl::StrCat("tensor ", Quote(top_key_)),
                    absl::StrCat("entry must be an object, found ", kind));
      case State::kMetadataValue:
        return Fail("key \"__metadata__\"",
                    absl::StrCat("value of ", Quote(metadata_key_),
                                 " must be a string, found ", kind));
      case State::kEntryValue:
        if (field_ == FieldKind::kDtype) {
          return Fail(FieldWhere(),
                      absl::StrCat("must be a string, found ", kind));
        }
        return Fail(FieldWhere(),
                    absl::StrCat("must be an array of non-negative integers, "
                                 "found ",
                                 kind));
      case State::kArray:
        return Fail(FieldWhere(),
                    absl::StrCat("must be an array of non-negative integers, "
                                 "found ",
                                 kind, " in it"));
      default:
        // kStart cannot see a value: the header was checked to begin with
        // '{'. Keys and closings are not values.
        return Fail("at byte 8", absl::StrCat("unexpected ", kind));
    }
  }

  bool TopKey(std::string key) {
    if (!top_keys_.insert(key).second) {
      if (key == "__metadata__") {
        return Fail("key \"__metadata__\"", "duplicate key");
      }
      return Fail(absl::StrCat("tensor ", Quote(key)),
                  "duplicate tensor name in the header");
    }
    top_key_ = std::move(key);
    state_ = State::kTopValue;
    return true;
  }

  bool EntryKey(const std::string& key) {
    bool* seen;
    if (key == "dtype") {
      field_ = FieldKind::kDtype;
      seen = &seen_dtype_;
    } else if (key == "shape") {
      field_ = FieldKind::kShape;
      seen = &seen_shape_;
    } else if (key == "data_offsets") {
      field_ = FieldKind::kOffsets;
      seen = &seen_offsets_;
    } else {
      return Fail(EntryWhere(),
                  absl::StrCat("unknown key ", Quote(key),
                               " (an entry holds only dtype, shape and "
                               "data_offsets)"));
    }
    if (*seen) {
      return Fail(EntryWhere(), absl::StrCat("duplicate key ", Quote(key)));
    }
    *seen = true;
    state_ = State::kEntryValue;
    return true;
  }

  // Checks a complete entry on its own: fields present, size computable,
  // offsets ordered and matching the size. Layout across entries is checked
  // once all are known.
  bool FinishEntry() {
    for (const auto& [seen, name] :
         {std::pair<bool, const char*>{seen_dtype_, "dtype"},
          {seen_shape_, "shape"},
          {seen_offsets_, "data_offsets"}}) {
      if (!seen) {
        return Fail(EntryWhere(), absl::StrCat("missing key \"", name, "\""));
      }
    }
    absl::StatusOr<uint64_t> count = ElementCount(entry_.shape);
    if (!count.ok()) return Fail(EntryWhere(), count.status().message());
    absl::StatusOr<uint64_t> size = ByteSize(*entry_.dtype, *count);
    if (!size.ok()) return Fail(EntryWhere(), size.status().message());
    entry_.nbytes = *size;
    const uint64_t begin = entry_.offsets[0];
    const uint64_t end = entry_.offsets[1];
    if (end < begin) {
      return Fail(absl::StrCat(EntryWhere(), ": data_offsets"),
                  absl::StrCat("end ", end, " is before begin ", begin));
    }
    if (end - begin != entry_.nbytes) {
      return Fail(absl::StrCat(EntryWhere(), ": data_offsets"),
                  absl::StrCat("[", begin, ", ", end, "] hold ", end - begin,
                               " bytes, but ", entry_.dtype->name, " ",
                               ShapeString(entry_.shape), " needs ",
                               entry_.nbytes, " (size mismatch)"));
    }
    entries_.push_back(std::move(entry_));
    state_ = State::kTop;
    return true;
  }

  const std::string& path_;
  absl::Status status_;
  State state_ = State::kStart;
  FieldKind field_ = FieldKind::kDtype;

  std::unordered_set<std::string> top_keys_;
  std::string top_key_;

  std::unordered_set<std::string> metadata_keys_;
  std::string metadata_key_;
  nlohmann::ordered_json metadata_ = nlohmann::ordered_json::object();

  Entry entry_;
  bool seen_dtype_ = false;
  bool seen_shape_ = false;
  bool seen_offsets_ = false;
  std::vector<Entry> entries_;

  size_t syntax_error_position_ = 0;
  std::string syntax_error_;
};

}  // namespace

absl::StatusOr<FileManifest> ParseSafetensors(const ByteSource& source,
                                              const ParseOptions&) {
  const std::string& path = source.name();
  const uint64_t file_size = source.size();
  auto invalid = [&path](absl::string_view where, absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", where, ": ", what));
  };

  unsigned char length_bytes[kLengthBytes];
  WS_RETURN_IF_ERROR(ReadRange(source, 0, kLengthBytes,
                               "the 8-byte header length",
                               reinterpret_cast<char*>(length_bytes)));
  uint64_t header_length = 0;
  for (int i = static_cast<int>(kLengthBytes) - 1; i >= 0; --i) {
    header_length = (header_length << 8) | length_bytes[i];
  }
  if (header_length > kSafetensorsMaxHeaderBytes) {
    return invalid(
        "at byte 0",
        absl::StrCat("header length ", header_length, " exceeds the limit of ",
                     kSafetensorsMaxHeaderBytes, " bytes"));
  }
  if (header_length > file_size - kLengthBytes) {
    return invalid(
        "at byte 0",
        absl::StrCat("header length ", header_length,
                     " runs past the end of the file: 8 + ", header_length,
                     " bytes of header, but the file has ", file_size,
                     " bytes (truncated, or not a safetensors file)"));
  }

  std::string header(header_length, '\0');
  WS_RETURN_IF_ERROR(ReadRange(source, kLengthBytes, header_length,
                               "the header", header.data()));

  if (size_t bad = FindInvalidUtf8(header); bad != absl::string_view::npos) {
    return invalid(absl::StrCat("at byte ", kLengthBytes + bad),
                   "header is not valid UTF-8");
  }
  if (header.empty()) {
    return invalid("at byte 8", "header is empty; it must be a JSON object");
  }
  if (absl::ascii_isspace(static_cast<unsigned char>(header[0]))) {
    return invalid("at byte 8",
                   absl::StrCat("header must start with '{', not whitespace (",
                                DescribeByte(header[0]), ")"));
  }
  if (header[0] != '{') {
    return invalid("at byte 8",
                   absl::StrCat("header is not a JSON object: it must start "
                                "with '{', found ",
                                DescribeByte(header[0])));
  }
  // The JSON lexer takes a NUL byte for the end of its input, so a NUL
  // would hide whatever follows it from the parser.
  if (size_t nul = header.find('\0'); nul != std::string::npos) {
    return invalid(absl::StrCat("at byte ", kLengthBytes + nul),
                   "header is not valid JSON: it contains a NUL byte");
  }

  HeaderHandler handler(path);
  if (!Json::sax_parse(header.begin(), header.end(), &handler)) {
    if (!handler.status().ok()) return handler.status();
    // The parser counts characters read, so the offending one is the last.
    const uint64_t at =
        kLengthBytes +
        std::min<uint64_t>(
            header_length,
            std::max<size_t>(handler.syntax_error_position(), 1) - 1);
    const std::string shown = JsonErrorDetail(handler.syntax_error());
    if (handler.finished()) {
      return invalid(absl::StrCat("at byte ", at),
                     absl::StrCat("unexpected bytes after the JSON object; "
                                  "only spaces (0x20) may follow it (",
                                  shown, ")"));
    }
    return invalid(absl::StrCat("at byte ", at),
                   absl::StrCat("header is not valid JSON: ", shown));
  }
  // The parser allows any JSON whitespace after the object; the format
  // allows only spaces. The object ends at the last non-whitespace byte.
  const size_t object_end = header.find_last_not_of(" \t\n\r");
  for (size_t i = object_end + 1; i < header.size(); ++i) {
    if (header[i] != ' ') {
      return invalid(absl::StrCat("at byte ", kLengthBytes + i),
                     absl::StrCat("unexpected ", DescribeByte(header[i]),
                                  " after the JSON object; only spaces "
                                  "(0x20) may follow it"));
    }
  }

  std::vector<Entry>& entries = handler.entries();
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.offsets[0], a.offsets[1], a.name) <
           std::tie(b.offsets[0], b.offsets[1], b.name);
  });
  uint64_t expected_begin = 0;
  const Entry* previous = nullptr;
  for (const Entry& entry : entries) {
    const uint64_t begin = entry.offsets[0];
    const std::string where =
        absl::StrCat("tensor ", Quote(entry.name), ": data_offsets");
    if (previous == nullptr && begin != 0) {
      return invalid(where, absl::StrCat("the first tensor in the data must "
                                         "begin at 0, not ",
                                         begin));
    }
    if (begin > expected_begin) {
      return invalid(
          where, absl::StrCat("begins at ", begin, ", leaving a gap of ",
                              begin - expected_begin, " bytes after tensor ",
                              Quote(previous->name), " (ends at ",
                              expected_begin, ")"));
    }
    if (begin < expected_begin) {
      return invalid(
          where, absl::StrCat("begins at ", begin, ", which overlaps tensor ",
                              Quote(previous->name), " (ends at ",
                              expected_begin, ")"));
    }
    expected_begin = entry.offsets[1];
    previous = &entry;
  }

  const uint64_t data_start = kLengthBytes + header_length;
  const uint64_t data_available = file_size - data_start;
  if (expected_begin > data_available) {
    return invalid(
        absl::StrCat("tensor ", Quote(previous->name), ": data_offsets"),
        absl::StrCat("data ends ", expected_begin,
                     " bytes into the data, which starts at byte ", data_start,
                     ", but the file holds only ", data_available,
                     " bytes of data (", file_size,
                     " in all): the file is truncated"));
  }
  if (expected_begin < data_available) {
    const uint64_t extra = data_available - expected_begin;
    return invalid(
        absl::StrCat("at byte ", data_start + expected_begin),
        absl::StrCat(extra, extra == 1 ? " trailing byte" : " trailing bytes",
                     " after the end of the tensor data; a safetensors file "
                     "must end where its data ends"));
  }

  FileManifest manifest;
  manifest.path = path;
  manifest.format = Format::kSafetensors;
  manifest.file_size = file_size;
  manifest.metadata = std::move(handler.metadata());
  manifest.tensors.reserve(entries.size());
  for (Entry& entry : entries) {
    TensorEntry tensor;
    tensor.name = std::move(entry.name);
    tensor.dtype = std::string(entry.dtype->name);
    tensor.shape = std::move(entry.shape);
    tensor.nbytes = entry.nbytes;
    tensor.offset = data_start + entry.offsets[0];
    tensor.stored_bytes = entry.nbytes;
    manifest.tensors.push_back(std::move(tensor));
  }
  return manifest;
}

}  // namespace warmstart
