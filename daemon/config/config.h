// warmstartd's configuration: a DaemonConfig textproto file, flags that
// override it, defaults, validation, and the echo logged at start.
//
// Every function here is thread-safe: none keeps state between calls.
#ifndef WARMSTART_DAEMON_CONFIG_CONFIG_H_
#define WARMSTART_DAEMON_CONFIG_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/protocol.h"
#include "proto/config.pb.h"

namespace warmstart {

inline constexpr uint32_t kDefaultSocketMode = 0660;
inline constexpr uint64_t kDefaultStagingBytes = uint64_t{256} << 20;
inline constexpr uint64_t kDefaultSlabBytes = uint64_t{16} << 20;
inline constexpr uint32_t kDefaultShutdownGraceSeconds = 30;
inline constexpr uint32_t kDefaultRemoteConcurrency = 8;

// Reads the DaemonConfig textproto at `path`, as written; applies no defaults
// and does not validate. Errors: the errno class of a failed open or read
// (NotFound, PermissionDenied, ...); InvalidArgument for a syntax error or an
// unknown field, with a message "<path>:<line>:<column>: <what>" (both
// 1-based).
absl::StatusOr<v1::DaemonConfig> LoadConfigFile(const std::string& path);

// The command-line flags that shape the configuration. An empty string means
// the flag was not given.
struct ConfigFlags {
  std::string config;  // --config FILE
  std::string socket;  // --socket PATH: replaces listen.unix_socket
  // --model_root DIR and --preload NAME=PATH: each element may be one value or
  // a comma-separated list; all are appended to the file's entries.
  std::vector<std::string> model_roots;
  std::vector<std::string> preloads;
  // --remote_source PREFIX: each element one URL prefix (not split on
  // commas, which URLs may hold); appended to the file's remote_sources.
  std::vector<std::string> remote_sources;
  std::string backend;     // --backend auto|host|cuda
  std::string log_format;  // --log_format text|json
};

// The effective configuration: the --config file if given, then the flags,
// then defaults for whatever is still unset, then ValidateConfig. A preload
// from a flag is required, on every device, and unencrypted. Errors: those of
// LoadConfigFile; InvalidArgument naming the flag for a malformed value
// (--preload without "=", an empty name or path, an unknown --backend or
// --log_format); those of ValidateConfig.
absl::StatusOr<v1::DaemonConfig> BuildConfig(const ConfigFlags& flags);

// Sets every unset defaulted field of `config` (the kDefault* values above,
// IO_ENGINE_AUTO, BACKEND_CHOICE_AUTO, LOG_FORMAT_TEXT); leaves set fields
// alone.
void ApplyDefaults(v1::DaemonConfig& config);

// Checks a configuration with defaults applied. Returns InvalidArgument whose
// message names the first offending field (e.g. "preloads[2].path: ...").
// Checks that model_roots exist as directories, so the result depends on the
// file system; preload paths are only checked lexically (absolute, no "..",
// beneath a model root).
absl::Status ValidateConfig(const v1::DaemonConfig& config);

// `config` as one line of textproto for the start-up log, socket_mode in
// octal. LoadConfigFile reads it back to an equal message. The configuration
// holds no key material (only key file paths and environment variable names),
// so the echo holds none either.
std::string EchoConfig(const v1::DaemonConfig& config);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_CONFIG_CONFIG_H_
