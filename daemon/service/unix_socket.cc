#include "daemon/service/unix_socket.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"

namespace warmstart {

absl::Status PrepareSocketPath(const std::string& path) {
  sockaddr_un address{};
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "socket path \"", path, "\": must be 1 to ",
        sizeof(address.sun_path) - 1, " bytes long (it is ", path.size(), ")"));
  }
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    const std::string parent = path.substr(0, slash);
    if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoToStatus(errno, absl::StrCat("create directory ", parent));
    }
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoToStatus(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": exists and is not a socket; refusing to replace it"));
  }
  // gRPC would unlink the path and bind over a running daemon: probe first.
  ScopedFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return ErrnoToStatus(errno, "socket");
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address),
                sizeof(address)) == 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        path, ": another server is listening there (is warmstartd running?)"));
  }
  if (errno != ECONNREFUSED) {
    return ErrnoToStatus(errno, absl::StrCat("probe ", path));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, absl::StrCat("remove stale socket ", path));
  }
  return absl::OkStatus();
}

absl::Status ApplySocketPermissions(const std::string& path, uint32_t mode,
                                    const std::string& owner,
                                    const std::string& group) {
  uid_t uid = static_cast<uid_t>(-1);  // -1 leaves it as it is.
  gid_t gid = static_cast<gid_t>(-1);
  if (!owner.empty()) {
    struct passwd* entry = ::getpwnam(owner.c_str());
    if (entry != nullptr) {
      uid = entry->pw_uid;
    } else if (!absl::SimpleAtoi(owner, &uid)) {
      return absl::NotFoundError(
          absl::StrCat("socket owner \"", owner, "\": no such user"));
    }
  }
  if (!group.empty()) {
    struct group* entry = ::getgrnam(group.c_str());
    if (entry != nullptr) {
      gid = entry->gr_gid;
    } else if (!absl::SimpleAtoi(group, &gid)) {
      return absl::NotFoundError(
          absl::StrCat("socket group \"", group, "\": no such group"));
    }
  }
  if ((!owner.empty() || !group.empty()) &&
      ::chown(path.c_str(), uid, gid) != 0) {
    return ErrnoToStatus(errno,
                         absl::StrCat("chown ", owner, ":", group, " ", path));
  }
  if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
    return ErrnoToStatus(errno, absl::StrFormat("chmod %#o %s", mode, path));
  }
  return absl::OkStatus();
}

absl::StatusOr<ScopedFd> ListenUnixSocket(const std::string& path, int type,
                                          int backlog, const char* what) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", path, " is ", path.size(),
        " bytes; a unix socket path must be under ", sizeof(address.sun_path)));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  // Non-blocking: a connection that poll reported but that went away
  // before accept must not block the accepting thread.
  ScopedFd listener(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener.valid()) return ErrnoToStatus(errno, what);
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address),
             sizeof(address)) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("bind ", path));
  }
  if (::listen(listener.get(), backlog) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("listen ", path));
  }
  return listener;
}

}  // namespace warmstart
