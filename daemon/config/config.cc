#include "daemon/config/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace warmstart {
namespace {

using v1::DaemonConfig;

constexpr uint64_t kMinSlabBytes = uint64_t{4} << 20;
constexpr uint64_t kSlabAlignment = 4096;
constexpr uint32_t kMaxShutdownGraceSeconds = 3600;
constexpr uint32_t kDefaultStagingReleaseSeconds = 30;
constexpr uint32_t kMaxStagingReleaseSeconds = 86400;
constexpr size_t kMaxPreloadNameLength = 128;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  std::string contents;
  char buffer[8192];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("read ", path));
    }
    if (n == 0) return contents;
    contents.append(buffer, static_cast<size_t>(n));
  }
}

// Keeps the first error; the parser stops there anyway, and later errors
// tend to be consequences of it.
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!has_error_) {
      has_error_ = true;
      line_ = line;
      column_ = column;
      message_ = message;
    }
  }

  bool has_error() const { return has_error_; }
  // The error's position is 0-based in the parser, 1-based for people.
  std::string Describe(const std::string& path) const {
    return absl::StrCat(path, ":", line_ + 1, ":", column_ + 1, ": ", message_);
  }

 private:
  bool has_error_ = false;
  int line_ = 0;
  int column_ = 0;
  std::string message_;
};

// Prints socket_mode as "0660", which the text format parser reads back as
// octal.
class OctalPrinter
    : public google::protobuf::TextFormat::FastFieldValuePrinter {
 public:
  void PrintUInt32(uint32_t value,
                   google::protobuf::TextFormat::BaseTextGenerator* generator)
      const override {
    generator->PrintString(absl::StrFormat("%#o", value));
  }
};

// Splits a flag value on commas; empty elements are kept so that validation
// reports them instead of silently dropping them.
std::vector<std::string> SplitList(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const std::string& value : values) {
    for (absl::string_view part : absl::StrSplit(value, ',')) {
      out.emplace_back(part);
    }
  }
  return out;
}

absl::Status ApplyFlags(const ConfigFlags& flags, DaemonConfig& config) {
  if (!flags.socket.empty()) {
    config.mutable_listen()->set_unix_socket(flags.socket);
  }
  for (std::string& root : SplitList(flags.model_roots)) {
    config.add_model_roots(std::move(root));
  }
  for (const std::string& prefix : flags.remote_sources) {
    config.add_remote_sources(prefix);
  }
  for (const std::string& preload : SplitList(flags.preloads)) {
    const size_t eq = preload.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--preload \"", preload, "\": expected NAME=PATH, no '=' found"));
    }
    const std::string name = preload.substr(0, eq);
    const std::string path = preload.substr(eq + 1);
    if (name.empty() || path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--preload \"", preload, "\": expected NAME=PATH, ",
                       name.empty() ? "NAME" : "PATH", " is empty"));
    }
    v1::Preload* entry = config.add_preloads();
    entry->set_name(name);
    entry->set_path(path);
  }
  if (!flags.backend.empty()) {
    if (flags.backend == "auto") {
      config.set_backend(v1::BACKEND_CHOICE_AUTO);
    } else if (flags.backend == "host") {
      config.set_backend(v1::BACKEND_CHOICE_HOST);
    } else if (flags.backend == "cuda") {
      config.set_backend(v1::BACKEND_CHOICE_CUDA);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--backend \"", flags.backend, "\": expected auto, host or cuda"));
    }
  }
  if (!flags.log_format.empty()) {
    if (flags.log_format == "text") {
      config.set_log_format(v1::LOG_FORMAT_TEXT);
    } else if (flags.log_format == "json") {
      config.set_log_format(v1::LOG_FORMAT_JSON);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--log_format \"", flags.log_format, "\": expected text or json"));
    }
  }
  return absl::OkStatus();
}

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost" || host == "[::1]") return true;
  in_addr v4;
  return ::inet_pton(AF_INET, host.c_str(), &v4) == 1 &&
         (ntohl(v4.s_addr) >> 24) == 127;
}

// An empty `tcp` is fine (nothing listens); otherwise "host:port" with a
// loopback host unless `allow_non_loopback`.
absl::Status ValidateHostPort(absl::string_view field, const std::string& tcp,
                              bool allow_non_loopback) {
  if (tcp.empty()) return absl::OkStatus();
  const size_t colon = tcp.rfind(':');
  if (colon == std::string::npos) {
    return Invalid(field, absl::StrCat("\"", tcp, "\": expected host:port"));
  }
  const std::string host = tcp.substr(0, colon);
  const std::string port_text = tcp.substr(colon + 1);
  uint32_t port = 0;
  const bool digits_only =
      !port_text.empty() && port_text.size() <= 5 &&
      std::all_of(port_text.begin(), port_text.end(), absl::ascii_isdigit);
  if (!digits_only || !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return Invalid(field, absl::StrCat("\"", tcp, "\": port \"", port_text,
                                       "\" is not a number from 0 to 65535"));
  }
  if (host.empty()) {
    return Invalid(field, absl::StrCat("\"", tcp, "\": host is empty"));
  }
  if (host.find(':') != std::string::npos && host.front() != '[') {
    return Invalid(field, absl::StrCat("\"", tcp,
                                       "\": write an IPv6 host in brackets, as "
                                       "[::1]:port"));
  }
  if (!allow_non_loopback && !IsLoopbackHost(host)) {
    return Invalid(field,
                   absl::StrCat("\"", tcp,
                                "\": host is not loopback (127.x, [::1], "
                                "localhost); set listen.allow_non_loopback "
                                "to serve unauthenticated gRPC beyond this "
                                "machine"));
  }
  return absl::OkStatus();
}

absl::Status ValidateListen(const v1::Listen& listen) {
  const std::string& socket = listen.unix_socket();
  if (socket.empty()) return Invalid("listen.unix_socket", "is empty");
  if (socket[0] != '/') {
    return Invalid("listen.unix_socket",
                   absl::StrCat("\"", socket, "\" is not an absolute path"));
  }
  // sun_path holds the terminating NUL too.
  if (socket.size() >= sizeof(sockaddr_un::sun_path)) {
    return Invalid("listen.unix_socket",
                   absl::StrCat("\"", socket, "\" is ", socket.size(),
                                " bytes; a unix socket path must be under ",
                                sizeof(sockaddr_un::sun_path)));
  }
  if (listen.socket_mode() > 0777) {
    return Invalid(
        "listen.socket_mode",
        absl::StrFormat("%#o is not a permission mode (at most 0777)",
                        listen.socket_mode()));
  }
  WS_RETURN_IF_ERROR(ValidateHostPort(
      "listen.tcp_address", listen.tcp_address(), listen.allow_non_loopback()));
  WS_RETURN_IF_ERROR(ValidateHostPort("listen.metrics_address",
                                      listen.metrics_address(),
                                      listen.allow_non_loopback()));
  return absl::OkStatus();
}

// "/a/./b//c/" -> "/a/b/c". Returns "" for a path with "..": its meaning
// depends on symlinks, which a lexical check does not follow.
std::string NormalizeAbsolute(const std::string& path) {
  std::string out;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part == ".") continue;
    if (part == "..") return "";
    absl::StrAppend(&out, "/", part);
  }
  return out.empty() ? "/" : out;
}

// A root itself counts: a checkpoint directory may be a model root.
bool IsAtOrBeneath(const std::string& path, const std::string& root) {
  if (root == "/" || path == root) return true;
  return absl::StartsWith(path, root) && path.size() > root.size() &&
         path[root.size()] == '/';
}

bool IsValidPreloadName(const std::string& name) {
  if (name.empty() || name.size() > kMaxPreloadNameLength) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::Status ValidateKey(const v1::KeySource& key, const std::string& field) {
  switch (key.source_case()) {
    case v1::KeySource::kKeyFile:
      if (key.key_file().empty())
        return Invalid(field + ".key_file", "is empty");
      break;
    case v1::KeySource::kKeyEnv:
      if (key.key_env().empty()) return Invalid(field + ".key_env", "is empty");
      break;
    case v1::KeySource::kPasswordFile:
      if (key.password_file().empty()) {
        return Invalid(field + ".password_file", "is empty");
      }
      break;
    case v1::KeySource::SOURCE_NOT_SET:
      break;
  }
  return absl::OkStatus();
}

// As formats' IsRemoteUrl (not depended on: the configuration needs no
// parsers).
bool IsRemoteUrl(absl::string_view path) {
  return absl::StartsWith(path, "http://") ||
         absl::StartsWith(path, "https://") || absl::StartsWith(path, "s3://");
}

// The allow-list rule of RemoteSources: a prefix equal to `url` or followed
// in it by '/'.
bool IsBeneathRemoteSource(const DaemonConfig& config, const std::string& url) {
  for (const std::string& prefix : config.remote_sources()) {
    if (!absl::StartsWith(url, prefix)) continue;
    if (url.size() == prefix.size() || prefix.back() == '/' ||
        url[prefix.size()] == '/') {
      return true;
    }
  }
  return false;
}

absl::Status ValidateRemote(const DaemonConfig& config) {
  for (int i = 0; i < config.remote_sources_size(); ++i) {
    const std::string field = absl::StrCat("remote_sources[", i, "]");
    const std::string& prefix = config.remote_sources(i);
    if (!IsRemoteUrl(prefix)) {
      return Invalid(field, absl::StrCat("\"", prefix,
                                         "\" must start with http://, "
                                         "https:// or s3://"));
    }
    if (prefix.find('@') != std::string::npos) {
      // Not echoed: it would be a credential.
      return Invalid(field,
                     "must not hold user information ('@'); credentials come "
                     "from the environment or the shared credentials file");
    }
    if (prefix.find_first_of("?#") != std::string::npos) {
      return Invalid(field, absl::StrCat("\"", prefix,
                                         "\" must not hold a query or "
                                         "fragment"));
    }
  }
  if (config.remote_concurrency() < 1 || config.remote_concurrency() > 256) {
    return Invalid(
        "remote_concurrency",
        absl::StrCat(config.remote_concurrency(), " must be 1 to 256"));
  }
  return absl::OkStatus();
}

absl::Status ValidateModels(const DaemonConfig& config) {
  WS_RETURN_IF_ERROR(ValidateRemote(config));
  std::vector<std::string> roots;
  for (int i = 0; i < config.model_roots_size(); ++i) {
    const std::string field = absl::StrCat("model_roots[", i, "]");
    const std::string& root = config.model_roots(i);
    if (root.empty() || root[0] != '/') {
      return Invalid(field,
                     absl::StrCat("\"", root, "\" is not an absolute path"));
    }
    struct stat st;
    if (::stat(root.c_str(), &st) != 0) {
      return Invalid(field, ErrnoToStatus(errno, root).message());
    }
    if (!S_ISDIR(st.st_mode)) {
      return Invalid(field, absl::StrCat("\"", root, "\" is not a directory"));
    }
    roots.push_back(NormalizeAbsolute(root));
  }
  std::set<std::string> names;
  for (int i = 0; i < config.preloads_size(); ++i) {
    const v1::Preload& preload = config.preloads(i);
    const std::string field = absl::StrCat("preloads[", i, "]");
    if (!IsValidPreloadName(preload.name())) {
      return Invalid(field + ".name",
                     absl::StrCat("\"", preload.name(),
                                  "\" must be 1 to 128 of [A-Za-z0-9._-]"));
    }
    if (!names.insert(preload.name()).second) {
      return Invalid(field + ".name",
                     absl::StrCat("\"", preload.name(), "\" is used twice"));
    }
    const std::string& path = preload.path();
    if (IsRemoteUrl(path)) {
      if (!IsBeneathRemoteSource(config, path)) {
        return Invalid(field + ".path",
                       absl::StrCat("\"", path,
                                    "\" is not beneath any of remote_sources"));
      }
      WS_RETURN_IF_ERROR(ValidateKey(preload.key(), field + ".key"));
      continue;
    }
    if (path.empty() || path[0] != '/') {
      return Invalid(field + ".path",
                     absl::StrCat("\"", path, "\" is not an absolute path"));
    }
    const std::string normal = NormalizeAbsolute(path);
    if (normal.empty()) {
      return Invalid(field + ".path",
                     absl::StrCat("\"", path, "\" contains \"..\""));
    }
    bool beneath = false;
    for (const std::string& root : roots)
      beneath |= IsAtOrBeneath(normal, root);
    if (!beneath) {
      return Invalid(
          field + ".path",
          absl::StrCat("\"", path, "\" is not beneath any of model_roots"));
    }
    WS_RETURN_IF_ERROR(ValidateKey(preload.key(), field + ".key"));
  }
  return absl::OkStatus();
}

absl::Status ValidateMemory(const DaemonConfig& config) {
  std::set<std::string> devices;
  for (int i = 0; i < config.budgets_size(); ++i) {
    const v1::DeviceBudget& budget = config.budgets(i);
    const std::string field = absl::StrCat("budgets[", i, "]");
    if (budget.device().empty()) return Invalid(field + ".device", "is empty");
    if (!devices.insert(budget.device()).second) {
      return Invalid(field + ".device",
                     absl::StrCat("\"", budget.device(), "\" has two budgets"));
    }
    if (budget.bytes() == 0) return Invalid(field + ".bytes", "must be > 0");
  }
  const uint64_t slab = config.slab_bytes();
  const uint64_t staging = config.staging_bytes();
  if (slab < kMinSlabBytes || slab % kSlabAlignment != 0) {
    return Invalid("slab_bytes",
                   absl::StrCat(slab, " must be at least ", kMinSlabBytes,
                                " (4 MiB) and a multiple of ", kSlabAlignment));
  }
  if (config.staging_release_seconds() > kMaxStagingReleaseSeconds) {
    return Invalid("staging_release_seconds",
                   absl::StrCat(config.staging_release_seconds(),
                                " must be at most ", kMaxStagingReleaseSeconds,
                                " (a day; 0 keeps the pool resident)"));
  }
  if (staging < slab || staging % slab != 0) {
    return Invalid("staging_bytes",
                   absl::StrCat(staging,
                                " must be a non-zero multiple of "
                                "slab_bytes (",
                                slab, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DaemonConfig> LoadConfigFile(const std::string& path) {
  WS_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  google::protobuf::TextFormat::Parser parser;
  FirstErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  DaemonConfig config;
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(
        errors.has_error() ? errors.Describe(path)
                           : absl::StrCat(path, ": not a DaemonConfig"));
  }
  return config;
}

void ApplyDefaults(DaemonConfig& config) {
  v1::Listen* listen = config.mutable_listen();
  if (!listen->has_unix_socket()) listen->set_unix_socket(kDefaultSocketPath);
  if (!listen->has_socket_mode()) listen->set_socket_mode(kDefaultSocketMode);
  if (!config.has_staging_bytes()) {
    config.set_staging_bytes(kDefaultStagingBytes);
  }
  if (!config.has_slab_bytes()) config.set_slab_bytes(kDefaultSlabBytes);
  if (!config.has_staging_release_seconds()) {
    config.set_staging_release_seconds(kDefaultStagingReleaseSeconds);
  }
  if (!config.has_io_engine()) config.set_io_engine(v1::IO_ENGINE_AUTO);
  if (!config.has_backend()) config.set_backend(v1::BACKEND_CHOICE_AUTO);
  if (!config.has_remote_concurrency()) {
    config.set_remote_concurrency(kDefaultRemoteConcurrency);
  }
  if (!config.has_shutdown_grace_seconds()) {
    config.set_shutdown_grace_seconds(kDefaultShutdownGraceSeconds);
  }
  if (!config.has_log_format()) config.set_log_format(v1::LOG_FORMAT_TEXT);
}

absl::Status ValidateConfig(const DaemonConfig& config) {
  WS_RETURN_IF_ERROR(ValidateListen(config.listen()));
  WS_RETURN_IF_ERROR(ValidateModels(config));
  WS_RETURN_IF_ERROR(ValidateMemory(config));
  if (config.shutdown_grace_seconds() > kMaxShutdownGraceSeconds) {
    return Invalid("shutdown_grace_seconds",
                   absl::StrCat(config.shutdown_grace_seconds(),
                                " is more than ", kMaxShutdownGraceSeconds));
  }
  return absl::OkStatus();
}

absl::StatusOr<DaemonConfig> BuildConfig(const ConfigFlags& flags) {
  DaemonConfig config;
  if (!flags.config.empty()) {
    WS_ASSIGN_OR_RETURN(config, LoadConfigFile(flags.config));
  }
  WS_RETURN_IF_ERROR(ApplyFlags(flags, config));
  ApplyDefaults(config);
  WS_RETURN_IF_ERROR(ValidateConfig(config));
  return config;
}

std::string EchoConfig(const DaemonConfig& config) {
  google::protobuf::TextFormat::Printer printer;
  printer.SetSingleLineMode(true);
  printer.RegisterFieldValuePrinter(
      v1::Listen::descriptor()->FindFieldByName("socket_mode"),
      new OctalPrinter());
  std::string text;
  printer.PrintToString(config, &text);
  absl::StripTrailingAsciiWhitespace(&text);
  return text;
}

}  // namespace warmstart
