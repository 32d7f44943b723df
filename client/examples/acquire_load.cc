// acquire_load: a load test of the daemon's acquire path (a benchmark
// program, not a test). N client processes, each with its own Client and
// session, acquire and release a model in a loop for a while; the program
// prints cycles per second and acquire latency (p50, p99, max) over all of
// them, and the daemon's open descriptors, leases and resident memory
// before and after (read from /proc/<daemon pid>: run it as the daemon's
// user or root).
//
// usage: acquire_load --socket PATH --model NAME [--clients N]
//                     [--seconds S] [--json]
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

struct DaemonFigures {
  int fds = -1;
  int64_t rss_kib = -1;
  uint32_t leases = 0;
  uint32_t sessions = 0;
};

DaemonFigures Measure(client::Client& client, pid_t daemon) {
  DaemonFigures figures;
  std::error_code error;
  int fds = 0;
  for (auto it = std::filesystem::directory_iterator(
           absl::StrCat("/proc/", daemon, "/fd"), error);
       !error && it != std::filesystem::directory_iterator();
       it.increment(error)) {
    ++fds;
  }
  if (!error) figures.fds = fds;
  std::ifstream status(absl::StrCat("/proc/", daemon, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      figures.rss_kib = std::strtoll(line.c_str() + 6, nullptr, 10);
    }
  }
  absl::StatusOr<v1::Stats> stats = client.Stats();
  if (stats.ok()) {
    figures.leases = stats->leases();
    figures.sessions = stats->sessions();
  }
  return figures;
}

nlohmann::json Json(const DaemonFigures& f) {
  return {{"fds", f.fds},
          {"rss_kib", f.rss_kib},
          {"leases", f.leases},
          {"sessions", f.sessions}};
}

// One client process: waits for `go` to close, cycles for `seconds`, then
// writes its error count and latencies (microseconds, raw int64) to `out`.
int RunClient(const std::string& socket, const std::string& model, int seconds,
              int go, int out) {
  char byte;
  (void)!::read(go, &byte, 1);
  const absl::Time until = absl::Now() + absl::Seconds(seconds);
  client::ConnectOptions options;
  options.socket_path = socket;
  options.timeout = absl::Seconds(30);
  auto connected = client::Client::Connect(options);
  std::vector<int64_t> latencies;
  int64_t errors = 0;
  if (connected.ok()) {
    while (absl::Now() < until) {
      const absl::Time start = absl::Now();
      auto mapping = (*connected)->Acquire(model, absl::Seconds(30));
      if (!mapping.ok()) {
        ++errors;
        continue;
      }
      latencies.push_back(absl::ToInt64Microseconds(absl::Now() - start));
      if (!mapping->Release().ok()) ++errors;
    }
  } else {
    errors = 1;
  }
  const int64_t count = static_cast<int64_t>(latencies.size());
  (void)!::write(out, &errors, sizeof(errors));
  (void)!::write(out, &count, sizeof(count));
  (void)!::write(out, latencies.data(), latencies.size() * sizeof(int64_t));
  return 0;
}

bool ReadAll(int fd, void* data, size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::read(fd, p, bytes);
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

int Run(int argc, char** argv) {
  std::string socket, model;
  int clients = 16, seconds = 60;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--socket") {
      socket = value();
    } else if (arg == "--model") {
      model = value();
    } else if (arg == "--clients") {
      if (!absl::SimpleAtoi(value(), &clients) || clients < 1) return 1;
    } else if (arg == "--seconds") {
      if (!absl::SimpleAtoi(value(), &seconds) || seconds < 1) return 1;
    } else if (arg == "--json") {
      json = true;
    } else {
      std::fprintf(stderr,
                   "usage: acquire_load --socket PATH --model NAME "
                   "[--clients N] [--seconds S] [--json]\n");
      return 1;
    }
  }
  if (socket.empty() || model.empty()) return 1;
  // The clients are forked before this process touches gRPC, which does
  // not survive a fork; they start when `go` closes.
  int go[2];
  if (::pipe(go) != 0) return 2;
  std::vector<std::pair<pid_t, int>> children;
  for (int c = 0; c < clients; ++c) {
    int pipe_fds[2];
    if (::pipe(pipe_fds) != 0) return 2;
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(pipe_fds[0]);
      ::close(go[1]);
      ::_exit(RunClient(socket, model, seconds, go[0], pipe_fds[1]));
    }
    ::close(pipe_fds[1]);
    children.emplace_back(pid, pipe_fds[0]);
  }
  ::close(go[0]);
  client::ConnectOptions options;
  options.socket_path = socket;
  auto observer = client::Client::Connect(options);
  if (!observer.ok()) {
    std::fprintf(stderr, "acquire_load: %s\n",
                 std::string(observer.status().message()).c_str());
    return 3;
  }
  const pid_t daemon = static_cast<pid_t>((*observer)->server_info().pid());
  const DaemonFigures before = Measure(**observer, daemon);

  ::close(go[1]);  // Go.
  std::vector<int64_t> latencies;
  int64_t errors = 0;
  for (auto& [pid, fd] : children) {
    int64_t child_errors = 0, count = 0;
    if (ReadAll(fd, &child_errors, sizeof(child_errors)) &&
        ReadAll(fd, &count, sizeof(count))) {
      std::vector<int64_t> mine(static_cast<size_t>(count));
      if (ReadAll(fd, mine.data(), mine.size() * sizeof(int64_t))) {
        latencies.insert(latencies.end(), mine.begin(), mine.end());
      }
      errors += child_errors;
    } else {
      ++errors;
    }
    ::close(fd);
    ::waitpid(pid, nullptr, 0);
  }
  const DaemonFigures after = Measure(**observer, daemon);
  std::sort(latencies.begin(), latencies.end());
  auto percentile = [&](double p) -> double {
    if (latencies.empty()) return 0;
    const size_t index = std::min(latencies.size() - 1,
                                  static_cast<size_t>(p * latencies.size()));
    return latencies[index] / 1000.0;
  };
  const double rate = static_cast<double>(latencies.size()) / seconds;
  if (json) {
    nlohmann::json out = {{"clients", clients},
                          {"seconds", seconds},
                          {"cycles", latencies.size()},
                          {"cycles_per_second", rate},
                          {"acquire_ms_p50", percentile(0.50)},
                          {"acquire_ms_p99", percentile(0.99)},
                          {"acquire_ms_max", percentile(1.0)},
                          {"errors", errors},
                          {"daemon_before", Json(before)},
                          {"daemon_after", Json(after)}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf(
        "%d clients, %d s: %zu cycles, %.0f cycles/s; acquire p50 %.2f ms, "
        "p99 %.2f ms, max %.2f ms; %lld errors\n",
        clients, seconds, latencies.size(), rate, percentile(0.50),
        percentile(0.99), percentile(1.0), static_cast<long long>(errors));
    std::printf(
        "daemon before: %d fds, %lld KiB RSS, %u leases, %u sessions\n"
        "daemon after:  %d fds, %lld KiB RSS, %u leases, %u sessions\n",
        before.fds, static_cast<long long>(before.rss_kib), before.leases,
        before.sessions, after.fds, static_cast<long long>(after.rss_kib),
        after.leases, after.sessions);
  }
  return errors == 0 ? 0 : 2;
}

}  // namespace
}  // namespace warmstart

int main(int argc, char** argv) { return warmstart::Run(argc, argv); }
