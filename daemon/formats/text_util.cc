#include "daemon/formats/text_util.h"

#include <cstdint>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace warmstart {

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
