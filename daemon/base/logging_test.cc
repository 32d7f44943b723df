#include "daemon/base/logging.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// Runs `body` with stderr redirected to a temporary file; returns what it
// wrote.
template <typename Body>
std::string CaptureStderr(Body body) {
  std::fflush(stderr);
  char path[] = "/tmp/ws-log-XXXXXX";
  int fd = ::mkstemp(path);
  int saved = ::dup(2);
  ::dup2(fd, 2);
  body();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::string out;
  char buffer[4096];
  ::lseek(fd, 0, SEEK_SET);
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) out.append(buffer, n);
  ::close(fd);
  ::unlink(path);
  return out;
}

TEST(LoggingTest, ParsesFormats) {
  LogFormat format;
  EXPECT_OK(ParseLogFormat("json", &format));
  EXPECT_EQ(format, LogFormat::kJson);
  EXPECT_OK(ParseLogFormat("text", &format));
  EXPECT_EQ(format, LogFormat::kText);
  EXPECT_THAT(ParseLogFormat("xml", &format),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("xml")));
}

TEST(LoggingTest, RejectsUnknownLevel) {
  EXPECT_THAT(InitLogging(LogFormat::kText, "loud"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("loud")));
}

TEST(LoggingTest, TextLinesNameTheComponent) {
  ASSERT_OK(InitLogging(LogFormat::kText, "info"));
  std::string out = CaptureStderr([] {
    Logger("text-test")->info("loaded {} tensors", 3);
    Logger("text-test")->debug("hidden below info");
  });
  EXPECT_THAT(out, HasSubstr("info [text-test] loaded 3 tensors"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("hidden")));
}

TEST(LoggingTest, ControlCharactersInNamesNeverReachTheLogRaw) {
  // A model file named with a newline forged a log line, and one with an
  // escape sequence rewrote the terminal of whoever read the log.
  ASSERT_OK(InitLogging(LogFormat::kText, "info"));
  std::string out = CaptureStderr([] {
    Logger("text-test")->info("loading {}", "/m/a\ninfo [daemon] ok\x1b[2J");
  });
  EXPECT_THAT(out, HasSubstr("loading /m/a\\x0ainfo [daemon] ok\\x1b[2J\n"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  EXPECT_EQ(out.find('\x1b'), std::string::npos);

  ASSERT_OK(InitLogging(LogFormat::kJson, "info"));
  out = CaptureStderr(
      [] { Logger("json-test")->info("name {}", "a\x1b[2J\xff"); });
  EXPECT_THAT(out, HasSubstr("name a\\\\x1b[2J\\\\xff"));
  ASSERT_OK(InitLogging(LogFormat::kText, "info"));
}

TEST(LoggingTest, JsonLinesAreEscaped) {
  ASSERT_OK(InitLogging(LogFormat::kJson, "info"));
  std::string out =
      CaptureStderr([] { Logger("json-test")->warn("path \"a\\b\"\nnext"); });
  EXPECT_THAT(
      out,
      MatchesRegex("\\{\"ts\":[0-9]+\\.[0-9]{6},\"level\":\"warning\","
                   "\"component\":\"json-test\","
                   "\"msg\":\"path \\\\\"a\\\\\\\\b\\\\\"\\\\nnext\"\\}\n"));
  ASSERT_OK(InitLogging(LogFormat::kText, "info"));
}

TEST(LoggingTest, SameComponentSameLogger) {
  EXPECT_EQ(Logger("shared-component"), Logger("shared-component"));
}

}  // namespace
}  // namespace warmstart
