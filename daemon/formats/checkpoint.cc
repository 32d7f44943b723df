#include "daemon/formats/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "daemon/base/file_opener.h"
#include "daemon/formats/gguf.h"
#include "daemon/formats/safetensors.h"
#include "daemon/formats/tensorizer.h"
#include "daemon/formats/text_util.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kIndexSuffix = ".index.json";

absl::Status Invalid(absl::string_view path, absl::string_view where,
                     absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": ", where, ": ", what));
}

// Builds a JSON document like nlohmann's own DOM parser, except that a
// duplicate key is an error instead of silently replacing the first value
// (an index listing one tensor twice must not lose one of them). Nesting is
// bounded so that nothing downstream recurses deeply.
class StrictJsonBuilder : public nlohmann::json_sax<Json> {
 public:
  static constexpr size_t kMaxDepth = 64;

  Json& root() { return root_; }
  // Set when the builder, not the syntax, stopped the parse.
  const std::string& error() const { return error_; }
  size_t syntax_error_position() const { return syntax_error_position_; }
  const std::string& syntax_error() const { return syntax_error_; }

  bool null() override {
    Add(Json(nullptr));
    return true;
  }
  bool boolean(bool value) override {
    Add(Json(value));
    return true;
  }
  bool number_integer(number_integer_t value) override {
    Add(Json(value));
    return true;
  }
  bool number_unsigned(number_unsigned_t value) override {
    Add(Json(value));
    return true;
  }
  bool number_float(number_float_t value, const string_t&) override {
    Add(Json(value));
    return true;
  }
  bool string(string_t& value) override {
    Add(Json(std::move(value)));
    return true;
  }
  bool binary(binary_t& value) override {
    Add(Json::binary(std::move(value)));
    return true;
  }

  bool start_object(std::size_t) override { return Open(Json::object()); }
  bool start_array(std::size_t) override { return Open(Json::array()); }
  bool end_object() override { return Close(); }
  bool end_array() override { return Close(); }

  bool key(string_t& key) override {
    if (stack_.back()->contains(key)) {
      error_ = stack_.size() == 1
                   ? absl::StrCat("key ", Quote(key), ": duplicate key")
                   : absl::StrCat("key ", Quote(keys_.back()),
                                  ": duplicate key ", Quote(key));
      return false;
    }
    pending_key_ = std::move(key);
    return true;
  }

  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& error) override {
    syntax_error_position_ = position;
    syntax_error_ = error.what();
    return false;
  }

 private:
  // Places `value` in the innermost open container (or as the root) and
  // returns where it now lives. Containers are entered only through Open,
  // and a parent is not modified while a child is open, so the returned
  // pointers stay valid for as long as they are on the stack.
  Json* Add(Json value) {
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    Json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(value));
      return &parent.back();
    }
    Json& slot = parent[pending_key_];
    slot = std::move(value);
    return &slot;
  }

  bool Open(Json container) {
    if (stack_.size() >= kMaxDepth) {
      error_ = absl::StrCat("nested deeper than ", kMaxDepth, " levels");
      return false;
    }
    const bool in_object = !stack_.empty() && stack_.back()->is_object();
    keys_.push_back(in_object ? pending_key_ : std::string());
    stack_.push_back(Add(std::move(container)));
    return true;
  }

  bool Close() {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }

  Json root_;
  std::vector<Json*> stack_;
  std::vector<std::string> keys_;  // The key of each open container.
  std::string pending_key_;
  std::string error_;
  size_t syntax_error_position_ = 0;
  std::string syntax_error_;
};

// Parses `text`, the contents of the file `path`, rejecting duplicate keys.
absl::StatusOr<Json> ParseJsonStrictly(const std::string& path,
                                       const std::string& text) {
  // The JSON lexer takes a NUL byte for the end of its input, which would
  // hide whatever follows.
  if (size_t nul = text.find('\0'); nul != std::string::npos) {
    return Invalid(path, absl::StrCat("at byte ", nul),
                   "not valid JSON: it contains a NUL byte");
  }
  StrictJsonBuilder builder;
  if (Json::sax_parse(text.begin(), text.end(), &builder)) {
    return std::move(builder.root());
  }
  if (!builder.error().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", builder.error()));
  }
  const std::string shown = JsonErrorDetail(builder.syntax_error());
  // The parser counts characters read, so the offending one is the last.
  const size_t at = std::min(
      text.size(), std::max<size_t>(builder.syntax_error_position(), 1) - 1);
  return Invalid(path, absl::StrCat("at byte ", at),
                 absl::StrCat("not valid JSON: ", shown));
}

// `path` with any trailing slashes removed ("/" stays "/").
std::string StripTrailingSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

// The opener that `options` names, or the plain one.
const FileOpener& OpenerOf(const ParseOptions& options) {
  return options.opener != nullptr ? *options.opener : PlainFileOpener();
}

// Stats `path`, following symbolic links (Hugging Face caches link every
// file to a blob). The path is opened (O_PATH) through the options' opener
// so that a confined opener refuses it before anything about it is learnt.
absl::StatusOr<struct stat> Stat(const std::string& path,
                                 const ParseOptions& options) {
  struct stat st;
  if (options.opener == nullptr) {
    if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, path);
    return st;
  }
  WS_ASSIGN_OR_RETURN(ScopedFd fd, options.opener->Open(path, O_PATH));
  if (::fstat(fd.get(), &st) != 0) return ErrnoToStatus(errno, path);
  return st;
}

// Opens `path`, a local file or (through options.remote) a URL.
absl::StatusOr<std::unique_ptr<ByteSource>> OpenSource(
    const std::string& path, const ParseOptions& options) {
  if (IsRemoteUrl(path)) {
    if (options.remote == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          path,
          ": remote sources are not enabled here (remote_sources in "
          "the config, --remote_source PREFIX)"));
    }
    return options.remote->OpenUrl(path);
  }
  WS_ASSIGN_OR_RETURN(std::unique_ptr<FileByteSource> source,
                      FileByteSource::Open(path, OpenerOf(options)));
  return std::unique_ptr<ByteSource>(std::move(source));
}

absl::StatusOr<FileManifest> OpenFile(const std::string& path,
                                      const ParseOptions& options) {
  WS_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                      OpenSource(path, options));
  WS_ASSIGN_OR_RETURN(FileManifest file, ParseFile(*source, options));
  file.version = source->version();
  return file;
}

// Tensor names must be unique across the checkpoint: the registry and the
// clients look tensors up by name alone.
absl::Status CheckUniqueNames(const Manifest& manifest) {
  std::unordered_map<std::string, const FileManifest*> owner;
  for (const FileManifest& file : manifest.files) {
    for (const TensorEntry& tensor : file.tensors) {
      auto [it, inserted] = owner.emplace(tensor.name, &file);
      if (inserted) continue;
      return Invalid(
          file.path, absl::StrCat("tensor ", Quote(tensor.name)),
          it->second == &file
              ? std::string("duplicate name within the file")
              : absl::StrCat("duplicate name; also in ", it->second->path));
    }
  }
  return absl::OkStatus();
}

// A shard named by an index must be a file in the index's own directory, so
// that an index cannot point the daemon at arbitrary files.
bool IsPlainFileName(absl::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == absl::string_view::npos &&
         name.find('\0') == absl::string_view::npos;
}

absl::StatusOr<Manifest> OpenIndex(const std::string& index_path,
                                   const ParseOptions& options) {
  WS_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                      OpenSource(index_path, options));
  if (source->size() > kMaxIndexFileBytes) {
    return Invalid(
        index_path, "at byte 0",
        absl::StrCat("index file is ", source->size(),
                     " bytes, more than the limit of ", kMaxIndexFileBytes));
  }
  std::string text(source->size(), '\0');
  WS_RETURN_IF_ERROR(source->ReadAt(0, text.size(), text.data()));
  WS_ASSIGN_OR_RETURN(Json index, ParseJsonStrictly(index_path, text));

  if (!index.is_object()) {
    return Invalid(index_path, "at byte 0",
                   absl::StrCat("an index must be a JSON object, found ",
                                index.type_name()));
  }
  if (auto metadata = index.find("metadata");
      metadata != index.end() && !metadata->is_object()) {
    return Invalid(
        index_path, "key \"metadata\"",
        absl::StrCat("must be an object, found ", metadata->type_name()));
  }
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end()) {
    return Invalid(index_path, "key \"weight_map\"", "missing");
  }
  if (!weight_map->is_object()) {
    return Invalid(index_path, "key \"weight_map\"",
                   absl::StrCat("must be an object mapping tensor names to "
                                "shard files, found ",
                                weight_map->type_name()));
  }
  if (weight_map->empty()) {
    return Invalid(index_path, "key \"weight_map\"", "lists no tensors");
  }

  // Shard file name -> the tensors weight_map places in it. std::map so
  // that shards are parsed in sorted order.
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [tensor, shard] : weight_map->items()) {
    const std::string where =
        absl::StrCat("key \"weight_map\": tensor ", Quote(tensor));
    if (!shard.is_string()) {
      return Invalid(index_path, where,
                     absl::StrCat("shard must be a file name string, found ",
                                  shard.type_name()));
    }
    const std::string& file = shard.get_ref<const std::string&>();
    if (!IsPlainFileName(file)) {
      return Invalid(index_path, where,
                     absl::StrCat("shard ", Quote(file),
                                  " is not a plain file name in the index's "
                                  "directory"));
    }
    shards[file].push_back(tensor);
  }

  const size_t slash = index_path.rfind('/');
  const std::string directory =
      slash == std::string::npos ? "" : index_path.substr(0, slash + 1);
  Manifest manifest;
  for (const auto& [shard, tensors] : shards) {
    absl::StatusOr<FileManifest> file = OpenFile(directory + shard, options);
    if (!file.ok()) {
      if (absl::IsInvalidArgument(file.status())) return file.status();
      // An open error names only the shard's path; say which index wants it.
      return absl::Status(file.status().code(),
                          absl::StrCat(index_path, ": shard ", Quote(shard),
                                       ": ", file.status().message()));
    }
    manifest.files.push_back(*std::move(file));
  }
  WS_RETURN_IF_ERROR(CheckUniqueNames(manifest));

  // Names are unique now, so each tensor is in exactly one shard.
  std::set<absl::string_view> found;
  auto shard_it = shards.begin();
  for (const FileManifest& file : manifest.files) {
    const std::string& shard = shard_it->first;
    ++shard_it;
    for (const TensorEntry& tensor : file.tensors) {
      found.insert(tensor.name);
      const auto listed = weight_map->find(tensor.name);
      if (listed == weight_map->end()) {
        return Invalid(index_path, absl::StrCat("tensor ", Quote(tensor.name)),
                       absl::StrCat("is in shard ", Quote(shard),
                                    " but missing from weight_map"));
      }
      if (listed->get_ref<const std::string&>() != shard) {
        return Invalid(
            index_path, absl::StrCat("tensor ", Quote(tensor.name)),
            absl::StrCat("weight_map places it in shard ",
                         Quote(listed->get_ref<const std::string&>()),
                         ", but it is in shard ", Quote(shard)));
      }
    }
  }
  for (const auto& [shard, tensors] : shards) {
    for (const std::string& tensor : tensors) {
      if (found.count(tensor) == 0) {
        return Invalid(index_path, absl::StrCat("tensor ", Quote(tensor)),
                       absl::StrCat("listed in weight_map for shard ",
                                    Quote(shard), ", but not found in it"));
      }
    }
  }
  return manifest;
}

// What a listing (a directory's or an object-store prefix's) holds: its one
// index, or else every weight file. `where` and `item` word the error
// ("in the directory", "file").
absl::StatusOr<Manifest> OpenListed(const std::string& listing,
                                    const char* where, const char* item,
                                    const std::vector<std::string>& indexes,
                                    const std::vector<std::string>& weights,
                                    const ParseOptions& options) {
  if (indexes.size() == 1) return OpenIndex(indexes[0], options);
  if (weights.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(listing, ": no weight files ", where, ": expected one *",
                     kIndexSuffix, " ", item, ", or ", item,
                     "s ending in .safetensors, .tensors or .gguf (found ",
                     indexes.size(), " index ", item, "s)"));
  }
  Manifest manifest;
  for (const std::string& path : weights) {
    WS_ASSIGN_OR_RETURN(FileManifest file, OpenFile(path, options));
    manifest.files.push_back(std::move(file));
  }
  return manifest;
}

absl::StatusOr<Manifest> OpenDirectory(const std::string& directory,
                                       const ParseOptions& options) {
  // The directory is listed through a descriptor from the opener, so that a
  // confined opener refuses a directory that resolves outside its roots.
  WS_ASSIGN_OR_RETURN(
      ScopedFd fd, OpenerOf(options).Open(directory, O_RDONLY | O_DIRECTORY));
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(fd.get()), &::closedir);
  if (dir == nullptr) return ErrnoToStatus(errno, directory);
  // The DIR stream owns the descriptor now.
  const int dir_fd = fd.release();
  std::vector<std::string> names;
  while (true) {
    errno = 0;
    const struct dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) return ErrnoToStatus(errno, directory);
      break;
    }
    names.emplace_back(entry->d_name);
  }
  std::sort(names.begin(), names.end());

  const std::string prefix =
      directory == "/" ? directory : absl::StrCat(directory, "/");
  std::vector<std::string> indexes;
  std::vector<std::string> weights;
  for (const std::string& name : names) {
    const bool is_index = absl::EndsWith(name, kIndexSuffix);
    const bool is_weights = absl::EndsWith(name, ".safetensors") ||
                            absl::EndsWith(name, ".tensors") ||
                            absl::EndsWith(name, ".gguf");
    if (!is_index && !is_weights) continue;
    // Follows symbolic links, as Stat does; a link that leads outside a
    // confined opener's roots is refused when the file is opened.
    struct stat st;
    if (::fstatat(dir_fd, name.c_str(), &st, 0) != 0) {
      return ErrnoToStatus(errno, prefix + name);
    }
    if (!S_ISREG(st.st_mode)) continue;
    (is_index ? indexes : weights).push_back(prefix + name);
  }
  return OpenListed(directory, "in the directory", "file", indexes, weights,
                    options);
}

// A prefix of an object store ("s3://bucket/dir/"), chosen from as
// OpenDirectory chooses: its one index, or else its weight files.
absl::StatusOr<Manifest> OpenRemotePrefix(const std::string& url,
                                          const ParseOptions& options) {
  if (options.remote == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        url,
        ": remote sources are not enabled here (remote_sources in the "
        "config, --remote_source PREFIX)"));
  }
  WS_ASSIGN_OR_RETURN(std::vector<std::string> objects,
                      options.remote->ListUrl(url));
  std::vector<std::string> indexes;
  std::vector<std::string> weights;
  for (const std::string& object : objects) {
    if (absl::EndsWith(object, kIndexSuffix)) {
      indexes.push_back(object);
    } else if (absl::EndsWith(object, ".safetensors") ||
               absl::EndsWith(object, ".tensors") ||
               absl::EndsWith(object, ".gguf")) {
      weights.push_back(object);
    }
  }
  return OpenListed(url, "beneath the prefix", "object", indexes, weights,
                    options);
}

}  // namespace

absl::StatusOr<Format> DetectFormat(const ByteSource& source) {
  char head[9];
  const uint64_t length = std::min<uint64_t>(source.size(), sizeof(head));
  WS_RETURN_IF_ERROR(source.ReadAt(0, length, head));
  const absl::string_view bytes(head, length);
  if (absl::StartsWith(bytes, "|TZR|")) return Format::kTensorizer;
  // A big-endian GGUF file keeps the magic's byte order; only the numbers
  // after it are swapped.
  if (absl::StartsWith(bytes, "GGUF")) return Format::kGguf;
  if (bytes.size() == 9 && bytes[8] == '{') {
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) {
      header_length =
          (header_length << 8) | static_cast<unsigned char>(bytes[i]);
    }
    // "{}" is the shortest header. The upper bound is far above the
    // format's own limit so that a file with an oversized or truncated
    // header still reaches the parser, which says precisely what is wrong;
    // text that happens to have '{' at byte 8 has a far larger value.
    if (header_length >= 2 && header_length <= UINT32_MAX) {
      return Format::kSafetensors;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source.name(), ": not a safetensors, tensorizer or GGUF file"));
}

absl::StatusOr<FileManifest> ParseFile(const ByteSource& source,
                                       const ParseOptions& options) {
  WS_ASSIGN_OR_RETURN(Format format, DetectFormat(source));
  switch (format) {
    case Format::kSafetensors:
      return ParseSafetensors(source, options);
    case Format::kTensorizer:
      return ParseTensorizer(source, options);
    case Format::kGguf:
      return ParseGguf(source, options);
  }
  return absl::InternalError(absl::StrCat(source.name(), ": unknown format"));
}

absl::StatusOr<Manifest> OpenCheckpoint(const std::string& path,
                                        const ParseOptions& options) {
  const bool remote = IsRemoteUrl(path);
  bool directory;
  if (remote) {
    // An object store has no directories to stat: the name says what it is.
    directory = absl::EndsWith(path, "/");
  } else {
    WS_ASSIGN_OR_RETURN(struct stat st, Stat(path, options));
    directory = S_ISDIR(st.st_mode);
  }
  Manifest manifest;
  if (directory) {
    WS_ASSIGN_OR_RETURN(
        manifest, remote ? OpenRemotePrefix(path, options)
                         : OpenDirectory(StripTrailingSlashes(path), options));
  } else if (absl::EndsWith(path, kIndexSuffix)) {
    WS_ASSIGN_OR_RETURN(manifest, OpenIndex(path, options));
  } else {
    WS_ASSIGN_OR_RETURN(FileManifest file, OpenFile(path, options));
    manifest.files.push_back(std::move(file));
  }
  WS_RETURN_IF_ERROR(CheckUniqueNames(manifest));
  return manifest;
}

}  // namespace warmstart
