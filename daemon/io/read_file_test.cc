#include "daemon/io/read_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <string>

#include "common/scoped_fd.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/metrics.h"
#include "daemon/io/cached_fraction.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

uint64_t DirectRefusedCount(const Metrics& metrics) {
  return metrics.Snapshot()["warmstart_io_direct_refused_total"];
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

TEST(OpenReadFileTest, OpensBufferedWithSize) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("weights.bin");
  WriteFile(path, std::string(10000, 'w'));
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(path, false));
  EXPECT_TRUE(file.fd.valid());
  EXPECT_EQ(file.path, path);
  EXPECT_EQ(file.size, 10000u);
  EXPECT_FALSE(file.direct);
  EXPECT_EQ(::fcntl(file.fd.get(), F_GETFL) & O_DIRECT, 0);
}

TEST(OpenReadFileTest, OpensWithDirectWhereTheFilesystemAllowsIt) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("weights.bin");
  WriteFile(path, std::string(8192, 'w'));
  Metrics metrics;
  ASSERT_OK_AND_ASSIGN(ReadFile file,
                       OpenReadFile(path, true, PlainFileOpener(), &metrics));
  if (!file.direct) {
    GTEST_SKIP() << "the filesystem of " << dir.path() << " refuses O_DIRECT";
  }
  EXPECT_NE(::fcntl(file.fd.get(), F_GETFL) & O_DIRECT, 0);
  EXPECT_EQ(file.size, 8192u);
  EXPECT_EQ(DirectRefusedCount(metrics), 0u);
}

TEST(OpenReadFileTest, FallsBackToBufferedWhenDirectIsRefused) {
  // procfs refuses O_DIRECT with EINVAL, as tmpfs did before Linux 6.6.
  Metrics metrics;
  ASSERT_OK_AND_ASSIGN(
      ReadFile file,
      OpenReadFile("/proc/version", true, PlainFileOpener(), &metrics));
  EXPECT_FALSE(file.direct);
  EXPECT_EQ(::fcntl(file.fd.get(), F_GETFL) & O_DIRECT, 0);
  char byte;
  EXPECT_EQ(::read(file.fd.get(), &byte, 1), 1);
  EXPECT_EQ(DirectRefusedCount(metrics), 1u);
}

TEST(OpenReadFileTest, MissingFileIsNotFound) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("missing.bin");
  EXPECT_THAT(OpenReadFile(path, true),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

TEST(OpenReadFileTest, DirectoryIsRefusedWithoutCountingADirectRefusal) {
  testing::ShortTempDir dir;
  Metrics metrics;
  for (bool direct : {false, true}) {
    EXPECT_THAT(OpenReadFile(dir.path(), direct, PlainFileOpener(), &metrics),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("not a regular file")));
  }
  EXPECT_EQ(DirectRefusedCount(metrics), 0u);
}

TEST(AlignForDirectTest, Examples) {
  struct Case {
    uint64_t offset, length, aligned_offset, aligned_length, lead;
  };
  for (const Case& c : {
           Case{0, 0, 0, 0, 0},
           Case{0, 1, 0, 4096, 0},
           Case{4096, 4096, 4096, 4096, 0},
           Case{4095, 2, 0, 8192, 4095},
           Case{10000, 5000, 8192, 8192, 1808},
       }) {
    const AlignedRange r = AlignForDirect(c.offset, c.length);
    EXPECT_EQ(r.aligned_offset, c.aligned_offset)
        << c.offset << "+" << c.length;
    EXPECT_EQ(r.aligned_length, c.aligned_length)
        << c.offset << "+" << c.length;
    EXPECT_EQ(r.lead, c.lead) << c.offset << "+" << c.length;
  }
}

TEST(AlignForDirectTest, IsTheSmallestAlignedCover) {
  std::mt19937_64 random(testing::TestSeed());
  for (int i = 0; i < 10000; ++i) {
    const uint64_t offset = random() % (uint64_t{1} << 40);
    const uint64_t length = 1 + random() % (uint64_t{1} << 24);
    const AlignedRange r = AlignForDirect(offset, length);
    ASSERT_EQ(r.aligned_offset % kDirectAlignment, 0u);
    ASSERT_EQ(r.aligned_length % kDirectAlignment, 0u);
    ASSERT_EQ(r.aligned_offset + r.lead, offset);
    ASSERT_GE(r.aligned_offset + r.aligned_length, offset + length);
    ASSERT_LT(r.lead, kDirectAlignment);
    ASSERT_LT(r.aligned_offset + r.aligned_length - (offset + length),
              kDirectAlignment);
  }
}

// Writes `bytes` to `path` and drops its pages from the page cache; false
// where the filesystem keeps them (tmpfs, whose pages are the file).
bool WriteEvicted(const std::string& path, size_t bytes) {
  WriteFile(path, std::string(bytes, 'w'));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  absl::StatusOr<double> left = CachedFractionByMincore(fd, bytes);
  ::close(fd);
  return left.ok() && *left < 0.05;
}

TEST(CachedFractionTest, CountsTheFilesPagesInTheCacheBothWays) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("weights.bin");
  constexpr size_t kBytes = 1 << 20;
  WriteFile(path, std::string(kBytes, 'w'));  // Written: in the cache.
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  ASSERT_OK_AND_ASSIGN(double by_default, CachedFraction(fd.get(), kBytes));
  ASSERT_OK_AND_ASSIGN(double by_mincore,
                       CachedFractionByMincore(fd.get(), kBytes));
  EXPECT_DOUBLE_EQ(by_default, 1.0);
  EXPECT_DOUBLE_EQ(by_mincore, 1.0);
  if (!WriteEvicted(path, kBytes)) {
    GTEST_SKIP() << "the filesystem of " << dir.path()
                 << " keeps its pages in memory";
  }
  ScopedFd evicted(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_OK_AND_ASSIGN(by_default, CachedFraction(evicted.get(), kBytes));
  ASSERT_OK_AND_ASSIGN(by_mincore,
                       CachedFractionByMincore(evicted.get(), kBytes));
  EXPECT_LT(by_default, 0.05);
  EXPECT_LT(by_mincore, 0.05);
  // Half read back in: half cached.
  std::string half(kBytes / 2, '\0');
  ASSERT_EQ(::pread(evicted.get(), half.data(), half.size(), 0),
            static_cast<ssize_t>(half.size()));
  ASSERT_OK_AND_ASSIGN(by_default, CachedFraction(evicted.get(), kBytes));
  ASSERT_OK_AND_ASSIGN(by_mincore,
                       CachedFractionByMincore(evicted.get(), kBytes));
  // Readahead may bring in more than was read, never less.
  EXPECT_GE(by_default, 0.5);
  EXPECT_GE(by_mincore, 0.5);
}

TEST(CachedFractionTest, AnEmptyFileCountsAsCached) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("empty.bin");
  WriteFile(path, "");
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_OK_AND_ASSIGN(double fraction, CachedFraction(fd.get(), 0));
  EXPECT_DOUBLE_EQ(fraction, 1.0);
}

TEST(OpenFileForLoadTest, ReadsACachedFileThroughTheCacheAndCountsIt) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("weights.bin");
  WriteFile(path, std::string(1 << 20, 'w'));
  Metrics metrics;
  ASSERT_OK_AND_ASSIGN(
      ReadFile file, OpenFileForLoad(path, true, PlainFileOpener(), &metrics));
  EXPECT_TRUE(file.cached);
  EXPECT_FALSE(file.direct);
  EXPECT_EQ(::fcntl(file.fd.get(), F_GETFL) & O_DIRECT, 0);
  EXPECT_EQ(file.size, 1u << 20);
  EXPECT_EQ(metrics.Snapshot()["warmstart_io_cached_files_total"], 1u);
}

TEST(OpenFileForLoadTest, ReadsAnUncachedFileWithDirect) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("weights.bin");
  if (!WriteEvicted(path, 1 << 20)) {
    GTEST_SKIP() << "the filesystem of " << dir.path()
                 << " keeps its pages in memory";
  }
  Metrics metrics;
  ASSERT_OK_AND_ASSIGN(
      ReadFile file, OpenFileForLoad(path, true, PlainFileOpener(), &metrics));
  EXPECT_FALSE(file.cached);
  EXPECT_TRUE(file.direct);
  EXPECT_NE(::fcntl(file.fd.get(), F_GETFL) & O_DIRECT, 0);
  EXPECT_EQ(metrics.Snapshot()["warmstart_io_cached_files_total"], 0u);
}

TEST(OpenFileForLoadTest, WithoutDirectWantedEveryFileIsBuffered) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("weights.bin");
  WriteFile(path, std::string(8192, 'w'));
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenFileForLoad(path, false));
  EXPECT_FALSE(file.cached);
  EXPECT_FALSE(file.direct);
}

}  // namespace
}  // namespace warmstart
