#include "common/testing/test_env.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace testing {
namespace {

TEST(TestEnvTest, FixturesAreReachable) {
  std::string path = FixturePath("safetensors/golden_rs_f32.safetensors");
  EXPECT_EQ(::access(path.c_str(), R_OK), 0) << path;
  EXPECT_EQ(ReadFileOrDie(path).size(), 96u);
}

TEST(TestEnvTest, ShortTempDirIsShortAndRemoved) {
  std::string path;
  {
    ShortTempDir dir;
    path = dir.path();
    // Room for a socket name within sun_path's 108 bytes.
    EXPECT_LT(dir.Join("warmstart.sock").size(), 40u);
    std::ofstream(dir.Join("file")) << "x";
    ASSERT_EQ(::mkdir(dir.Join("sub").c_str(), 0700), 0);
    std::ofstream(dir.Join("sub/nested")) << "y";
  }
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

TEST(TestEnvTest, SeedIsSetByTheMain) {
  // The main sets it from --seed / $WARMSTART_TEST_SEED or at random; either
  // way SetTestSeed round-trips.
  uint32_t original = TestSeed();
  SetTestSeed(1234);
  EXPECT_EQ(TestSeed(), 1234u);
  SetTestSeed(original);
}

}  // namespace
}  // namespace testing
}  // namespace warmstart
