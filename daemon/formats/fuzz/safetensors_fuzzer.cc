// libFuzzer target: ParseSafetensors on arbitrary bytes. Besides crashes and
// sanitizer reports, it aborts when an accepted file's manifest breaks the
// format's guarantees, or when a rejection is not a well-formed
// InvalidArgument naming the source.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/check.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/dtype.h"
#include "daemon/formats/manifest.h"
#include "daemon/formats/safetensors.h"
#include "nlohmann/json.hpp"

namespace {

constexpr char kName[] = "fuzz.safetensors";

void CheckManifest(const warmstart::FileManifest& manifest,
                   absl::string_view bytes) {
  WS_CHECK(manifest.path == kName) << "path is the source name";
  WS_CHECK(manifest.format == warmstart::Format::kSafetensors) << "format";
  WS_CHECK(!manifest.format_version.has_value()) << "no format version";
  WS_CHECK(manifest.file_size == bytes.size()) << "file size";
  WS_CHECK(manifest.metadata.is_object()) << "metadata is an object";
  for (const auto& item : manifest.metadata.items()) {
    WS_CHECK(item.value().is_string()) << "metadata values are strings";
  }

  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) {
    header_length = (header_length << 8) | static_cast<unsigned char>(bytes[i]);
  }
  WS_CHECK(header_length <= warmstart::kSafetensorsMaxHeaderBytes &&
           header_length <= bytes.size() - 8)
      << "header fits the file";
  WS_CHECK(bytes[8] == '{') << "header starts with '{'";

  // Tensors tile the data section exactly, in order.
  uint64_t next = 8 + header_length;
  std::set<std::string> names;
  const warmstart::TensorEntry* previous = nullptr;
  for (const warmstart::TensorEntry& tensor : manifest.tensors) {
    WS_CHECK(names.insert(tensor.name).second) << "names are unique";
    WS_CHECK(tensor.offset == next) << "tensors are contiguous and sorted";
    WS_CHECK(tensor.offset <= bytes.size() &&
             tensor.nbytes <= bytes.size() - tensor.offset)
        << "tensor range inside the file";
    WS_CHECK(tensor.stored_bytes == tensor.nbytes) << "stored bytes";
    WS_CHECK(tensor.checksums.empty() && !tensor.encryption.has_value())
        << "no checksums or encryption";
    const warmstart::DTypeInfo* dtype = warmstart::FindDType(tensor.dtype);
    WS_CHECK(dtype != nullptr) << "known dtype";
    absl::StatusOr<uint64_t> count = warmstart::ElementCount(tensor.shape);
    WS_CHECK(count.ok()) << "element count";
    absl::StatusOr<uint64_t> size = warmstart::ByteSize(*dtype, *count);
    WS_CHECK(size.ok() && *size == tensor.nbytes)
        << "size matches dtype and shape";
    if (previous != nullptr && previous->offset == tensor.offset &&
        previous->nbytes == 0 && tensor.nbytes == 0) {
      WS_CHECK(previous->name < tensor.name) << "empty tensors ordered by name";
    }
    next = tensor.offset + tensor.nbytes;
    previous = &tensor;
  }
  WS_CHECK(next == bytes.size()) << "data ends at the end of the file";
}

// Random bytes almost never meet the rule that the data ends exactly at the
// end of the file, so few inputs would reach the checks on accepted files.
// Each input is therefore also tried as a header alone, followed by as many
// data bytes as its largest data_offsets end asks for (within a bound).
uint64_t DataBytesWanted(absl::string_view header) {
  constexpr uint64_t kMaxData = 1 << 16;
  const nlohmann::json json = nlohmann::json::parse(
      header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  uint64_t wanted = 0;
  if (!json.is_object()) return wanted;
  for (const auto& item : json.items()) {
    if (!item.value().is_object()) continue;
    const auto offsets = item.value().find("data_offsets");
    if (offsets == item.value().end() || !offsets->is_array() ||
        offsets->size() != 2 || !(*offsets)[1].is_number_unsigned()) {
      continue;
    }
    wanted = std::max(wanted, (*offsets)[1].get<uint64_t>());
  }
  return std::min(wanted, kMaxData);
}

void ParseAndCheck(absl::string_view bytes) {
  const warmstart::MemoryByteSource source(kName, bytes);
  absl::StatusOr<warmstart::FileManifest> manifest =
      warmstart::ParseSafetensors(source, warmstart::ParseOptions());
  if (manifest.ok()) {
    CheckManifest(*manifest, bytes);
    return;
  }
  WS_CHECK(absl::IsInvalidArgument(manifest.status()))
      << "malformed input is InvalidArgument";
  WS_CHECK(
      absl::StartsWith(manifest.status().message(), std::string(kName) + ": "))
      << "error names the source";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  ParseAndCheck(bytes);

  std::string file;
  for (int i = 0; i < 8; ++i) {
    file.push_back(static_cast<char>((uint64_t{size} >> (8 * i)) & 0xff));
  }
  file.append(bytes.data(), bytes.size());
  file.append(DataBytesWanted(bytes), '\x5a');
  ParseAndCheck(file);
  return 0;
}
