// Test environment helpers: fixtures, short temporary directories, the seed.
#ifndef WARMSTART_COMMON_TESTING_TEST_ENV_H_
#define WARMSTART_COMMON_TESTING_TEST_ENV_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace warmstart {
namespace testing {

// The absolute path of `relative` under tests/testdata, the real weight
// files of the reference writers (e.g.
// "safetensors/golden_rs_f32.safetensors"). Found through
// $WARMSTART_FIXTURES, else through the test's Bazel runfiles (a test needs
// //tests/testdata:fixtures in its data).
std::string FixturePath(const std::string& relative);

// The lowercase hex SHA-256 of `bytes`.
std::string Sha256Hex(absl::string_view bytes);

// Fills `data` with a reproducible pseudo-random pattern drawn from `seed`.
void FillPattern(char* data, uint64_t bytes, uint32_t seed);

// Writes a safetensors file at `path` holding `count` U8 tensors "t0",
// "t1", ... of `tensor_bytes` pattern bytes each (FillPattern, seed 12345),
// for load tests that need a checkpoint of a chosen size. Format tests use
// the reference writers' files instead. Aborts on a write error.
void WriteTestSafetensors(const std::string& path, int count,
                          uint64_t tensor_bytes);

// Reads a whole file; aborts the test binary on failure (tests only).
std::string ReadFileOrDie(const std::string& path);

// The random seed of this test run: printed at start by the test main and
// taken from --seed=N or $WARMSTART_TEST_SEED when given.
uint32_t TestSeed();
void SetTestSeed(uint32_t seed);

// A fresh directory under /tmp, short enough for unix socket paths (Bazel's
// TEST_TMPDIR passes the 108-byte sun_path limit). Removed with its contents
// when the object is destroyed. Move-only.
class ShortTempDir {
 public:
  ShortTempDir();
  ~ShortTempDir();
  ShortTempDir(ShortTempDir&& other) noexcept;
  ShortTempDir& operator=(ShortTempDir&&) = delete;
  ShortTempDir(const ShortTempDir&) = delete;
  ShortTempDir& operator=(const ShortTempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Join(const std::string& name) const;

 private:
  std::string path_;
};

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_COMMON_TESTING_TEST_ENV_H_
