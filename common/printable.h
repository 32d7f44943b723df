// Making untrusted text (file names, tensor names, error messages that
// carry them) safe to print to a log or a terminal.
//
// A file name may hold any byte but '/' and NUL: an escape sequence in one
// could rewrite what an operator's terminal shows, and a newline could forge
// a log line. Pure functions; thread-safe.
#ifndef WARMSTART_COMMON_PRINTABLE_H_
#define WARMSTART_COMMON_PRINTABLE_H_

#include <string>

#include "absl/strings/string_view.h"

namespace warmstart {

// `text` with every byte that a terminal or a log reader would interpret
// written as \xNN: C0 controls (newline and tab included), DEL, the C1
// controls U+0080..U+009F (CSI among them) and bytes that are not valid
// UTF-8. Valid UTF-8 text otherwise comes back unchanged.
std::string Printable(absl::string_view text);

// As Printable, but keeps newlines: for output made of several lines.
std::string PrintableLines(absl::string_view text);

}  // namespace warmstart

#endif  // WARMSTART_COMMON_PRINTABLE_H_
