#include "common/printable.h"

#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(PrintableTest, EscapesTerminalAndLogControls) {
  // An escape sequence that would clear an operator's screen, a forged log
  // line, a C1 CSI and a byte that is not UTF-8.
  EXPECT_EQ(Printable("a\x1b[2Jb"), "a\\x1b[2Jb");
  EXPECT_EQ(Printable("m\ninfo [daemon] ready"), "m\\x0ainfo [daemon] ready");
  EXPECT_EQ(Printable("x\xc2\x9b"
                      "31my"),
            "x\\xc2\\x9b31my");
  EXPECT_EQ(Printable("bad\xff"), "bad\\xff");
  EXPECT_EQ(Printable("del\x7f"), "del\\x7f");
  EXPECT_EQ(Printable("tab\t"), "tab\\x09");
  EXPECT_EQ(Printable(absl::string_view("nul\0", 4)), "nul\\x00");
}

TEST(PrintableTest, KeepsValidText) {
  EXPECT_EQ(Printable("/models/llama-3/model.safetensors"),
            "/models/llama-3/model.safetensors");
  EXPECT_EQ(Printable("modèle-日本-\xf0\x9f\x98\x80"),
            "modèle-日本-\xf0\x9f\x98\x80");
  EXPECT_EQ(Printable("\xc2\xa0"), "\xc2\xa0");  // U+00A0 is printable.
}

TEST(PrintableTest, RejectsOverlongAndSurrogateForms) {
  EXPECT_EQ(Printable("\xc0\xaf"), "\\xc0\\xaf");
  EXPECT_EQ(Printable("\xed\xa0\x80"), "\\xed\\xa0\\x80");
  EXPECT_EQ(Printable("\xe2\x82"), "\\xe2\\x82");  // Cut short.
}

TEST(PrintableTest, LinesKeepTheirNewlines) {
  EXPECT_EQ(PrintableLines("a\x1b\nb\n"), "a\\x1b\nb\n");
}

}  // namespace
}  // namespace warmstart
