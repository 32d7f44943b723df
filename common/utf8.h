// Validating UTF-8: the one decoder the daemon's parsers, its log escaping
// and the client's argument checks share. Pure functions; thread-safe.
#ifndef WARMSTART_COMMON_UTF8_H_
#define WARMSTART_COMMON_UTF8_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace warmstart {

// The length (1 to 4) of the valid UTF-8 sequence that starts at `text[i]`,
// or 0 when none does: a stray continuation byte, a sequence cut short, an
// overlong form, a surrogate or a value past U+10FFFF.
// REQUIRES: i < text.size().
size_t Utf8SequenceLength(absl::string_view text, size_t i);

// The index of the first byte of `text` that does not start a valid UTF-8
// sequence, or npos when all of it is valid.
size_t FindInvalidUtf8(absl::string_view text);

}  // namespace warmstart

#endif  // WARMSTART_COMMON_UTF8_H_
