#include "tools/warmstartctl/inspect_command.h"

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/printable.h"
#include "common/status_macros.h"
#include "daemon/formats/byte_source.h"
#include "daemon/formats/checkpoint.h"
#include "daemon/formats/key_provider.h"
#include "daemon/formats/key_source.h"
#include "daemon/formats/tensor_data.h"
#include "daemon/remote/remote_source.h"
#include "nlohmann/json.hpp"
#include "tools/warmstartctl/exit_codes.h"

namespace warmstart {
namespace ctl {
namespace {

using Json = nlohmann::ordered_json;

int KeyFlagCount(const CommandLine& line) {
  int given = 0;
  for (const char* flag :
       {"--key-hex", "--key-file", "--password", "--password-file"}) {
    given += static_cast<int>(line.values.count(flag));
  }
  return given;
}

// The key source the command line names, if any.
// REQUIRES: KeyFlagCount(line) <= 1.
absl::StatusOr<std::unique_ptr<KeyProvider>> KeysFromCommandLine(
    const CommandLine& line) {
  if (line.values.count("--key-hex")) {
    WS_ASSIGN_OR_RETURN(KeyMaterial key,
                        KeyFromHex(line.Value("--key-hex", "")));
    return std::make_unique<KeyProvider>(std::move(key));
  }
  if (line.values.count("--key-file")) {
    WS_ASSIGN_OR_RETURN(KeyMaterial key,
                        KeyFromFile(line.Value("--key-file", "")));
    return std::make_unique<KeyProvider>(std::move(key));
  }
  if (line.values.count("--password")) {
    return std::make_unique<KeyProvider>(
        Password(line.Value("--password", "")));
  }
  if (line.values.count("--password-file")) {
    WS_ASSIGN_OR_RETURN(Password password,
                        PasswordFromFile(line.Value("--password-file", "")));
    return std::make_unique<KeyProvider>(std::move(password));
  }
  return std::make_unique<KeyProvider>();
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

struct InspectOptions {
  bool json = false;
  bool hash = false;
  bool verify = false;
  ParseOptions parse;
};

// Appends the listing of one checkpoint to `json_files` or `text`.
absl::Status InspectPath(const std::string& path, const InspectOptions& options,
                         KeyProvider& keys, Json& json_files, std::string& text,
                         uint64_t& verified) {
  WS_ASSIGN_OR_RETURN(Manifest manifest, OpenCheckpoint(path, options.parse));
  for (const FileManifest& file : manifest.files) {
    std::unique_ptr<ByteSource> source;
    if (options.hash || options.verify) {
      if (IsRemoteUrl(file.path)) {
        WS_ASSIGN_OR_RETURN(source, options.parse.remote->OpenUrl(file.path));
      } else {
        WS_ASSIGN_OR_RETURN(source, FileByteSource::Open(file.path));
      }
    }
    Json tensors = Json::array();
    uint64_t total_bytes = 0;
    std::string rows;
    for (const TensorEntry& tensor : file.tensors) {
      total_bytes += tensor.nbytes;
      std::optional<std::string> sha256;
      if (source != nullptr) {
        WS_ASSIGN_OR_RETURN(const KeyMaterial* key,
                            keys.KeyFor(file.path, tensor));
        if (options.verify) {
          WS_RETURN_IF_ERROR(VerifyStoredChecksums(*source, tensor, key));
          verified += tensor.checksums.size();
        }
        if (options.hash) {
          WS_ASSIGN_OR_RETURN(sha256, TensorSha256Hex(*source, tensor, key));
        }
      }
      if (options.json) {
        Json entry = {{"name", tensor.name},
                      {"dtype", tensor.dtype},
                      {"shape", tensor.shape},
                      {"nbytes", tensor.nbytes},
                      {"offset", tensor.offset}};
        if (sha256.has_value()) entry["sha256"] = *sha256;
        tensors.push_back(std::move(entry));
      } else {
        absl::StrAppend(&rows, "  ", Printable(tensor.name), "  ", tensor.dtype,
                        " ", ShapeText(tensor.shape), "  ", tensor.nbytes,
                        " bytes at ", tensor.offset,
                        tensor.is_meta() ? " (meta: zeros)" : "",
                        tensor.encryption.has_value() ? " (encrypted)" : "",
                        sha256.has_value() ? "  sha256 " + *sha256 : "", "\n");
      }
    }
    if (options.json) {
      Json entry = {{"path", file.path},
                    {"format", std::string(FormatName(file.format))},
                    {"format_version", nullptr},
                    {"metadata", file.metadata},
                    {"tensors", std::move(tensors)}};
      if (file.format_version.has_value()) {
        entry["format_version"] = *file.format_version;
      }
      json_files.push_back(std::move(entry));
    } else {
      absl::StrAppend(
          &text, Printable(file.path), ": ", FormatName(file.format),
          file.format_version.has_value()
              ? absl::StrCat(" version ", *file.format_version)
              : "",
          file.big_endian ? " (big-endian)" : "", ", ", file.tensors.size(),
          " tensors, ", total_bytes, " bytes\n", rows);
      if (!file.metadata.empty()) {
        absl::StrAppend(
            &text, "  metadata: ",
            file.metadata.dump(-1, ' ', false, Json::error_handler_t::replace),
            "\n");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunInspect(const CommandLine& line) {
  if (line.arguments.empty()) {
    std::fprintf(stderr, "warmstartctl: inspect needs at least one PATH\n");
    return kExitUsage;
  }
  InspectOptions options;
  options.json = line.Has("--json");
  options.hash = line.Has("--hash");
  options.verify = line.Has("--verify");
  options.parse.full_metadata = line.Has("--full-metadata");
  if (KeyFlagCount(line) > 1) {
    std::fprintf(stderr,
                 "warmstartctl: give at most one of --key-hex, --key-file, "
                 "--password and --password-file\n");
    return kExitUsage;
  }
  auto keys = KeysFromCommandLine(line);
  if (!keys.ok()) {
    std::fprintf(stderr, "warmstartctl: %s\n",
                 Printable(keys.status().message()).c_str());
    return ExitCodeFor(keys.status());
  }

  // URLs are read as the daemon reads them (see remote_source.h), each
  // allowed with its siblings (a shard index names objects beside it): the
  // user asked for them, and no daemon's allow-list applies here.
  std::unique_ptr<RemoteSources> remote;
  RemoteOptions remote_options;
  for (const std::string& path : line.arguments) {
    if (IsRemoteUrl(path)) {
      remote_options.allowed_prefixes.push_back(
          path.substr(0, path.rfind('/') + 1));
    }
  }
  if (!remote_options.allowed_prefixes.empty()) {
    auto created = RemoteSources::Create(std::move(remote_options));
    if (!created.ok()) {
      std::fprintf(stderr, "warmstartctl: %s\n",
                   std::string(created.status().message()).c_str());
      return ExitCodeFor(created.status());
    }
    remote = *std::move(created);
    options.parse.remote = remote.get();
  }

  Json files = Json::array();
  std::string text;
  uint64_t verified = 0;
  for (const std::string& path : line.arguments) {
    absl::Status status =
        InspectPath(path, options, **keys, files, text, verified);
    if (!status.ok()) {
      std::fprintf(stderr, "warmstartctl: %s\n",
                   Printable(status.message()).c_str());
      return ExitCodeFor(status);
    }
  }
  if (options.json) {
    Json out = {{"files", std::move(files)}};
    std::printf(
        "%s\n",
        out.dump(2, ' ', false, Json::error_handler_t::replace).c_str());
  } else {
    // Tensor and file names may hold any byte: none reaches the terminal
    // raw.
    std::fputs(PrintableLines(text).c_str(), stdout);
    if (options.verify) {
      std::printf("verified %llu stored checksums: all match\n",
                  static_cast<unsigned long long>(verified));
    }
  }
  return kExitOk;
}

}  // namespace ctl
}  // namespace warmstart
