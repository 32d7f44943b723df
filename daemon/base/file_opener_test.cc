#include "daemon/base/file_opener.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream(path, std::ios::binary) << contents;
}

// Reads what `fd` holds from its start (small files only).
std::string ReadAll(const ScopedFd& fd) {
  std::string contents(256, '\0');
  const ssize_t n = ::pread(fd.get(), contents.data(), contents.size(), 0);
  EXPECT_GE(n, 0);
  contents.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return contents;
}

bool CloseOnExec(const ScopedFd& fd) {
  return (::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC) != 0;
}

bool NonBlocking(const ScopedFd& fd) {
  return (::fcntl(fd.get(), F_GETFL) & O_NONBLOCK) != 0;
}

// Opens `path` (a FIFO nobody writes) with `opener` on another thread and
// returns the result. Where the open blocks (the bug: a FIFO under a model
// root hung a handler thread forever) the test fails instead of hanging:
// after a generous wait a writer is opened, which releases the reader.
absl::StatusOr<ScopedFd> OpenFifoWithoutHanging(const FileOpener& opener,
                                                const std::string& path) {
  absl::StatusOr<ScopedFd> result = absl::UnknownError("not run");
  absl::Notification done;
  std::thread opening([&] {
    result = opener.Open(path, O_RDONLY);
    done.Notify();
  });
  if (!done.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    ADD_FAILURE() << "opening the FIFO " << path << " blocked";
    const int writer = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
    opening.join();
    if (writer >= 0) ::close(writer);
    return absl::DeadlineExceededError("blocked");
  }
  opening.join();
  return result;
}

// A temporary directory holding "root" (the allowed model root) and
// "other" (outside it), each with a file.
class BeneathRootsOpenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.Join("root");
    other_ = dir_.Join("other");
    ASSERT_EQ(::mkdir(root_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((root_ + "/nested").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(other_.c_str(), 0755), 0);
    WriteFile(root_ + "/model.bin", "inside");
    WriteFile(root_ + "/nested/shard.bin", "nested");
    WriteFile(other_ + "/secret.bin", "outside");
    ASSERT_OK_AND_ASSIGN(opener_, BeneathRootsOpener::Create({root_}));
  }

  testing::ShortTempDir dir_;
  std::string root_;
  std::string other_;
  std::unique_ptr<BeneathRootsOpener> opener_;
};

TEST_F(BeneathRootsOpenerTest, OpensAFileInsideTheRoot) {
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       opener_->Open(root_ + "/model.bin", O_RDONLY));
  EXPECT_EQ(ReadAll(fd), "inside");
  EXPECT_TRUE(CloseOnExec(fd));
}

TEST_F(BeneathRootsOpenerTest, RefusesAFifoWithoutBlocking) {
  const std::string fifo = root_ + "/model.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  EXPECT_THAT(OpenFifoWithoutHanging(*opener_, fifo),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(fifo + ": not a regular file (a FIFO)")));
}

TEST_F(BeneathRootsOpenerTest, RefusesADirectoryOpenedAsAFile) {
  EXPECT_THAT(opener_->Open(root_ + "/nested", O_RDONLY),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not a regular file (a directory)")));
}

TEST_F(BeneathRootsOpenerTest, ARegularFileComesBackBlocking) {
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       opener_->Open(root_ + "/model.bin", O_RDONLY));
  EXPECT_FALSE(NonBlocking(fd));
}

TEST_F(BeneathRootsOpenerTest, OpensAFileInANestedDirectory) {
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       opener_->Open(root_ + "/nested/shard.bin", O_RDONLY));
  EXPECT_EQ(ReadAll(fd), "nested");
}

TEST_F(BeneathRootsOpenerTest, OpensTheRootItselfAsADirectory) {
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       opener_->Open(root_, O_RDONLY | O_DIRECTORY));
  struct stat st;
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_OK(opener_->Open(root_ + "/", O_RDONLY | O_DIRECTORY).status());
}

TEST_F(BeneathRootsOpenerTest, RefusesAPathUnderNoRootNamingItAndTheRoots) {
  const std::string path = other_ + "/secret.bin";
  EXPECT_THAT(
      opener_->Open(path, O_RDONLY),
      StatusIs(absl::StatusCode::kPermissionDenied,
               path + ": not beneath an allowed model root (" + root_ + ")"));
}

TEST_F(BeneathRootsOpenerTest, RefusesASymlinkThatLeadsOutside) {
  ASSERT_EQ(::symlink((other_ + "/secret.bin").c_str(),
                      (root_ + "/escape.bin").c_str()),
            0);
  ASSERT_EQ(::symlink("../other/secret.bin", (root_ + "/relative.bin").c_str()),
            0);
  for (const char* name : {"/escape.bin", "/relative.bin"}) {
    const std::string path = root_ + name;
    EXPECT_THAT(opener_->Open(path, O_RDONLY),
                StatusIs(absl::StatusCode::kPermissionDenied,
                         path + ": resolves outside the model root " + root_));
  }
}

TEST_F(BeneathRootsOpenerTest, RefusesASymlinkedDirectoryThatLeadsOutside) {
  ASSERT_EQ(::symlink("../other", (root_ + "/linked").c_str()), 0);
  EXPECT_THAT(opener_->Open(root_ + "/linked/secret.bin", O_RDONLY),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("resolves outside the model root")));
  EXPECT_THAT(opener_->Open(root_ + "/linked", O_RDONLY | O_DIRECTORY),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("resolves outside the model root")));
}

TEST_F(BeneathRootsOpenerTest, FollowsARelativeSymlinkThatStaysInside) {
  ASSERT_EQ(::symlink("nested/shard.bin", (root_ + "/link.bin").c_str()), 0);
  ASSERT_EQ(::symlink("../model.bin", (root_ + "/nested/up_link.bin").c_str()),
            0);
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       opener_->Open(root_ + "/link.bin", O_RDONLY));
  EXPECT_EQ(ReadAll(fd), "nested");
  ASSERT_OK_AND_ASSIGN(fd,
                       opener_->Open(root_ + "/nested/up_link.bin", O_RDONLY));
  EXPECT_EQ(ReadAll(fd), "inside");
}

TEST_F(BeneathRootsOpenerTest, RefusesAnAbsoluteSymlinkEvenToInside) {
  // RESOLVE_BENEATH does not know where an absolute link would land.
  ASSERT_EQ(::symlink((root_ + "/model.bin").c_str(),
                      (root_ + "/absolute.bin").c_str()),
            0);
  EXPECT_THAT(opener_->Open(root_ + "/absolute.bin", O_RDONLY),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("resolves outside the model root")));
}

TEST_F(BeneathRootsOpenerTest, RefusesDotDotOutOfTheRoot) {
  const std::string path = root_ + "/../other/secret.bin";
  EXPECT_THAT(opener_->Open(path, O_RDONLY),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       path + ": resolves outside the model root " + root_));
  // ".." that stays inside is fine.
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       opener_->Open(root_ + "/nested/../model.bin", O_RDONLY));
  EXPECT_EQ(ReadAll(fd), "inside");
}

TEST_F(BeneathRootsOpenerTest, RefusesASiblingThatSharesTheRootsPrefix) {
  const std::string sibling = root_ + "2";
  ASSERT_EQ(::mkdir(sibling.c_str(), 0755), 0);
  WriteFile(sibling + "/f", "sibling");
  EXPECT_THAT(opener_->Open(sibling + "/f", O_RDONLY),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(StartsWith(sibling + "/f: "),
                             HasSubstr("not beneath an allowed model root"))));
}

TEST_F(BeneathRootsOpenerTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = root_ + "/absent.bin";
  EXPECT_THAT(opener_->Open(path, O_RDONLY),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr(path), HasSubstr("No such file"))));
}

TEST_F(BeneathRootsOpenerTest, RelativePathIsInvalid) {
  EXPECT_THAT(opener_->Open("root/model.bin", O_RDONLY),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       StartsWith("root/model.bin: not an absolute path")));
}

TEST_F(BeneathRootsOpenerTest, TheLongestMatchingRootConfinesThePath) {
  // With roots "root" and "root/nested", a path under "root/nested" may not
  // climb into the rest of "root".
  ASSERT_OK_AND_ASSIGN(auto opener,
                       BeneathRootsOpener::Create({root_, root_ + "/nested/"}));
  EXPECT_OK(opener->Open(root_ + "/model.bin", O_RDONLY).status());
  EXPECT_OK(opener->Open(root_ + "/nested/shard.bin", O_RDONLY).status());
  EXPECT_THAT(opener->Open(root_ + "/nested/../model.bin", O_RDONLY),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("resolves outside the model root " + root_ +
                                 "/nested")));
}

TEST_F(BeneathRootsOpenerTest, RefusalNamesEveryRoot) {
  ASSERT_OK_AND_ASSIGN(auto opener,
                       BeneathRootsOpener::Create({root_, dir_.path() + "//"}));
  // "/" style normalisation: repeated and trailing slashes are dropped.
  EXPECT_OK(opener->Open(other_ + "/secret.bin", O_RDONLY).status());
  ASSERT_OK_AND_ASSIGN(opener, BeneathRootsOpener::Create({root_, other_}));
  EXPECT_THAT(opener->Open("/etc/hostname", O_RDONLY),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       "/etc/hostname: not beneath an allowed model root (" +
                           root_ + ", " + other_ + ")"));
}

TEST_F(BeneathRootsOpenerTest, CreateRefusesBadRoots) {
  EXPECT_THAT(BeneathRootsOpener::Create({}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no")));
  EXPECT_THAT(BeneathRootsOpener::Create({"relative/root"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not an absolute directory path")));
  EXPECT_THAT(BeneathRootsOpener::Create({root_ + "/../other"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("components are not allowed")));
  EXPECT_THAT(
      BeneathRootsOpener::Create({root_ + "/absent"}),
      StatusIs(absl::StatusCode::kNotFound, HasSubstr(root_ + "/absent")));
  EXPECT_THAT(BeneathRootsOpener::Create({root_ + "/model.bin"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(root_ + "/model.bin")));
}

TEST(PlainFileOpenerTest, OpensAnyPathCloseOnExec) {
  testing::ShortTempDir dir;
  WriteFile(dir.Join("f"), "plain");
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       PlainFileOpener().Open(dir.Join("f"), O_RDONLY));
  EXPECT_EQ(ReadAll(fd), "plain");
  EXPECT_TRUE(CloseOnExec(fd));
  EXPECT_THAT(PlainFileOpener().Open(dir.Join("absent"), O_RDONLY),
              StatusIs(absl::StatusCode::kNotFound,
                       StartsWith("open " + dir.Join("absent") + ": ")));
}

TEST(PlainFileOpenerTest, RefusesAFifoWithoutBlocking) {
  testing::ShortTempDir dir;
  ASSERT_EQ(::mkfifo(dir.Join("fifo").c_str(), 0644), 0);
  EXPECT_THAT(OpenFifoWithoutHanging(PlainFileOpener(), dir.Join("fifo")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not a regular file (a FIFO)")));
  WriteFile(dir.Join("f"), "plain");
  ASSERT_OK_AND_ASSIGN(ScopedFd fd,
                       PlainFileOpener().Open(dir.Join("f"), O_RDONLY));
  EXPECT_FALSE(NonBlocking(fd));
}

}  // namespace
}  // namespace warmstart
