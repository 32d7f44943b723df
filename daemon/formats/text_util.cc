#include "daemon/formats/text_util.h"

#include <cstdint>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace warmstart {

size_t FindInvalidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t code_point;
    uint32_t smallest;
    if ((lead & 0xe0) == 0xc0) {
      length = 2;
      code_point = lead & 0x1f;
      smallest = 0x80;
    } else if ((lead & 0xf0) == 0xe0) {
      length = 3;
      code_point = lead & 0x0f;
      smallest = 0x800;
    } else if ((lead & 0xf8) == 0xf0) {
      length = 4;
      code_point = lead & 0x07;
      smallest = 0x10000;
    } else {
      return i;
    }
    if (text.size() - i < length) return i;
    for (size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xc0) != 0x80) return i;
      code_point = (code_point << 6) | (next & 0x3f);
    }
    if (code_point < smallest || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff)) {
      return i;
    }
    i += length;
  }
  return absl::string_view::npos;
}

// Names come from files and may hold quotes or control characters, or be
// huge: escaping and shortening keeps a message on one line, short and
// unambiguous.
std::string Quote(absl::string_view text) {
  constexpr size_t kMaxShown = 200;
  const bool clipped = text.size() > kMaxShown;
  if (clipped) {
    size_t cut = kMaxShown;
    // Back up to a character boundary (not a UTF-8 continuation byte).
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) {
      --cut;
    }
    text = text.substr(0, cut);
  }
  std::string out = "\"";
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (byte < 0x20 || byte == 0x7f) {
      absl::StrAppend(&out, "\\x", absl::Hex(byte, absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  if (clipped) out += "...";
  return out;
}

// nlohmann quotes the token read so far, which can be a whole long string.
std::string JsonErrorDetail(absl::string_view what) {
  if (absl::StartsWith(what, "[")) {
    if (size_t end = what.find("] "); end != absl::string_view::npos) {
      what.remove_prefix(end + 2);
    }
  }
  if (absl::StartsWith(what, "parse error")) {
    if (size_t colon = what.find(": "); colon != absl::string_view::npos) {
      what.remove_prefix(colon + 2);
    }
  }
  constexpr size_t kMaxShown = 240;
  std::string shown(what.substr(0, kMaxShown));
  if (what.size() > kMaxShown) shown += "...";
  return shown;
}

}  // namespace warmstart
