#include "tools/warmstartctl/progress.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace ctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kGiB = 1024 * kMiB;

Progress Make(uint64_t loaded, uint64_t total, double rate,
              const std::string& name = "llama") {
  Progress progress;
  progress.name = name;
  progress.bytes_loaded = loaded;
  progress.bytes_total = total;
  progress.bytes_per_second = rate;
  return progress;
}

TEST(FormatBytesTest, BinaryUnits) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(12 * kMiB), "12.0 MiB");
  EXPECT_EQ(FormatBytes(16 * kGiB), "16.0 GiB");
  EXPECT_EQ(FormatBytes(3 * kGiB + kGiB / 4), "3.2 GiB");
  EXPECT_EQ(FormatBytes(2048 * kGiB), "2.0 TiB");
  // TiB is the largest unit.
  EXPECT_EQ(FormatBytes(4096ull * 1024 * kGiB), "4096.0 TiB");
}

TEST(FormatBytesTest, PairsShareTheUnitOfTheTotal) {
  EXPECT_EQ(FormatBytePair(4 * kGiB + kGiB / 10, 16 * kGiB), "4.1/16.0 GiB");
  EXPECT_EQ(FormatBytePair(0, 16 * kGiB), "0.0/16.0 GiB");
  EXPECT_EQ(FormatBytePair(100 * kMiB, 300 * kMiB), "100.0/300.0 MiB");
  EXPECT_EQ(FormatBytePair(0, 512), "0/512 B");
  EXPECT_EQ(FormatBytePair(0, 0), "0/0 B");
}

TEST(FormatRateTest, UnitsAndNoRate) {
  EXPECT_EQ(FormatRate(2.3 * kGiB), "2.3 GiB/s");
  EXPECT_EQ(FormatRate(50.0 * kMiB), "50.0 MiB/s");
  EXPECT_EQ(FormatRate(100), "100 B/s");
  EXPECT_EQ(FormatRate(0), "0 B/s");
  EXPECT_EQ(FormatRate(-5), "0 B/s");
  EXPECT_EQ(FormatRate(std::nan("")), "0 B/s");
  EXPECT_EQ(FormatRate(std::numeric_limits<double>::infinity()), "0 B/s");
}

TEST(FormatEtaTest, SecondsMinutesHours) {
  EXPECT_EQ(FormatEta(0), "0s");
  EXPECT_EQ(FormatEta(0.2), "1s");  // Rounded up: bytes are left.
  EXPECT_EQ(FormatEta(5), "5s");
  EXPECT_EQ(FormatEta(59.5), "1m00s");
  EXPECT_EQ(FormatEta(65), "1m05s");
  EXPECT_EQ(FormatEta(3599), "59m59s");
  EXPECT_EQ(FormatEta(3600), "1h00m");
  EXPECT_EQ(FormatEta(2 * 3600 + 3 * 60 + 10), "2h03m");
}

TEST(FormatEtaTest, UnknownIsDashes) {
  EXPECT_EQ(FormatEta(-1), "--");
  EXPECT_EQ(FormatEta(std::nan("")), "--");
  EXPECT_EQ(FormatEta(std::numeric_limits<double>::infinity()), "--");
  EXPECT_EQ(FormatEta(1e12), "--");
}

TEST(EtaSecondsTest, FromRate) {
  EXPECT_DOUBLE_EQ(EtaSeconds(Make(4 * kGiB, 16 * kGiB, 2.0 * kGiB)), 6.0);
  // No rate yet: unknown, not infinite and not zero.
  EXPECT_LT(EtaSeconds(Make(0, 16 * kGiB, 0)), 0);
  EXPECT_EQ(FormatEta(EtaSeconds(Make(0, 16 * kGiB, 0))), "--");
  // Done: zero, whatever the rate.
  EXPECT_EQ(EtaSeconds(Make(16 * kGiB, 16 * kGiB, 0)), 0);
  EXPECT_EQ(EtaSeconds(Make(0, 0, 0)), 0);
}

TEST(FormatBarTest, WidthAndFill) {
  EXPECT_EQ(FormatBar(0, 100, 10), "[..........]");
  EXPECT_EQ(FormatBar(50, 100, 10), "[#####.....]");
  EXPECT_EQ(FormatBar(100, 100, 10), "[##########]");
  EXPECT_EQ(FormatBar(9, 16, 16), "[#########.......]");
  // Rounded down: full only when every byte is loaded.
  EXPECT_EQ(FormatBar(999, 1000, 10), "[#########.]");
  EXPECT_EQ(FormatBar(0, 0, 4), "[####]");
  EXPECT_EQ(FormatBar(200, 100, 4), "[####]");
  EXPECT_EQ(FormatBar(1, 2, 0), "[]");
  for (int width : {1, 7, 30, 80}) {
    EXPECT_EQ(FormatBar(kGiB / 3, kGiB, width).size(),
              static_cast<size_t>(width) + 2);
  }
}

TEST(FormatProgressBarTest, TheWholeLine) {
  EXPECT_EQ(FormatProgressBar(Make(9 * kGiB, 16 * kGiB, 2.3 * kGiB), 16),
            "loading llama [#########.......] 9.0/16.0 GiB 2.3 GiB/s ETA 4s");
  EXPECT_EQ(FormatProgressBar(Make(0, 300 * kMiB, 0, "tiny"), 8),
            "loading tiny [........] 0.0/300.0 MiB 0 B/s ETA --");
  EXPECT_EQ(FormatProgressBar(Make(300 * kMiB, 300 * kMiB, 0, "tiny"), 8),
            "loading tiny [########] 300.0/300.0 MiB 0 B/s ETA 0s");
}

TEST(FitBarWidthTest, FitsTheTerminal) {
  const Progress progress = Make(kGiB, 16 * kGiB, kGiB);
  EXPECT_EQ(FitBarWidth(progress, 0), 30);  // Unknown width.
  EXPECT_EQ(FitBarWidth(progress, 200), 30);
  const int width = FitBarWidth(progress, 70);
  EXPECT_LT(width, 30);
  EXPECT_LT(FormatProgressBar(progress, width).size(), 70u);
  EXPECT_EQ(FitBarWidth(progress, 20), 10);  // Never under the minimum.
}

TEST(FormatProgressLineTest, PlainLine) {
  EXPECT_EQ(FormatProgressLine(Make(100 * kMiB, 300 * kMiB, 50.0 * kMiB)),
            "loading llama: 100.0 of 300.0 MiB (50.0 MiB/s)");
}

// What a ProgressDisplay wrote to a temporary file.
class Capture {
 public:
  Capture() : file_(std::tmpfile()) {}
  ~Capture() { std::fclose(file_); }
  std::FILE* file() { return file_; }
  std::string Text() {
    std::fflush(file_);
    std::rewind(file_);
    std::string text;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), file_)) > 0) {
      text.append(buffer, n);
    }
    return text;
  }

 private:
  std::FILE* file_;
};

TEST(ProgressDisplayTest, TerminalRedrawsOneLineInPlace) {
  Capture out;
  const absl::Time start = absl::FromUnixSeconds(1000);
  {
    ProgressDisplay display(out.file(), /*terminal=*/true, /*columns=*/0);
    display.Update(Make(0, 100 * kMiB, 0, "m"), start);
    // Within 100 ms of the last draw: skipped.
    display.Update(Make(10 * kMiB, 100 * kMiB, 0, "m"),
                   start + absl::Milliseconds(50));
    display.Update(Make(50 * kMiB, 100 * kMiB, 25.0 * kMiB, "m"),
                   start + absl::Milliseconds(200));
    const Progress done = Make(100 * kMiB, 100 * kMiB, 25.0 * kMiB, "m");
    display.Finish(&done);
  }
  const std::string text = out.Text();
  const std::string empty =
      "\rloading m [..............................] 0.0/100.0 MiB 0 B/s "
      "ETA --";
  const std::string half =
      "\rloading m [###############...............] 50.0/100.0 MiB "
      "25.0 MiB/s ETA 2s";
  const std::string full =
      "\rloading m [##############################] 100.0/100.0 MiB "
      "25.0 MiB/s ETA 0s";
  EXPECT_EQ(text, empty + half + full + "\n");
  EXPECT_THAT(text, Not(HasSubstr("10.0/100.0")));
}

TEST(ProgressDisplayTest, TerminalBlanksTheRestOfALongerLine) {
  Capture out;
  const absl::Time start = absl::FromUnixSeconds(1000);
  ProgressDisplay display(out.file(), /*terminal=*/true);
  display.Update(Make(0, 100 * kMiB, 1.0 * kMiB, "m"), start);  // ETA 1m40s
  display.Update(Make(99 * kMiB, 100 * kMiB, 1.0 * kMiB, "m"),
                 start + absl::Seconds(1));  // ETA 1s
  display.Finish();
  const std::string text = out.Text();
  const size_t second = text.find('\r', 1);
  ASSERT_NE(second, std::string::npos);
  // Both draws cover the same columns; the shorter one ends in blanks.
  // After the second "\r": as many columns as the first line, then "\n".
  EXPECT_EQ(text.size() - second - 1, second);
  // "0.0/100.0 ... ETA 1m40s" was 2 columns wider than
  // "99.0/100.0 ... ETA 1s".
  EXPECT_EQ(text.substr(text.size() - 10), " ETA 1s  \n");
}

TEST(ProgressDisplayTest, FinishWithoutABarPrintsNothing) {
  Capture out;
  {
    ProgressDisplay display(out.file(), /*terminal=*/true);
    const Progress done = Make(1, 1, 0);
    display.Finish(&done);
  }
  EXPECT_EQ(out.Text(), "");
}

TEST(ProgressDisplayTest, LogGetsALineASecond) {
  Capture out;
  const absl::Time start = absl::FromUnixSeconds(1000);
  {
    ProgressDisplay display(out.file(), /*terminal=*/false);
    for (int i = 0; i <= 25; ++i) {
      display.Update(Make(i * kMiB, 100 * kMiB, 10.0 * kMiB, "m"),
                     start + absl::Milliseconds(100 * i));
    }
    const Progress done = Make(100 * kMiB, 100 * kMiB, 10.0 * kMiB, "m");
    display.Finish(&done);
  }
  EXPECT_EQ(out.Text(),
            "loading m: 0.0 of 100.0 MiB (10.0 MiB/s)\n"
            "loading m: 10.0 of 100.0 MiB (10.0 MiB/s)\n"
            "loading m: 20.0 of 100.0 MiB (10.0 MiB/s)\n");
}

}  // namespace
}  // namespace ctl
}  // namespace warmstart
