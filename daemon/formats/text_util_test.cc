#include "daemon/formats/text_util.h"

#include <string>

#include "common/utf8.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(QuoteTest, EscapesAndShortens) {
  EXPECT_EQ(Quote("w"), "\"w\"");
  EXPECT_EQ(Quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\x0ad\"");
  const std::string quoted = Quote(std::string(500, 'x'));
  EXPECT_EQ(quoted, "\"" + std::string(200, 'x') + "\"...");
  // Never cuts inside a UTF-8 character.
  std::string accents;
  for (int i = 0; i < 150; ++i) accents += "\xc3\xa9";
  const std::string cut = Quote(accents);
  EXPECT_EQ(FindInvalidUtf8(cut), absl::string_view::npos);
}

TEST(JsonErrorDetailTest, KeepsTheReason) {
  EXPECT_EQ(JsonErrorDetail("[json.exception.parse_error.101] parse error at "
                            "line 1, column 2: syntax error"),
            "syntax error");
  EXPECT_EQ(JsonErrorDetail(std::string(300, 'z')).size(), 243u);
}

}  // namespace
}  // namespace warmstart
