#include "daemon/bench/peer_tools.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace warmstart {
namespace {

// The last line of `output` that holds a JSON object: peers.py prints one,
// and libraries it imports may print warnings before it.
absl::StatusOr<nlohmann::json> LastJsonLine(const std::string& output,
                                            const std::string& what) {
  std::vector<absl::string_view> lines = absl::StrSplit(output, '\n');
  for (auto line = lines.rbegin(); line != lines.rend(); ++line) {
    if (line->empty() || line->front() != '{') continue;
    nlohmann::json parsed =
        nlohmann::json::parse(line->begin(), line->end(), nullptr, false);
    if (!parsed.is_discarded() && parsed.is_object()) return parsed;
  }
  return absl::InternalError(absl::StrCat(
      what, ": printed no JSON line; it printed: ",
      output.substr(output.size() > 400 ? output.size() - 400 : 0)));
}

}  // namespace

absl::StatusOr<std::string> RunProgram(const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe2");
  ScopedFd read_end(fds[0]);
  ScopedFd write_end(fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDERR_FILENO);
  std::vector<char*> args;
  for (const std::string& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid;
  const int rc =
      ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot run ", argv[0], ": ", std::strerror(rc)));
  }
  write_end.reset();  // Only the child's copies are left: EOF when it ends.
  std::string output;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(read_end.get(), buffer, sizeof(buffer));
    if (n > 0) {
      output.append(buffer, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return output;
  const std::string how =
      WIFEXITED(status)
          ? absl::StrCat("exited with ", WEXITSTATUS(status))
          : absl::StrCat("was killed by signal ",
                         WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return absl::InternalError(absl::StrCat(
      argv[0], " ", how, "; its output ends: ",
      output.substr(output.size() > 400 ? output.size() - 400 : 0)));
}

absl::StatusOr<PeerTools::Availability> PeerTools::Available() const {
  WS_ASSIGN_OR_RETURN(std::string output,
                      RunProgram({python_, script_, "--available"}));
  WS_ASSIGN_OR_RETURN(nlohmann::json parsed,
                      LastJsonLine(output, script_ + " --available"));
  Availability availability;
  if (parsed.contains("available") && parsed["available"].is_array()) {
    for (const auto& tool : parsed["available"]) {
      if (tool.is_string()) availability.available.push_back(tool);
    }
  }
  if (parsed.contains("missing") && parsed["missing"].is_object()) {
    for (const auto& [tool, why] : parsed["missing"].items()) {
      availability.missing[tool] =
          why.is_string() ? why.get<std::string>() : std::string("missing");
    }
  }
  return availability;
}

absl::StatusOr<double> PeerTools::Measure(const std::string& tool,
                                          const std::string& file,
                                          bool cold) const {
  const std::string mode = cold ? "cold" : "warm";
  WS_ASSIGN_OR_RETURN(std::string output,
                      RunProgram({python_, script_, tool, file, mode}));
  const std::string what = absl::StrCat(script_, " ", tool, " ", mode);
  WS_ASSIGN_OR_RETURN(nlohmann::json parsed, LastJsonLine(output, what));
  if (!parsed.contains("gbps") || !parsed["gbps"].is_number()) {
    return absl::InternalError(
        absl::StrCat(what, ": no \"gbps\" number in ", parsed.dump()));
  }
  if (parsed.contains("verified") && parsed["verified"].is_boolean() &&
      !parsed["verified"].get<bool>()) {
    return absl::DataLossError(
        absl::StrCat(what, ": its bytes did not match ", file));
  }
  return parsed["gbps"].get<double>();
}

}  // namespace warmstart
