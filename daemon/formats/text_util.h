// Helpers for parsers' error messages and UTF-8 checks.
#ifndef WARMSTART_DAEMON_FORMATS_TEXT_UTIL_H_
#define WARMSTART_DAEMON_FORMATS_TEXT_UTIL_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace warmstart {

// Returns the index of the first byte of `text` that does not start a valid
// UTF-8 sequence (overlong forms, surrogates and values past U+10FFFF are
// invalid), or npos when all of it is valid.
size_t FindInvalidUtf8(absl::string_view text);

// `text` in double quotes, fit for a one-line message: quotes, backslashes
// and control characters escaped, cut to 200 bytes (at a character
// boundary) with "..." when longer. UTF-8 is kept as is.
std::string Quote(absl::string_view text);

// The useful part of a nlohmann parse error message: without the exception
// id and the line and column (callers give a byte offset), cut short.
std::string JsonErrorDetail(absl::string_view what);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_TEXT_UTIL_H_
