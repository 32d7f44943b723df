#include "common/utf8.h"

#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(FindInvalidUtf8Test, FindsTheFirstBadByte) {
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), absl::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("h\xc3\xa9llo \xf0\x9f\x98\x80"),
            absl::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("ab\xff"), 2u);
  EXPECT_EQ(FindInvalidUtf8("x\xc0\xaf"), 1u);         // Overlong '/'.
  EXPECT_EQ(FindInvalidUtf8("\xe0\x80\xaf"), 0u);      // Overlong, 3 bytes.
  EXPECT_EQ(FindInvalidUtf8("\xf0\x80\x80\xaf"), 0u);  // Overlong, 4 bytes.
  EXPECT_EQ(FindInvalidUtf8("\xed\xa0\x80"), 0u);      // A surrogate.
  EXPECT_EQ(FindInvalidUtf8("\xf4\x90\x80\x80"), 0u);  // Past U+10FFFF.
  EXPECT_EQ(FindInvalidUtf8("ok\xe2\x82"), 2u);        // Cut short.
  EXPECT_EQ(FindInvalidUtf8("\x80"), 0u);  // A stray continuation byte.
}

TEST(Utf8SequenceLengthTest, MeasuresEachForm) {
  EXPECT_EQ(Utf8SequenceLength("a", 0), 1u);
  EXPECT_EQ(Utf8SequenceLength("\xc3\xa9", 0), 2u);
  EXPECT_EQ(Utf8SequenceLength("\xe2\x82\xac", 0), 3u);
  EXPECT_EQ(Utf8SequenceLength("\xf0\x9f\x98\x80", 0), 4u);
  EXPECT_EQ(Utf8SequenceLength("x\xe2\x82\xac", 1), 3u);
  EXPECT_EQ(Utf8SequenceLength("\xe2\x82", 0), 0u);
}

}  // namespace
}  // namespace warmstart
