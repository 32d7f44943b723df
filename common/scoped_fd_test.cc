#include "common/scoped_fd.h"

#include <fcntl.h>
#include <unistd.h>

#include <utility>

#include "gtest/gtest.h"

namespace warmstart {
namespace {

bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

int OpenDevNull() { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }

TEST(ScopedFdTest, ClosesOnDestruction) {
  int raw = OpenDevNull();
  ASSERT_GE(raw, 0);
  {
    ScopedFd fd(raw);
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(fd.get(), raw);
  }
  EXPECT_FALSE(IsOpen(raw));
}

TEST(ScopedFdTest, MoveTransfersOwnership) {
  int raw = OpenDevNull();
  ScopedFd first(raw);
  ScopedFd second(std::move(first));
  EXPECT_FALSE(first.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(second.get(), raw);
  ScopedFd third;
  third = std::move(second);
  EXPECT_EQ(third.get(), raw);
  EXPECT_TRUE(IsOpen(raw));
}

TEST(ScopedFdTest, MoveAssignClosesThePreviousDescriptor) {
  int a = OpenDevNull();
  int b = OpenDevNull();
  ScopedFd fa(a);
  ScopedFd fb(b);
  fa = std::move(fb);
  EXPECT_FALSE(IsOpen(a));
  EXPECT_TRUE(IsOpen(b));
}

TEST(ScopedFdTest, ReleaseGivesUpOwnership) {
  int raw = OpenDevNull();
  {
    ScopedFd fd(raw);
    EXPECT_EQ(fd.release(), raw);
    EXPECT_FALSE(fd.valid());
  }
  EXPECT_TRUE(IsOpen(raw));
  ::close(raw);
}

TEST(ScopedFdTest, ResetClosesAndAdopts) {
  int a = OpenDevNull();
  int b = OpenDevNull();
  ScopedFd fd(a);
  fd.reset(b);
  EXPECT_FALSE(IsOpen(a));
  EXPECT_EQ(fd.get(), b);
  fd.reset();
  EXPECT_FALSE(IsOpen(b));
  EXPECT_FALSE(fd.valid());
}

}  // namespace
}  // namespace warmstart
