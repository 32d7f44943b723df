// Helpers for parsers' error messages (UTF-8 checks: common/utf8.h).
#ifndef WARMSTART_DAEMON_FORMATS_TEXT_UTIL_H_
#define WARMSTART_DAEMON_FORMATS_TEXT_UTIL_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace warmstart {

// `text` in double quotes, fit for a one-line message: quotes, backslashes
// and control characters escaped, cut to 200 bytes (at a character
// boundary) with "..." when longer. UTF-8 is kept as is.
std::string Quote(absl::string_view text);

// The useful part of a nlohmann parse error message: without the exception
// id and the line and column (callers give a byte offset), cut short.
std::string JsonErrorDetail(absl::string_view what);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_TEXT_UTIL_H_
