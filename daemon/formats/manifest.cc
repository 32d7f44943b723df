#include "daemon/formats/manifest.h"

namespace warmstart {

absl::string_view FormatName(Format format) {
  switch (format) {
    case Format::kSafetensors:
      return "safetensors";
    case Format::kTensorizer:
      return "tensorizer";
    case Format::kGguf:
      return "gguf";
  }
  return "unknown";
}

}  // namespace warmstart
