// Test helpers that start the project's real binaries as child processes.
//
// Ownership: a ChildProcess owns its child (it kills and reaps it when
// destroyed); RunProcess waits for its child before returning.
// Thread safety: BinaryPath and RunProcess may be called from any thread;
// one ChildProcess is used by one thread at a time.
#ifndef WARMSTART_TESTS_DOUBLES_SUBPROCESS_H_
#define WARMSTART_TESTS_DOUBLES_SUBPROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace warmstart {
namespace testing {

// The path of a binary built by this workspace (e.g. "daemon/warmstartd"),
// found in the test's runfiles.
std::string BinaryPath(const std::string& workspace_relative);

struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal.
  std::string out;     // stdout.
  std::string err;     // stderr.
};

// Runs `argv` to completion and captures its output.
RunResult RunProcess(const std::vector<std::string>& argv);

// A child process, started with stdout and stderr going to files under
// `log_dir`. The destructor kills it (SIGKILL) if it is still running.
// Move-only.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv,
               const std::string& log_dir);
  ~ChildProcess();
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ChildProcess& operator=(ChildProcess&&) = delete;

  pid_t pid() const { return pid_; }
  // Stop() when the child did not exit in time (it is killed and reaped
  // by the destructor).
  static constexpr int kStillRunning = -2;
  // Sends `signal_number` and waits up to `timeout_ms`; returns the exit
  // code, -1 when it died of a signal, or kStillRunning.
  int Stop(int signal_number, int timeout_ms);
  // Everything the child wrote to stderr so far.
  std::string Stderr() const;

 private:
  pid_t pid_ = -1;
  std::string stderr_path_;
};

}  // namespace testing
}  // namespace warmstart

#endif  // WARMSTART_TESTS_DOUBLES_SUBPROCESS_H_
