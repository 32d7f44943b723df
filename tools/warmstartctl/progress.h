// How warmstartctl shows a load's progress: pure formatting functions, so
// that every case (units, the bar, an unknown ETA) is unit-tested, and
// ProgressDisplay, which writes them to a terminal or a log.
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_PROGRESS_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_PROGRESS_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/time/time.h"

namespace warmstart {
namespace ctl {

// A load's progress as the daemon reports it.
struct Progress {
  std::string name;
  uint64_t bytes_loaded = 0;
  uint64_t bytes_total = 0;
  double bytes_per_second = 0;
};

// Binary units, one decimal: "512 B", "1.5 KiB", "12.0 MiB", "3.2 GiB",
// "1.0 TiB".
std::string FormatBytes(uint64_t bytes);

// Both figures in the unit that suits the larger (the total, as a rule):
// "4.1/16.0 GiB", "0/512 B".
std::string FormatBytePair(uint64_t loaded, uint64_t total);

// "2.3 GiB/s"; "0 B/s" for a rate of zero (or a negative or NaN one).
std::string FormatRate(double bytes_per_second);

// The time left: "5s", "1m05s", "2h03m"; "--" when unknown (no rate yet,
// or an infinite or negative estimate). Seconds round up, so a load with
// bytes left never shows "0s".
std::string FormatEta(double seconds);

// Seconds until `progress` completes at its current rate; negative when it
// cannot be told (no rate). 0 once every byte is loaded.
double EtaSeconds(const Progress& progress);

// `width` cells between brackets, "#" for the part loaded (rounded down,
// so the bar is full only when every byte is), "." for the rest:
// "[#########.......]". A total of 0 (nothing to load) is full.
// REQUIRES: width >= 0.
std::string FormatBar(uint64_t loaded, uint64_t total, int width);

// The terminal's progress line, redrawn in place:
// "loading llama [#########.......] 4.1/16.0 GiB 2.3 GiB/s ETA 5s".
std::string FormatProgressBar(const Progress& progress, int bar_width);

// The bar width that makes FormatProgressBar fit `columns` terminal
// columns (leaving the last column free, where a terminal would wrap),
// at most `max_width` and at least `min_width` (which may then overflow);
// `max_width` when `columns` is 0 (unknown). REQUIRES: min_width <=
// max_width.
int FitBarWidth(const Progress& progress, int columns, int min_width = 10,
                int max_width = 30);

// The line printed about once a second when stderr is not a terminal:
// "loading llama: 4096.0 of 16384.0 MiB (2355.2 MiB/s)".
std::string FormatProgressLine(const Progress& progress);

// Shows a load's progress on `out`. On a terminal, one line redrawn in
// place ("\r", FormatProgressBar, spaces over what is left of a longer
// line) at most ten times a second; otherwise FormatProgressLine at most
// once a second (the first update at once). Not thread-safe.
class ProgressDisplay {
 public:
  // `columns`: the terminal's width, 0 when unknown (the bar is then 30
  // cells wide). `out` must outlive the display.
  ProgressDisplay(std::FILE* out, bool terminal, int columns = 0);
  ProgressDisplay(const ProgressDisplay&) = delete;
  ProgressDisplay& operator=(const ProgressDisplay&) = delete;

  // A report of the load in progress, received at `now`.
  void Update(const Progress& progress, absl::Time now);

  // The load ended. On a terminal where a bar is shown: draws `last` (the
  // final figures, when the load completed) and ends the line, so that
  // what is printed next starts on a line of its own.
  void Finish(const Progress* last = nullptr);

 private:
  void Draw(const Progress& progress);

  std::FILE* const out_;
  const bool terminal_;
  const int columns_;
  int bar_width_ = -1;  // Chosen at the first draw.
  absl::Time last_write_ = absl::InfinitePast();
  size_t drawn_length_ = 0;  // Of the line on the terminal now.
  bool line_open_ = false;   // A bar is drawn and not ended.
};

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_PROGRESS_H_
