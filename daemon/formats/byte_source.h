// ByteSource: random-access reads of a checkpoint file, for header parsing.
//
// Parsers read headers through this interface so the same code runs on a real
// file (FileByteSource), on bytes in memory (fuzzing, malformed-input tests)
// and on fault-injecting fakes.
//
// Thread safety: implementations here are safe for concurrent ReadAt calls.
#ifndef WARMSTART_DAEMON_FORMATS_BYTE_SOURCE_H_
#define WARMSTART_DAEMON_FORMATS_BYTE_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/scoped_fd.h"
#include "daemon/base/file_opener.h"

namespace warmstart {

class ByteSource {
 public:
  virtual ~ByteSource() = default;

  // The name used in error messages (normally the file's path).
  virtual const std::string& name() const = 0;
  // Total size in bytes, fixed when the source was opened.
  virtual uint64_t size() const = 0;
  // Reads exactly `length` bytes at `offset` into `out`. Returns OutOfRange,
  // naming the file and offset, when the range passes the end.
  // REQUIRES: `out` has room for `length` bytes.
  virtual absl::Status ReadAt(uint64_t offset, uint64_t length,
                              char* out) const = 0;
  // What identifies this version of a remote object (its HTTP ETag); empty
  // for local files and objects without one.
  virtual std::string version() const { return std::string(); }
};

// Opens sources named by URL (http://, https://, s3://); implemented by
// daemon/remote. Thread safety: OpenUrl may be called from many threads.
class UrlSourceOpener {
 public:
  virtual ~UrlSourceOpener() = default;
  // Opens `url`, reading only what identifies the object (size, version).
  // Errors name the URL and never hold credentials.
  virtual absl::StatusOr<std::unique_ptr<ByteSource>> OpenUrl(
      const std::string& url) const = 0;
  // The URLs of the objects directly beneath `url`, a prefix ending in '/'
  // ("s3://bucket/dir/"), sorted. Errors name the URL; a source that cannot
  // list (HTTP) answers InvalidArgument saying so.
  virtual absl::StatusOr<std::vector<std::string>> ListUrl(
      const std::string& url) const = 0;
};

// Whether `path` names a remote source: it starts with "http://",
// "https://" or "s3://".
bool IsRemoteUrl(absl::string_view path);

// Reads a regular file with pread. Owns the descriptor.
class FileByteSource : public ByteSource {
 public:
  // Opens `path` read-only through `opener` (which the source does not
  // keep); fails on directories and non-regular files with InvalidArgument,
  // and with the opener's error when it refuses or cannot open the path.
  static absl::StatusOr<std::unique_ptr<FileByteSource>> Open(
      const std::string& path, const FileOpener& opener = PlainFileOpener());

  const std::string& name() const override { return path_; }
  uint64_t size() const override { return size_; }
  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      char* out) const override;
  int fd() const { return fd_.get(); }

 private:
  FileByteSource(std::string path, ScopedFd fd, uint64_t size)
      : path_(std::move(path)), fd_(std::move(fd)), size_(size) {}

  std::string path_;
  ScopedFd fd_;
  uint64_t size_;
};

// Reads from bytes in memory. Does not own them: `data` must outlive it.
class MemoryByteSource : public ByteSource {
 public:
  MemoryByteSource(std::string name, absl::string_view data)
      : name_(std::move(name)), data_(data) {}

  const std::string& name() const override { return name_; }
  uint64_t size() const override { return data_.size(); }
  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      char* out) const override;

 private:
  std::string name_;
  absl::string_view data_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_BYTE_SOURCE_H_
