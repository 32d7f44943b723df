// libFuzzer target for ParseGguf: any input must either fail with
// InvalidArgument naming the source, or yield a manifest whose tensors all
// lie inside the input with sizes that follow from dtype and shape, and
// whose metadata serialises as valid UTF-8 JSON. Violations abort().
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/check.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/dtype.h"
#include "daemon/formats/gguf.h"
#include "daemon/formats/manifest.h"

namespace warmstart {
namespace {

constexpr char kName[] = "fuzz.gguf";

void CheckManifest(const FileManifest& manifest, uint64_t size) {
  WS_CHECK(manifest.path == kName);
  WS_CHECK(manifest.format == Format::kGguf);
  WS_CHECK(manifest.format_version.has_value() &&
           *manifest.format_version >= 1 && *manifest.format_version <= 3);
  WS_CHECK(manifest.file_size == size);
  WS_CHECK(manifest.metadata.is_object());
  // Strings were checked as UTF-8, so replacing invalid sequences and
  // dropping them must give the same text (neither throws).
  using Json = nlohmann::ordered_json;
  WS_CHECK(
      manifest.metadata.dump(-1, ' ', false, Json::error_handler_t::replace) ==
      manifest.metadata.dump(-1, ' ', false, Json::error_handler_t::ignore));

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const TensorEntry& tensor : manifest.tensors) {
    WS_CHECK(tensor.shape.size() <= 4);
    WS_CHECK(tensor.name.size() < 64);
    const DTypeInfo* dtype = FindDType(tensor.dtype);
    WS_CHECK(dtype != nullptr);
    absl::StatusOr<uint64_t> elements = ElementCount(tensor.shape);
    WS_CHECK(elements.ok());
    absl::StatusOr<uint64_t> nbytes = ByteSize(*dtype, *elements);
    WS_CHECK(nbytes.ok() && *nbytes == tensor.nbytes);
    WS_CHECK(tensor.stored_bytes == tensor.nbytes);
    WS_CHECK(tensor.checksums.empty() && !tensor.encryption.has_value());
    WS_CHECK(tensor.offset <= size && tensor.nbytes <= size - tensor.offset);
    if (tensor.nbytes > 0) ranges.emplace_back(tensor.offset, tensor.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    WS_CHECK(ranges[i - 1].first + ranges[i - 1].second <= ranges[i].first);
  }
}

}  // namespace
}  // namespace warmstart

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace warmstart;
  MemoryByteSource source(
      kName, absl::string_view(reinterpret_cast<const char*>(data), size));
  for (bool full_metadata : {false, true}) {
    ParseOptions options;
    options.full_metadata = full_metadata;
    absl::StatusOr<FileManifest> manifest = ParseGguf(source, options);
    if (manifest.ok()) {
      CheckManifest(*manifest, size);
    } else {
      WS_CHECK(absl::IsInvalidArgument(manifest.status()));
      WS_CHECK(absl::StartsWith(manifest.status().message(),
                                std::string(kName) + ": at byte "));
    }
  }
  return 0;
}
