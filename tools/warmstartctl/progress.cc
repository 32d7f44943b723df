#include "tools/warmstartctl/progress.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace warmstart {
namespace ctl {
namespace {

constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
constexpr int kUnitCount = sizeof(kUnits) / sizeof(kUnits[0]);

// The largest unit (an index into kUnits) in which `bytes` is at least 1.
int UnitFor(double bytes) {
  int unit = 0;
  while (unit + 1 < kUnitCount && bytes >= 1024.0) {
    bytes /= 1024.0;
    ++unit;
  }
  return unit;
}

// `bytes` in `unit`, without the unit's name: whole bytes, else one
// decimal.
std::string InUnit(double bytes, int unit) {
  if (unit == 0) return absl::StrFormat("%.0f", bytes);
  return absl::StrFormat("%.1f", bytes / std::pow(1024.0, unit));
}

}  // namespace

std::string FormatBytes(uint64_t bytes) {
  const int unit = UnitFor(static_cast<double>(bytes));
  return absl::StrCat(InUnit(static_cast<double>(bytes), unit), " ",
                      kUnits[unit]);
}

std::string FormatBytePair(uint64_t loaded, uint64_t total) {
  const int unit = UnitFor(static_cast<double>(std::max(loaded, total)));
  return absl::StrCat(InUnit(static_cast<double>(loaded), unit), "/",
                      InUnit(static_cast<double>(total), unit), " ",
                      kUnits[unit]);
}

std::string FormatRate(double bytes_per_second) {
  if (!(bytes_per_second > 0) || std::isinf(bytes_per_second)) {
    return "0 B/s";
  }
  const int unit = UnitFor(bytes_per_second);
  return absl::StrCat(InUnit(bytes_per_second, unit), " ", kUnits[unit], "/s");
}

std::string FormatEta(double seconds) {
  // Beyond 100 hours the figure says nothing a rate would not.
  if (!(seconds >= 0) || seconds >= 100 * 3600.0) return "--";
  const int64_t whole = static_cast<int64_t>(std::ceil(seconds));
  if (whole < 60) return absl::StrFormat("%ds", whole);
  if (whole < 3600) {
    return absl::StrFormat("%dm%02ds", whole / 60, whole % 60);
  }
  return absl::StrFormat("%dh%02dm", whole / 3600, whole % 3600 / 60);
}

double EtaSeconds(const Progress& progress) {
  if (progress.bytes_loaded >= progress.bytes_total) return 0;
  if (!(progress.bytes_per_second > 0)) return -1;
  return static_cast<double>(progress.bytes_total - progress.bytes_loaded) /
         progress.bytes_per_second;
}

std::string FormatBar(uint64_t loaded, uint64_t total, int width) {
  width = std::max(width, 0);
  int filled = width;
  if (loaded < total) {
    filled = static_cast<int>(static_cast<double>(width) *
                              static_cast<double>(loaded) /
                              static_cast<double>(total));
    filled = std::clamp(filled, 0, std::max(width - 1, 0));
  }
  return absl::StrCat("[", std::string(filled, '#'),
                      std::string(width - filled, '.'), "]");
}

std::string FormatProgressBar(const Progress& progress, int bar_width) {
  return absl::StrCat(
      "loading ", progress.name, " ",
      FormatBar(progress.bytes_loaded, progress.bytes_total, bar_width), " ",
      FormatBytePair(progress.bytes_loaded, progress.bytes_total), " ",
      FormatRate(progress.bytes_per_second), " ETA ",
      FormatEta(EtaSeconds(progress)));
}

int FitBarWidth(const Progress& progress, int columns, int min_width,
                int max_width) {
  if (columns <= 0) return max_width;
  // The line's length without the bar's cells; the ETA and the figures
  // change as the load goes on, so leave room for their longest forms.
  const int fixed = static_cast<int>(FormatProgressBar(progress, 0).size());
  const int slack = 6;
  return std::clamp(columns - 1 - fixed - slack, min_width, max_width);
}

std::string FormatProgressLine(const Progress& progress) {
  constexpr double kMiB = 1024.0 * 1024.0;
  return absl::StrFormat("loading %s: %.1f of %.1f MiB (%.1f MiB/s)",
                         progress.name, progress.bytes_loaded / kMiB,
                         progress.bytes_total / kMiB,
                         progress.bytes_per_second / kMiB);
}

ProgressDisplay::ProgressDisplay(std::FILE* out, bool terminal, int columns)
    : out_(out), terminal_(terminal), columns_(columns) {}

void ProgressDisplay::Update(const Progress& progress, absl::Time now) {
  const absl::Duration interval =
      terminal_ ? absl::Milliseconds(100) : absl::Seconds(1);
  if (now - last_write_ < interval) return;
  last_write_ = now;
  if (!terminal_) {
    std::fprintf(out_, "%s\n", FormatProgressLine(progress).c_str());
    std::fflush(out_);
    return;
  }
  Draw(progress);
}

void ProgressDisplay::Draw(const Progress& progress) {
  if (bar_width_ < 0) bar_width_ = FitBarWidth(progress, columns_);
  std::string line = FormatProgressBar(progress, bar_width_);
  const size_t length = line.size();
  // Blank out the rest of a longer line drawn before.
  if (length < drawn_length_) line.append(drawn_length_ - length, ' ');
  std::fprintf(out_, "\r%s", line.c_str());
  std::fflush(out_);
  drawn_length_ = length;
  line_open_ = true;
}

void ProgressDisplay::Finish(const Progress* last) {
  if (!terminal_ || !line_open_) return;
  if (last != nullptr) Draw(*last);
  std::fputc('\n', out_);
  std::fflush(out_);
  line_open_ = false;
  drawn_length_ = 0;
}

}  // namespace ctl
}  // namespace warmstart
