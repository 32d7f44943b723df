// UTF-8 validation for text that crosses the gRPC API (proto3 strings must
// be UTF-8; protobuf refuses anything else without saying which field).
//
// Plain function; thread-safe.
#ifndef WARMSTART_COMMON_UTF8_H_
#define WARMSTART_COMMON_UTF8_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace warmstart {

// The index of the first byte of `text` that does not start a well-formed
// UTF-8 sequence (overlong forms, surrogates and code points past U+10FFFF
// are not), or absl::string_view::npos when all of it is valid.
size_t FindInvalidUtf8(absl::string_view text);

}  // namespace warmstart

#endif  // WARMSTART_COMMON_UTF8_H_
