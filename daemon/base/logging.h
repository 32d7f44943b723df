// Logging setup: one spdlog logger per component, text or JSON lines on
// stderr.
//
// Thread safety: InitLogging must be called once, before other threads log.
// Loggers returned by Logger() are thread-safe.
#ifndef WARMSTART_DAEMON_BASE_LOGGING_H_
#define WARMSTART_DAEMON_BASE_LOGGING_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

namespace warmstart {

enum class LogFormat { kText, kJson };

// Parses "text" or "json".
absl::Status ParseLogFormat(absl::string_view text, LogFormat* format);

// Configures every logger made by Logger() from now on: the output format and
// the minimum level ("trace", "debug", "info", "warn", "error").
absl::Status InitLogging(LogFormat format, absl::string_view level);

// The named logger of one component ("io", "registry", ...), created on first
// use with the configuration from InitLogging (text at info before it).
std::shared_ptr<spdlog::logger> Logger(const std::string& component);

}  // namespace warmstart

// Lets log calls format absl::string_view (Debian's Abseil does not alias it
// to std::string_view) and absl::Status.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename Context>
  auto format(absl::string_view text, Context& context) const {
    return fmt::formatter<fmt::string_view>::format(
        fmt::string_view(text.data(), text.size()), context);
  }
};

template <>
struct fmt::formatter<absl::Status> : fmt::formatter<fmt::string_view> {
  template <typename Context>
  auto format(const absl::Status& status, Context& context) const {
    const std::string text = status.ToString();
    return fmt::formatter<fmt::string_view>::format(
        fmt::string_view(text.data(), text.size()), context);
  }
};

#endif  // WARMSTART_DAEMON_BASE_LOGGING_H_
