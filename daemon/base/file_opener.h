// FileOpener: the one way model data is opened, so that a deployment can
// confine every open to its allowed model roots.
//
// PlainFileOpener() opens paths as given. A BeneathRootsOpener resolves each
// path beneath the root directory it names with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_MAGICLINKS): neither "..", nor a symbolic link, nor a
// /proc magic link can lead an open outside that root.
//
// Thread safety: Open is const and safe to call from many threads at once on
// both implementations.
#ifndef WARMSTART_DAEMON_BASE_FILE_OPENER_H_
#define WARMSTART_DAEMON_BASE_FILE_OPENER_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/scoped_fd.h"

namespace warmstart {

class FileOpener {
 public:
  virtual ~FileOpener();

  // Opens the absolute `path` with the open(2) `flags` (O_CLOEXEC is always
  // added; flags that create files are not for model data). The caller owns
  // the returned descriptor.
  //
  // Unless `flags` has O_PATH or O_DIRECTORY, only a regular file opens:
  // the open itself is made with O_NONBLOCK, so that a FIFO or a device
  // under a model root can never block the calling thread, the result is
  // checked with fstat, and O_NONBLOCK is cleared again (unless asked for).
  // Errors: the errno status naming the path ("open <path>: ...");
  // InvalidArgument "<path>: not a regular file (a FIFO)" (or a character
  // device, a socket, ...) for anything else than a regular file; and what
  // each implementation adds below.
  virtual absl::StatusOr<ScopedFd> Open(const std::string& path,
                                        int flags) const = 0;
};

// Opens paths with plain open(2), following symbolic links anywhere. The
// object lives for the whole process.
const FileOpener& PlainFileOpener();

// Opens only paths beneath a set of root directories, each kept open from
// creation. Move-only: owns the roots' descriptors.
class BeneathRootsOpener : public FileOpener {
 public:
  // Opens each of `roots` (absolute directory paths; trailing slashes are
  // ignored; "." and ".." components are not accepted) with O_PATH |
  // O_DIRECTORY. A root that is later renamed or replaced keeps referring to
  // the directory opened here.
  // Errors: InvalidArgument for an empty list or a root that is not an
  // absolute path without "." or ".." components; the errno status of a root
  // that cannot be opened (NotFound, or InvalidArgument for ENOTDIR).
  static absl::StatusOr<std::unique_ptr<BeneathRootsOpener>> Create(
      std::vector<std::string> roots);

  // Opens `path` relative to the root that is its longest lexical prefix
  // ending at a component boundary (the root itself opens as "."); what
  // follows the root is resolved by the kernel beneath it.
  // Errors:
  //  - InvalidArgument when `path` is not absolute;
  //  - PermissionDenied "<path>: not beneath an allowed model root (<roots>)"
  //    when no root is a prefix of `path` (compared as written: "/a/./root"
  //    or "/a//root" is not beneath the root "/a/root");
  //  - PermissionDenied "<path>: resolves outside the model root <root>" when
  //    ".." or a symbolic link leads outside the root, or a magic link is
  //    met (openat2 answered EXDEV or ELOOP; a symbolic link loop reads the
  //    same). RESOLVE_BENEATH refuses every absolute symbolic link, even one
  //    whose target lies beneath the root: links inside a model root must be
  //    relative (as Hugging Face's cache writes them);
  //  - FailedPrecondition when the kernel lacks openat2 (before Linux 5.6):
  //    there is no unconfined fallback;
  //  - otherwise the errno status, "open <path>: ...".
  absl::StatusOr<ScopedFd> Open(const std::string& path,
                                int flags) const override;

 private:
  struct Root {
    std::string path;
    ScopedFd fd;  // O_PATH | O_DIRECTORY.
  };

  explicit BeneathRootsOpener(std::vector<Root> roots)
      : roots_(std::move(roots)) {}

  // The root whose path is the longest component-wise prefix of `path`, or
  // null.
  const Root* FindRoot(const std::string& path) const;

  std::vector<Root> roots_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BASE_FILE_OPENER_H_
