#include "common/testing/test_env.h"

#include <ftw.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"

namespace warmstart {
namespace testing {
namespace {

uint32_t g_seed = 0;

// Where the real weight files live in the repository (and so in runfiles).
constexpr char kFixturesPackage[] = "tests/testdata";

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) {
  ::remove(path);
  return 0;
}

}  // namespace

std::string FixturePath(const std::string& relative) {
  if (const char* root = std::getenv("WARMSTART_FIXTURES")) {
    return std::string(root) + "/" + relative;
  }
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  return std::string(srcdir != nullptr ? srcdir : ".") + "/" +
         (workspace != nullptr ? workspace : "warmstart") + "/" +
         kFixturesPackage + "/" + relative;
}

std::string Sha256Hex(absl::string_view bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
         digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

void FillPattern(char* data, uint64_t bytes, uint32_t seed) {
  uint32_t state = seed;
  for (uint64_t i = 0; i < bytes; ++i) {
    state = state * 1664525 + 1013904223;
    data[i] = static_cast<char>(state >> 24);
  }
}

void WriteTestSafetensors(const std::string& path, int count,
                          uint64_t tensor_bytes) {
  std::string header = "{";
  for (int i = 0; i < count; ++i) {
    if (i > 0) header += ",";
    header += "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[" +
              std::to_string(tensor_bytes) + "],\"data_offsets\":[" +
              std::to_string(i * tensor_bytes) + "," +
              std::to_string((i + 1) * tensor_bytes) + "]}";
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>(header.size() >> (8 * i));
  }
  bytes += header;
  std::string data(count * tensor_bytes, '\0');
  FillPattern(data.data(), data.size(), 12345);
  bytes += data;
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  if (!out.flush()) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::abort();
  }
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::abort();
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

uint32_t TestSeed() { return g_seed; }
void SetTestSeed(uint32_t seed) { g_seed = seed; }

ShortTempDir::ShortTempDir() {
  char pattern[] = "/tmp/ws-XXXXXX";
  if (::mkdtemp(pattern) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = pattern;
}

ShortTempDir::ShortTempDir(ShortTempDir&& other) noexcept
    : path_(std::move(other.path_)) {
  other.path_.clear();
}

ShortTempDir::~ShortTempDir() {
  if (path_.empty()) return;
  ::nftw(path_.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
}

std::string ShortTempDir::Join(const std::string& name) const {
  return path_ + "/" + name;
}

}  // namespace testing
}  // namespace warmstart
