#include "daemon/formats/text_util.h"

#include <string>

#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(FindInvalidUtf8Test, FindsTheFirstBadByte) {
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), absl::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("h\xc3\xa9llo \xf0\x9f\x98\x80"),
            absl::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("ab\xff"), 2u);
  EXPECT_EQ(FindInvalidUtf8("x\xc0\xaf"), 1u);         // Overlong '/'.
  EXPECT_EQ(FindInvalidUtf8("\xed\xa0\x80"), 0u);      // A surrogate.
  EXPECT_EQ(FindInvalidUtf8("\xf4\x90\x80\x80"), 0u);  // Past U+10FFFF.
  EXPECT_EQ(FindInvalidUtf8("ok\xe2\x82"), 2u);        // Cut short.
}

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
