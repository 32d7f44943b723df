#include "common/printable.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace warmstart {
namespace {

std::string Escape(absl::string_view text, bool keep_newlines) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const size_t length = Utf8SequenceLength(text, i);
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
