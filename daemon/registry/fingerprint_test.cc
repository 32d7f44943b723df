#include "daemon/registry/fingerprint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::warmstart::testing::ShortTempDir;
using ::warmstart::testing::WriteTestSafetensors;

Manifest ManifestOf(const std::string& path) {
  Manifest manifest;
  manifest.files.emplace_back();
  manifest.files.back().path = path;
  return manifest;
}

TEST(FingerprintTest, SameFileSameFingerprint) {
  ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  WriteTestSafetensors(path, 2, 4096);
  ASSERT_OK_AND_ASSIGN(Fingerprint a,
                       FingerprintFiles(ManifestOf(path), PlainFileOpener()));
  ASSERT_OK_AND_ASSIGN(Fingerprint b,
                       FingerprintFiles(ManifestOf(path), PlainFileOpener()));
  EXPECT_EQ(a, b);
  EXPECT_EQ(DescribeChange(a, b), "");
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].header_sha256.size(), 64u);
}

TEST(FingerprintTest, NamesWhatChanged) {
  ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  WriteTestSafetensors(path, 2, 4096);
  ASSERT_OK_AND_ASSIGN(Fingerprint before,
                       FingerprintFiles(ManifestOf(path), PlainFileOpener()));

  WriteTestSafetensors(path, 3, 4096);
  ASSERT_OK_AND_ASSIGN(Fingerprint grown,
                       FingerprintFiles(ManifestOf(path), PlainFileOpener()));
  EXPECT_THAT(DescribeChange(before, grown), HasSubstr(path + ": size "));

  // Same size, same inode, same mtime, other bytes: only the hash tells.
  Fingerprint forged = before;
  forged[0].header_sha256 = std::string(64, '0');
  EXPECT_THAT(DescribeChange(before, forged), HasSubstr("header changed"));

  Fingerprint touched = before;
  touched[0].mtime_ns += 1;
  EXPECT_THAT(DescribeChange(before, touched), HasSubstr("modified"));

  Fingerprint replaced = before;
  replaced[0].inode += 1;
  EXPECT_THAT(DescribeChange(before, replaced), HasSubstr("replaced"));
}

TEST(FingerprintTest, ARewritePastTheHeaderWithItsMtimeRestoredIsCaught) {
  // Same inode, size, mtime and first MiB: before ctime was part of the
  // fingerprint, a load of the same name joined the old model and served
  // bytes that no longer match the file.
  ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  WriteTestSafetensors(path, 4, 512 << 10);  // 2 MiB of data.
  ASSERT_OK_AND_ASSIGN(Fingerprint before,
                       FingerprintFiles(ManifestOf(path), PlainFileOpener()));
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  // ctime comes from the kernel's coarse clock: wait until it has moved on
  // from the file's, so the rewrite below cannot share its tick.
  timespec now{};
  do {
    ::clock_gettime(CLOCK_REALTIME_COARSE, &now);
  } while (now.tv_sec == st.st_ctim.tv_sec &&
           now.tv_nsec == st.st_ctim.tv_nsec);

  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, "rewritten", 9, (1 << 20) + 4096), 9);
  const timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::futimens(fd, times), 0);
  ::close(fd);

  ASSERT_OK_AND_ASSIGN(Fingerprint after,
                       FingerprintFiles(ManifestOf(path), PlainFileOpener()));
  EXPECT_EQ(after[0].mtime_ns, before[0].mtime_ns);
  EXPECT_EQ(after[0].header_sha256, before[0].header_sha256);
  EXPECT_NE(after, before);
  EXPECT_THAT(DescribeChange(before, after), HasSubstr("its ctime moved"));
}

TEST(FingerprintTest, RemoteFilesAreTheirUrlSizeAndEtag) {
  Manifest manifest = ManifestOf("s3://bucket/m.safetensors");
  manifest.files[0].file_size = 1000;
  manifest.files[0].version = "\"etag-1\"";
  // No request and no open: a remote file's fingerprint is what parsing saw.
  ASSERT_OK_AND_ASSIGN(Fingerprint before,
                       FingerprintFiles(manifest, PlainFileOpener()));
  ASSERT_EQ(before.size(), 1u);
  EXPECT_EQ(before[0].size, 1000u);
  EXPECT_EQ(before[0].etag, "\"etag-1\"");
  EXPECT_EQ(before[0].header_sha256, "");

  manifest.files[0].version = "\"etag-2\"";
  ASSERT_OK_AND_ASSIGN(Fingerprint replaced,
                       FingerprintFiles(manifest, PlainFileOpener()));
  EXPECT_NE(before, replaced);
  EXPECT_THAT(DescribeChange(before, replaced),
              HasSubstr("s3://bucket/m.safetensors: ETag \"etag-1\" -> "
                        "\"etag-2\""));

  manifest.files[0].version = "\"etag-1\"";
  manifest.files[0].file_size = 999;
  ASSERT_OK_AND_ASSIGN(Fingerprint shrunk,
                       FingerprintFiles(manifest, PlainFileOpener()));
  EXPECT_THAT(DescribeChange(before, shrunk), HasSubstr("size 1000 -> 999"));
}

TEST(FingerprintTest, MissingFileIsNotFound) {
  EXPECT_THAT(FingerprintFiles(ManifestOf("/tmp/does-not-exist.safetensors"),
                               PlainFileOpener()),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("/tmp/does-not-exist.safetensors")));
}

}  // namespace
}  // namespace warmstart
