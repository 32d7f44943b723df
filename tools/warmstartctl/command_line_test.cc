#include "tools/warmstartctl/command_line.h"

#include <cstdlib>

#include "common/protocol.h"
#include "common/testing/status_matchers.h"

namespace warmstart {
namespace ctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::set<std::string> kValueFlags = {"--socket", "--timeout"};

absl::StatusOr<CommandLine> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "warmstartctl");
  return ParseCommandLine(static_cast<int>(args.size()), args.data(),
                          kValueFlags);
}

TEST(CommandLineTest, FlagsBeforeOrAfterTheCommand) {
  ASSERT_OK_AND_ASSIGN(auto before, Parse({"--socket", "/s", "status", "m"}));
  ASSERT_OK_AND_ASSIGN(auto after, Parse({"status", "m", "--socket=/s"}));
  for (const CommandLine& line : {before, after}) {
    EXPECT_EQ(line.command, "status");
    EXPECT_THAT(line.arguments, ElementsAre("m"));
    EXPECT_EQ(line.Value("--socket", "default"), "/s");
  }
}

TEST(CommandLineTest, SwitchesAndDefaults) {
  ASSERT_OK_AND_ASSIGN(auto line, Parse({"inspect", "--json", "a", "b"}));
  EXPECT_TRUE(line.Has("--json"));
  EXPECT_FALSE(line.Has("--hash"));
  EXPECT_THAT(line.arguments, ElementsAre("a", "b"));
  EXPECT_EQ(line.Value("--timeout", "60"), "60");
}

TEST(CommandLineTest, DoubleDashEndsFlags) {
  ASSERT_OK_AND_ASSIGN(auto line, Parse({"inspect", "--", "--json"}));
  EXPECT_FALSE(line.Has("--json"));
  EXPECT_THAT(line.arguments, ElementsAre("--json"));
}

TEST(CommandLineTest, Errors) {
  EXPECT_THAT(Parse({"wait-ready", "--timeout"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--timeout needs a value")));
  EXPECT_THAT(
      Parse({"--socket", "a", "--socket", "b"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("given twice")));
  EXPECT_THAT(Parse({"--json=yes"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("takes no value")));
}

TEST(CommandLineTest, RepeatableFlagsCollectEveryValue) {
  std::vector<const char*> args = {"warmstartctl",  "load",     "m",
                                   "--device",      "GPU-1",    "/p",
                                   "--device=host", "--socket", "s"};
  ASSERT_OK_AND_ASSIGN(
      auto line, ParseCommandLine(static_cast<int>(args.size()), args.data(),
                                  kValueFlags, {"--device"}));
  EXPECT_THAT(line.Values("--device"), ElementsAre("GPU-1", "host"));
  EXPECT_THAT(line.Values("--other"), ElementsAre());
  EXPECT_THAT(line.arguments, ElementsAre("m", "/p"));
  EXPECT_OK(CheckFlags(line, {}, {"--socket", "--device"}));
  EXPECT_THAT(CheckFlags(line, {}, {"--socket"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unknown flag --device for load")));
}

TEST(CheckFlagsTest, UnknownFlagsAreUsageErrors) {
  ASSERT_OK_AND_ASSIGN(auto line, Parse({"inspect", "--verfy", "m"}));
  EXPECT_THAT(CheckFlags(line, {"--verify", "--json"}, {"--socket"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unknown flag --verfy for inspect")));
  ASSERT_OK_AND_ASSIGN(auto good, Parse({"inspect", "--json", "--socket=s"}));
  EXPECT_OK(CheckFlags(good, {"--verify", "--json"}, {"--socket"}));
  ASSERT_OK_AND_ASSIGN(auto value, Parse({"status", "--timeout=3"}));
  EXPECT_THAT(
      CheckFlags(value, {}, {"--socket"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--timeout")));
}

TEST(SocketPathTest, FlagThenEnvironmentThenDefault) {
  ::unsetenv(kSocketEnv);
  ASSERT_OK_AND_ASSIGN(auto bare, Parse({"ls"}));
  EXPECT_EQ(SocketPath(bare, "/run/default.sock"), "/run/default.sock");
  ::setenv(kSocketEnv, "", 1);
  EXPECT_EQ(SocketPath(bare, "/run/default.sock"), "/run/default.sock");
  ::setenv(kSocketEnv, "/env.sock", 1);
  EXPECT_EQ(SocketPath(bare, "/run/default.sock"), "/env.sock");
  ASSERT_OK_AND_ASSIGN(auto flag, Parse({"--socket", "/flag.sock", "ls"}));
  EXPECT_EQ(SocketPath(flag, "/run/default.sock"), "/flag.sock");
  ::unsetenv(kSocketEnv);
}

}  // namespace
}  // namespace ctl
}  // namespace warmstart
