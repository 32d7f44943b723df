#include "daemon/io/read_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <string>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/metrics.h"
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

}  // namespace
}  // namespace warmstart
