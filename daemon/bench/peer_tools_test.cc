#include "daemon/bench/peer_tools.h"

#include <cstdlib>
#include <string>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::Gt;
using ::testing::HasSubstr;

TEST(RunProgramTest, ReturnsStdoutAndStderrTogether) {
  ASSERT_OK_AND_ASSIGN(std::string output,
                       RunProgram({"sh", "-c", "echo out; echo err >&2"}));
  EXPECT_EQ(output, "out\nerr\n");
}

TEST(RunProgramTest, AFailureNamesTheProgramItsStatusAndItsOutput) {
  EXPECT_THAT(RunProgram({"sh", "-c", "echo why; exit 3"}),
              StatusIs(absl::StatusCode::kInternal,
                       AllOf(HasSubstr("sh exited with 3"), HasSubstr("why"))));
  EXPECT_THAT(RunProgram({"/nonexistent/peer-python"}),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("/nonexistent/peer-python")));
}

// The real peers.py under the test venv's Python (safetensors installed).
class PeerToolsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* venv = std::getenv("WARMSTART_VENV");
    if (venv == nullptr || *venv == '\0') {
      GTEST_SKIP() << "WARMSTART_VENV is not set: no Python with the peers";
    }
    python_ = std::string(venv) + "/bin/python3";
  }
  std::string python_;
  const std::string script_ = "daemon/bench/peers.py";
};

TEST_F(PeerToolsTest, ListsWhatIsInstalledAndWhyTheRestIsNot) {
  PeerTools peers(python_, script_);
  ASSERT_OK_AND_ASSIGN(PeerTools::Availability availability, peers.Available());
  EXPECT_THAT(availability.available, Contains("safetensors"));
  EXPECT_EQ(availability.available.size() + availability.missing.size(), 4u);
  for (const auto& [tool, why] : availability.missing) {
    EXPECT_FALSE(why.empty()) << tool;
  }
}

TEST_F(PeerToolsTest, MeasuresALoadAndReportsErrors) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("m.safetensors");
  testing::WriteTestSafetensors(path, 2, 1 << 20);
  PeerTools peers(python_, script_);
  ASSERT_OK_AND_ASSIGN(double gbps,
                       peers.Measure("safetensors", path, /*cold=*/false));
  EXPECT_THAT(gbps, Gt(0));
  EXPECT_THAT(peers.Measure("no_such_tool", path, false),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr("unknown tool no_such_tool")));
  EXPECT_THAT(
      peers.Measure("safetensors", dir.Join("missing.safetensors"), true),
      StatusIs(absl::StatusCode::kInternal, HasSubstr("missing.safetensors")));
}

}  // namespace
}  // namespace warmstart
