#include "daemon/base/printable.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace warmstart {
namespace {

// The length of the valid UTF-8 sequence starting at `text[i]`, or 0.
size_t Utf8Length(absl::string_view text, size_t i) {
  const auto byte = [&](size_t k) {
    return static_cast<unsigned char>(text[i + k]);
  };
  const unsigned char lead = byte(0);
  size_t length;
  uint32_t value;
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
    value = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    value = lead & 0x0f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    value = lead & 0x07;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(k) & 0xc0) != 0x80) return 0;
    value = (value << 6) | (byte(k) & 0x3f);
  }
  // Overlong forms, surrogates and values past U+10FFFF.
  if ((length == 3 && value < 0x800) || (length == 4 && value < 0x10000) ||
      (value >= 0xd800 && value <= 0xdfff) || value > 0x10ffff) {
    return 0;
  }
  return length;
}

std::string Escape(absl::string_view text, bool keep_newlines) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const size_t length = Utf8Length(text, i);
    const bool c0 = byte < 0x20 && !(keep_newlines && byte == '\n');
    // U+0080..U+009F are encoded 0xc2 0x80..0x9f.
    const bool c1 = length == 2 && byte == 0xc2 &&
                    static_cast<unsigned char>(text[i + 1]) < 0xa0;
    if (length == 0 || c0 || byte == 0x7f || c1) {
      const size_t bytes = length == 0 ? 1 : length;
      for (size_t k = 0; k < bytes; ++k) {
        absl::StrAppend(&out, "\\x",
                        absl::Hex(static_cast<unsigned char>(text[i + k]),
                                  absl::kZeroPad2));
      }
      i += bytes;
      continue;
    }
    out.append(text.substr(i, length).data(), length);
    i += length;
  }
  return out;
}

}  // namespace

std::string Printable(absl::string_view text) { return Escape(text, false); }

std::string PrintableLines(absl::string_view text) {
  return Escape(text, true);
}

}  // namespace warmstart
