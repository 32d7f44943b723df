// Serves a FakeDaemon in the directory given as the only argument until
// killed, with one model: PatternModel("tiny", 10000). Writes "ready" on
// stderr once it serves. For tests of what a client sees when the daemon
// dies without a goodbye (SIGKILL), which an in-process fake cannot show.
#include <unistd.h>

#include <cstdio>

#include "tests/doubles/fake_daemon.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fake_daemon_main DIR\n");
    return 1;
  }
  warmstart::testing::FakeDaemon fake(argv[1]);
  fake.AddModel(warmstart::testing::PatternModel("tiny", 10000));
  absl::Status started = fake.Start();
  if (!started.ok()) {
    std::fprintf(stderr, "%s\n", started.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "ready\n");
  std::fflush(stderr);
  for (;;) ::pause();
}
