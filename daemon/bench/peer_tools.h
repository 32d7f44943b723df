// PeerTools: the other loaders `warmstartctl bench` holds the daemon to
// (fio, Run:ai's streamer, safetensors), measured by running
// daemon/bench/peers.py with a Python that has them installed.
//
// Ownership: plain value. Thread safety: const methods may run on several
// threads; each runs a child process and waits for it.
#ifndef WARMSTART_DAEMON_BENCH_PEER_TOOLS_H_
#define WARMSTART_DAEMON_BENCH_PEER_TOOLS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace warmstart {

// Runs `argv` (argv[0] looked up on PATH) and returns what it wrote to
// stdout and stderr together. Errors: Internal naming the program, its exit
// status or signal and the end of its output when it does not exit 0;
// NotFound when it cannot be started.
absl::StatusOr<std::string> RunProgram(const std::vector<std::string>& argv);

class PeerTools {
 public:
  struct Availability {
    std::vector<std::string> available;          // peers.py's order.
    std::map<std::string, std::string> missing;  // tool -> why.
  };

  // `python` runs `script` (peers.py).
  PeerTools(std::string python, std::string script)
      : python_(std::move(python)), script_(std::move(script)) {}

  // Which tools can run here (peers.py --available).
  absl::StatusOr<Availability> Available() const;

  // One load of `file` (a safetensors file) by `tool`, cold (its pages
  // evicted first) or warm; returns GB/s. Errors: the run's, or DataLoss
  // when the tool's bytes did not match the file.
  absl::StatusOr<double> Measure(const std::string& tool,
                                 const std::string& file, bool cold) const;

 private:
  std::string python_;
  std::string script_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BENCH_PEER_TOOLS_H_
