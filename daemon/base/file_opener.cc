#include "daemon/base/file_opener.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/errno_status.h"

// Older C libraries lack the number; it is the same on every architecture.
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

namespace warmstart {
namespace {

// openat2 answers EAGAIN when a concurrent rename or mount keeps it from
// proving that ".." stayed beneath the root; the call may be retried.
constexpr int kMaxRaceRetries = 16;

absl::Status OpenError(int error_number, const std::string& path) {
  return ErrnoToStatus(error_number, absl::StrCat("open ", path));
}

// Whether an open with `flags` must yield a regular file: everything but
// O_PATH (which opens nothing) and O_DIRECTORY (which the kernel checks).
bool WantsRegularFile(int flags) {
  return (flags & (O_PATH | O_DIRECTORY)) == 0;
}

// The flags actually passed to the kernel. Opening a FIFO for reading
// blocks until a writer appears (forever, for a FIFO nobody writes), and
// some character devices block in open too; O_NONBLOCK makes both return at
// once, so the type can be checked on the descriptor without a race.
int KernelFlags(int flags) {
  return flags | O_CLOEXEC | (WantsRegularFile(flags) ? O_NONBLOCK : 0);
}

const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "of an unknown type";
}

// Checks that `fd`, just opened from `path` with the caller's `flags`, is a
// regular file when one is wanted, and takes back the O_NONBLOCK that
// KernelFlags added (it means nothing for reads of a regular file, but a
// caller that did not ask for it should not find it on its descriptor).
absl::StatusOr<ScopedFd> CheckOpened(ScopedFd fd, const std::string& path,
                                     int flags) {
  if (!WantsRegularFile(flags)) return fd;
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("fstat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not a regular file (", FileTypeName(st.st_mode), ")"));
  }
  if ((flags & O_NONBLOCK) == 0) {
    const int current = ::fcntl(fd.get(), F_GETFL);
    if (current < 0 || ::fcntl(fd.get(), F_SETFL, current & ~O_NONBLOCK) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("fcntl ", path));
    }
  }
  return fd;
}

class PlainOpener : public FileOpener {
 public:
  absl::StatusOr<ScopedFd> Open(const std::string& path,
                                int flags) const override {
    int fd;
    do {
      fd = ::open(path.c_str(), KernelFlags(flags));
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return OpenError(errno, path);
    return CheckOpened(ScopedFd(fd), path, flags);
  }
};

// `root` with repeated and trailing slashes removed, or InvalidArgument when
// it is not absolute or has "." or ".." components.
absl::StatusOr<std::string> NormaliseRoot(const std::string& root) {
  if (root.empty() || root[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "model root \"", root, "\": not an absolute directory path"));
  }
  std::vector<absl::string_view> parts =
      absl::StrSplit(root, '/', absl::SkipEmpty());
  for (absl::string_view part : parts) {
    if (part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("model root \"", root,
                       "\": \".\" and \"..\" components are not allowed"));
    }
  }
  return absl::StrCat("/", absl::StrJoin(parts, "/"));
}

// Whether `root` (normalised) is `path` or a leading run of its components.
bool IsPrefixAtComponent(const std::string& root, const std::string& path) {
  if (root == "/") return true;
  if (path.compare(0, root.size(), root) != 0) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

}  // namespace

FileOpener::~FileOpener() = default;

const FileOpener& PlainFileOpener() {
  static const PlainOpener* const opener = new PlainOpener();
  return *opener;
}

absl::StatusOr<std::unique_ptr<BeneathRootsOpener>> BeneathRootsOpener::Create(
    std::vector<std::string> roots) {
  if (roots.empty()) {
    return absl::InvalidArgumentError("no model roots given");
  }
  std::vector<Root> opened;
  opened.reserve(roots.size());
  for (std::string& given : roots) {
    absl::StatusOr<std::string> path = NormaliseRoot(given);
    if (!path.ok()) return path.status();
    int fd;
    do {
      fd = ::open(path->c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      return ErrnoToStatus(errno, absl::StrCat("model root ", *path));
    }
    opened.push_back(Root{*std::move(path), ScopedFd(fd)});
  }
  return std::unique_ptr<BeneathRootsOpener>(
      new BeneathRootsOpener(std::move(opened)));
}

const BeneathRootsOpener::Root* BeneathRootsOpener::FindRoot(
    const std::string& path) const {
  const Root* best = nullptr;
  for (const Root& root : roots_) {
    if (!IsPrefixAtComponent(root.path, path)) continue;
    if (best == nullptr || root.path.size() > best->path.size()) best = &root;
  }
  return best;
}

absl::StatusOr<ScopedFd> BeneathRootsOpener::Open(const std::string& path,
                                                  int flags) const {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        ": not an absolute path (model files are checked against the "
        "allowed model roots by absolute path)"));
  }
  const Root* root = FindRoot(path);
  if (root == nullptr) {
    std::vector<absl::string_view> names;
    names.reserve(roots_.size());
    for (const Root& r : roots_) names.push_back(r.path);
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": not beneath an allowed model root (",
                     absl::StrJoin(names, ", "), ")"));
  }
  // What follows the root, without leading slashes: an absolute name would
  // be refused by RESOLVE_BENEATH.
  size_t start = root->path == "/" ? 0 : root->path.size();
  while (start < path.size() && path[start] == '/') ++start;
  const std::string relative =
      start == path.size() ? std::string(".") : path.substr(start);

  struct open_how how = {};
  how.flags =
      static_cast<uint64_t>(static_cast<unsigned int>(KernelFlags(flags)));
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  long fd;  // NOLINT(runtime/int): syscall() returns long.
  int race_retries = 0;
  while (true) {
    fd = ::syscall(SYS_openat2, root->fd.get(), relative.c_str(), &how,
                   sizeof(how));
    if (fd >= 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN && ++race_retries <= kMaxRaceRetries) continue;
    break;
  }
  if (fd >= 0) return CheckOpened(ScopedFd(static_cast<int>(fd)), path, flags);
  switch (errno) {
    case EXDEV:
    case ELOOP:
      return absl::PermissionDeniedError(
          absl::StrCat(path, ": resolves outside the model root ", root->path));
    case ENOSYS:
      return absl::FailedPreconditionError(absl::StrCat(
          path,
          ": opening model files beneath their root needs the openat2 system "
          "call (Linux 5.6 or later), which this kernel does not provide"));
    default:
      return OpenError(errno, path);
  }
}

}  // namespace warmstart
