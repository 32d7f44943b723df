#include "daemon/formats/dtype.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace warmstart {

const std::vector<DTypeInfo>& AllDTypes() {
  // Block sizes of the GGUF types come from ggml's type_traits table (see
  // daemon/formats/spec/GGUF_FORMAT.md).
  static const auto* const kTypes = new std::vector<DTypeInfo>{
      {"BOOL", 1, 1},
      {"U8", 1, 1},
      {"I8", 1, 1},
      {"U16", 1, 2},
      {"I16", 1, 2},
      {"F16", 1, 2},
      {"BF16", 1, 2},
      {"U32", 1, 4},
      {"I32", 1, 4},
      {"F32", 1, 4},
      {"U64", 1, 8},
      {"I64", 1, 8},
      {"F64", 1, 8},
      {"C32", 1, 4},
      {"C64", 1, 8},
      {"C128", 1, 16},
      {"F4", 2, 1},
      {"F6_E2M3", 4, 3},
      {"F6_E3M2", 4, 3},
      {"F8_E4M3", 1, 1},
      {"F8_E5M2", 1, 1},
      {"F8_E8M0", 1, 1},
      {"F8_E4M3FNUZ", 1, 1},
      {"F8_E5M2FNUZ", 1, 1},
      {"Q4_0", 32, 18},
      {"Q4_1", 32, 20},
      {"Q5_0", 32, 22},
      {"Q5_1", 32, 24},
      {"Q8_0", 32, 34},
      {"Q8_1", 32, 36},
      {"Q2_K", 256, 84},
      {"Q3_K", 256, 110},
      {"Q4_K", 256, 144},
      {"Q5_K", 256, 176},
      {"Q6_K", 256, 210},
      {"Q8_K", 256, 292},
      {"IQ2_XXS", 256, 66},
      {"IQ2_XS", 256, 74},
      {"IQ3_XXS", 256, 98},
      {"IQ1_S", 256, 50},
      {"IQ4_NL", 32, 18},
      {"IQ3_S", 256, 110},
      {"IQ2_S", 256, 82},
      {"IQ4_XS", 256, 136},
      {"IQ1_M", 256, 56},
      {"TQ1_0", 256, 54},
      {"TQ2_0", 256, 66},
      {"MXFP4", 32, 17},
      // Newer than docs/gguf.md; gguf-py 0.19 knows both (GGUF_FORMAT.md).
      {"NVFP4", 64, 36},
      {"Q1_0", 128, 18},
  };
  return *kTypes;
}

const DTypeInfo* FindDType(absl::string_view name) {
  for (const DTypeInfo& type : AllDTypes()) {
    if (type.name == name) return &type;
  }
  return nullptr;
}

absl::StatusOr<uint64_t> ElementCount(const std::vector<uint64_t>& shape) {
  // An empty dimension makes the tensor empty whatever the others are: it
  // must not be reported as an overflow of the others' product.
  for (uint64_t dim : shape) {
    if (dim == 0) return 0;
  }
  uint64_t count = 1;
  for (uint64_t dim : shape) {
    if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / dim) {
      return absl::InvalidArgumentError(
          "shape: element count overflows 64 bits");
    }
    count *= dim;
  }
  return count;
}

absl::StatusOr<uint64_t> ByteSize(const DTypeInfo& dtype,
                                  uint64_t element_count) {
  if (element_count % dtype.block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape: ", element_count, " elements of ", dtype.name,
        " are not a whole number of blocks of ", dtype.block_elements));
  }
  const uint64_t blocks = element_count / dtype.block_elements;
  if (blocks > std::numeric_limits<uint64_t>::max() / dtype.block_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape: byte size of ", element_count, " elements of ",
                     dtype.name, " overflows 64 bits"));
  }
  return blocks * dtype.block_bytes;
}

}  // namespace warmstart
