#include "daemon/base/logging.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/printable.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace warmstart {
namespace {

constexpr char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v";

class JsonFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    const auto seconds = std::chrono::duration_cast<std::chrono::microseconds>(
                             msg.time.time_since_epoch())
                             .count();
    std::string out = absl::StrCat(
        "{\"ts\":", seconds / 1000000, ".",
        absl::StrFormat("%06d", seconds % 1000000), ",\"level\":\"",
        spdlog::level::to_string_view(msg.level).data(), "\",\"component\":\"",
        Escape({msg.logger_name.data(), msg.logger_name.size()}),
        "\",\"msg\":\"",
        Escape(PrintableLines({msg.payload.data(), msg.payload.size()})),
        "\"}\n");
    dest.append(out.data(), out.data() + out.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }

 private:
  static std::string Escape(absl::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (unsigned char c : text) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        default:
          if (c < 0x20) {
            out += absl::StrFormat("\\u%04x", c);
          } else {
            out.push_back(static_cast<char>(c));
          }
      }
    }
    return out;
  }
};

// The text pattern, over a payload made printable: messages carry file and
// tensor names, and a newline or an escape sequence in one must neither
// forge a log line nor reach an operator's terminal.
class TextFormatter : public spdlog::formatter {
 public:
  TextFormatter()
      : pattern_(std::make_unique<spdlog::pattern_formatter>(kTextPattern)) {}
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    const std::string shown =
        Printable({msg.payload.data(), msg.payload.size()});
    spdlog::details::log_msg escaped = msg;
    escaped.payload = spdlog::string_view_t(shown.data(), shown.size());
    pattern_->format(escaped, dest);
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<TextFormatter>();
  }

 private:
  std::unique_ptr<spdlog::pattern_formatter> pattern_;
};

LogFormat g_format = LogFormat::kText;
spdlog::level::level_enum g_level = spdlog::level::info;

void Configure(spdlog::logger& logger) {
  if (g_format == LogFormat::kJson) {
    logger.set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger.set_formatter(std::make_unique<TextFormatter>());
  }
  logger.set_level(g_level);
}

}  // namespace

absl::Status ParseLogFormat(absl::string_view text, LogFormat* format) {
  if (text == "text") {
    *format = LogFormat::kText;
  } else if (text == "json") {
    *format = LogFormat::kJson;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("log format \"", text, "\": expected text or json"));
  }
  return absl::OkStatus();
}

absl::Status InitLogging(LogFormat format, absl::string_view level) {
  const auto parsed = spdlog::level::from_str(std::string(level));
  // from_str answers "off" for anything it does not know.
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("log level \"", level,
                     "\": expected trace, debug, info, warn or error"));
  }
  g_format = format;
  g_level = parsed;
  spdlog::apply_all(
      [](std::shared_ptr<spdlog::logger> logger) { Configure(*logger); });
  return absl::OkStatus();
}

std::shared_ptr<spdlog::logger> Logger(const std::string& component) {
  // spdlog's registry refuses (by throwing) a second logger of one name, so
  // lookup and creation happen under one lock.
  static absl::Mutex* const mutex = new absl::Mutex;
  absl::MutexLock lock(mutex);
  if (auto existing = spdlog::get(component)) return existing;
  auto logger = spdlog::stderr_logger_mt(component);
  Configure(*logger);
  return logger;
}

}  // namespace warmstart
