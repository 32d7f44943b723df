// Element types of tensors across the supported formats.
//
// Names follow safetensors (F32, BF16, F8_E4M3, ...). Types safetensors lacks
// get names of their own:
//   C32          complex32: two float16 values (torch.complex32, tensorizer)
//   C128         complex128: two float64 values (numpy <c16, tensorizer)
//   Q4_0 ... MXFP4, NVFP4, Q1_0, IQ*, TQ*  GGUF block-quantized types (the
//                types gguf-py 0.19 knows), named as ggml names them; one
//                "element" is one weight, stored in blocks.
// A dtype's storage is described as blocks: `block_elements` elements take
// `block_bytes` bytes (F32: 1 element in 4 bytes; F4: 2 in 1; Q4_0: 32 in 18).
#ifndef WARMSTART_DAEMON_FORMATS_DTYPE_H_
#define WARMSTART_DAEMON_FORMATS_DTYPE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace warmstart {

struct DTypeInfo {
  absl::string_view name;
  uint32_t block_elements;
  uint32_t block_bytes;
};

// Returns the dtype named `name` (exact, case-sensitive), or null.
const DTypeInfo* FindDType(absl::string_view name);

// Every known dtype, in a stable order.
const std::vector<DTypeInfo>& AllDTypes();

// The number of elements in `shape` ([] is a scalar: 1 element; any 0
// dimension makes 0). Fails with InvalidArgument when the product overflows
// 64 bits.
absl::StatusOr<uint64_t> ElementCount(const std::vector<uint64_t>& shape);

// The byte size of `element_count` elements of `dtype`. Fails with
// InvalidArgument when the count is not a whole number of blocks or the size
// overflows 64 bits.
absl::StatusOr<uint64_t> ByteSize(const DTypeInfo& dtype,
                                  uint64_t element_count);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_DTYPE_H_
