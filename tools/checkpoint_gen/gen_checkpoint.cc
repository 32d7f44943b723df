// gen_checkpoint: writes a large synthetic safetensors checkpoint for
// benchmarks and load tests: sharded with a Hugging Face index when asked,
// with tensor sizes drawn log-uniformly between a minimum and a maximum (a
// few huge matrices and many small vectors, as real models have).
//
// usage: gen_checkpoint --out DIR --bytes N [--shards K] [--min_tensor B]
//                       [--max_tensor B] [--dtype F16|BF16|F32] [--seed S]
// Sizes accept the suffixes K, M, G (powers of 1000) and KiB, MiB, GiB.
// Prints the path to open: the index when sharded, else the one file.
//
// The data are pseudo-random (incompressible) and written with large
// sequential writes. This writer serves load benchmarks; format tests use
// files written by the reference writers.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, out, "", "directory to write into (created)");
ABSL_FLAG(std::string, bytes, "1G", "total tensor bytes");
ABSL_FLAG(int, shards, 1, "number of files");
ABSL_FLAG(std::string, min_tensor, "4KiB", "smallest tensor");
ABSL_FLAG(std::string, max_tensor, "256MiB", "largest tensor");
ABSL_FLAG(std::string, dtype, "F16", "F16, BF16 or F32");
ABSL_FLAG(uint64_t, seed, 1, "random seed");

namespace {

bool ParseSize(const std::string& text, uint64_t* out) {
  struct Suffix {
    const char* text;
    double multiplier;
  };
  absl::string_view view(text);
  for (const Suffix& suffix : {Suffix{"KiB", 1024.0}, Suffix{"MiB", 1048576.0},
                               Suffix{"GiB", 1073741824.0}, Suffix{"K", 1e3},
                               Suffix{"M", 1e6}, Suffix{"G", 1e9}}) {
    if (absl::ConsumeSuffix(&view, suffix.text)) {
      double value;
      if (!absl::SimpleAtod(view, &value) || value < 0) return false;
      *out = static_cast<uint64_t>(value * suffix.multiplier);
      return true;
    }
  }
  return absl::SimpleAtoi(view, out);
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "gen_checkpoint: %s\n", message.c_str());
  return 1;
}

struct Tensor {
  std::string name;
  uint64_t elements;
};

// Writes one shard; returns false (with errno set) on a write error.
bool WriteShard(const std::string& path, const std::vector<Tensor>& tensors,
                const std::string& dtype, uint64_t element_bytes,
                std::mt19937_64& rng) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"},
                            {"generator", "warmstart gen_checkpoint"}};
  uint64_t offset = 0;
  for (const Tensor& tensor : tensors) {
    const uint64_t bytes = tensor.elements * element_bytes;
    header[tensor.name] = {{"dtype", dtype},
                           {"shape", {tensor.elements}},
                           {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // Pad to 8 bytes as the reference writer does, so data is dtype-aligned.
  text.append((8 - (text.size() + 8) % 8) % 8, ' ');
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) {
    prefix[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  }
  prefix += text;

  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  auto write_all = [fd](const char* data, uint64_t size) {
    while (size > 0) {
      ssize_t n = ::write(fd, data, size);
      if (n < 0) return false;
      data += n;
      size -= static_cast<uint64_t>(n);
    }
    return true;
  };
  bool ok = write_all(prefix.data(), prefix.size());
  std::vector<uint64_t> buffer((uint64_t{8} << 20) / 8);
  for (uint64_t left = offset; ok && left > 0;) {
    for (uint64_t& word : buffer) word = rng();
    const uint64_t n = std::min<uint64_t>(left, buffer.size() * 8);
    ok = write_all(reinterpret_cast<const char*>(buffer.data()), n);
    left -= n;
  }
  return ::close(fd) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  const int shards = absl::GetFlag(FLAGS_shards);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  uint64_t total, min_tensor, max_tensor;
  if (out.empty()) return Fail("--out DIR is required");
  if (!ParseSize(absl::GetFlag(FLAGS_bytes), &total) ||
      !ParseSize(absl::GetFlag(FLAGS_min_tensor), &min_tensor) ||
      !ParseSize(absl::GetFlag(FLAGS_max_tensor), &max_tensor)) {
    return Fail("sizes are numbers with an optional K, M, G, KiB, MiB or GiB");
  }
  const uint64_t element_bytes = dtype == "F32" ? 4 : 2;
  if (dtype != "F16" && dtype != "BF16" && dtype != "F32") {
    return Fail("--dtype must be F16, BF16 or F32");
  }
  if (shards < 1 || min_tensor < element_bytes || max_tensor < min_tensor ||
      total < min_tensor) {
    return Fail(
        "need --shards >= 1 and element size <= --min_tensor <= --max_tensor "
        "<= --bytes");
  }
  if (::mkdir(out.c_str(), 0755) != 0 && errno != EEXIST) {
    return Fail(absl::StrCat("cannot create ", out));
  }

  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::uniform_real_distribution<double> log_size(std::log(min_tensor),
                                                  std::log(max_tensor));
  std::vector<Tensor> tensors;
  for (uint64_t placed = 0; placed < total;) {
    uint64_t bytes = static_cast<uint64_t>(std::exp(log_size(rng)));
    bytes = std::min(std::max(bytes, min_tensor), total - placed);
    const uint64_t elements = std::max<uint64_t>(bytes / element_bytes, 1);
    tensors.push_back(
        {absl::StrFormat("layers.%d.weight", tensors.size()), elements});
    placed += elements * element_bytes;
  }

  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  const size_t per_shard = (tensors.size() + shards - 1) / shards;
  std::string opened;
  for (int s = 0; s < shards; ++s) {
    const size_t begin = std::min(tensors.size(), s * per_shard);
    const size_t end = std::min(tensors.size(), begin + per_shard);
    if (begin == end) break;
    const std::string name =
        shards == 1
            ? "model.safetensors"
            : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
    std::vector<Tensor> part(tensors.begin() + begin, tensors.begin() + end);
    if (!WriteShard(out + "/" + name, part, dtype, element_bytes, rng)) {
      return Fail(absl::StrCat("writing ", out, "/", name,
                               " failed: ", std::strerror(errno)));
    }
    for (const Tensor& tensor : part) weight_map[tensor.name] = name;
    opened = out + "/" + name;
  }
  if (shards > 1) {
    uint64_t placed = 0;
    for (const Tensor& tensor : tensors)
      placed += tensor.elements * element_bytes;
    nlohmann::ordered_json index = {{"metadata", {{"total_size", placed}}},
                                    {"weight_map", weight_map}};
    opened = out + "/model.safetensors.index.json";
    std::FILE* file = std::fopen(opened.c_str(), "w");
    if (file == nullptr) return Fail("cannot write " + opened);
    const std::string text = index.dump(2);
    std::fwrite(text.data(), 1, text.size(), file);
    std::fclose(file);
  }
  std::printf("%s\n", opened.c_str());
  return 0;
}
