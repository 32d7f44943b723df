// map_model: a worker in miniature. Maps a model through the C++ client
// library and reports on stdout, one JSON object per line, the sha256 of
// every tensor in host memory as it sees them (GPU tensors are named, not
// hashed); the demo and the integration tests use it to check the bytes a
// worker gets.
//
// usage: map_model --socket PATH --model NAME [--load PATH] [--hold]
//                     [--cycles N] [--try-write]
//   --load PATH   load the model first (joining a load in progress)
//   --cycles N    acquire and release N times, then report and exit
//   --hold        after acquiring, keep the lease: SIGUSR1 hashes the
//                 tensors again, SIGUSR2 releases the lease, SIGTERM exits
//   --try-write   try to write through the mapping's memory (must fault)
//
// Events: {"event":"acquired","lease":ID,"sha256":{NAME:HEX,...}},
// {"event":"rehashed",...}, {"event":"released"},
// {"event":"cycles","n":N,"fds_before":F,"fds_after":F},
// {"event":"error","code":C,"message":M} (exit 2).
#include <openssl/sha.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

void Emit(const nlohmann::json& event) {
  std::printf("%s\n", event.dump().c_str());
  std::fflush(stdout);
}

int Fail(const absl::Status& status) {
  Emit({{"event", "error"},
        {"code", absl::StatusCodeToString(status.code())},
        {"message", std::string(status.message())}});
  return 2;
}

nlohmann::json Hashes(const client::ModelMapping& mapping) {
  nlohmann::json hashes = nlohmann::json::object();
  for (const client::TensorView& tensor : mapping.tensors()) {
    if (tensor.device_uuid != "host") {
      // A device pointer: reading it from the CPU would fault on a real
      // GPU. This example hashes host memory only.
      hashes[tensor.name] = "on " + tensor.device_uuid;
      continue;
    }
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(static_cast<const unsigned char*>(tensor.data), tensor.nbytes,
           digest);
    hashes[tensor.name] = absl::BytesToHexString(absl::string_view(
        reinterpret_cast<const char*>(digest), sizeof(digest)));
  }
  return hashes;
}

int OpenFds() {
  int count = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++count;
  }
  return count;
}

int Run(int argc, char** argv) {
  std::string socket, model, load;
  bool hold = false, try_write = false;
  int cycles = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--socket") {
      socket = value();
    } else if (arg == "--model") {
      model = value();
    } else if (arg == "--load") {
      load = value();
    } else if (arg == "--hold") {
      hold = true;
    } else if (arg == "--try-write") {
      try_write = true;
    } else if (arg == "--cycles") {
      if (!absl::SimpleAtoi(value(), &cycles)) return 1;
    } else {
      std::fprintf(stderr, "map_model: unknown argument %s\n", arg.c_str());
      return 1;
    }
  }
  // Taken by sigwait only.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGUSR1);
  sigaddset(&signals, SIGUSR2);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  client::ConnectOptions options;
  options.socket_path = socket;
  options.timeout = absl::Seconds(30);
  auto connected = client::Client::Connect(options);
  if (!connected.ok()) return Fail(connected.status());
  client::Client& client = **connected;
  if (!load.empty()) {
    auto loaded = client.Load(model, load, {}, absl::Seconds(120));
    if (!loaded.ok()) return Fail(loaded.status());
  }
  if (cycles > 0) {
    // The first acquire opens the session (its socket stays open).
    {
      auto first = client.Acquire(model, absl::Seconds(30));
      if (!first.ok()) return Fail(first.status());
    }
    const int fds_before = OpenFds();
    for (int i = 0; i < cycles; ++i) {
      auto mapping = client.Acquire(model, absl::Seconds(30));
      if (!mapping.ok()) return Fail(mapping.status());
      absl::Status released = mapping->Release();
      if (!released.ok()) return Fail(released);
    }
    Emit({{"event", "cycles"},
          {"n", cycles},
          {"fds_before", fds_before},
          {"fds_after", OpenFds()}});
    return 0;
  }
  auto mapping = client.Acquire(model, absl::Seconds(60));
  if (!mapping.ok()) return Fail(mapping.status());
  Emit({{"event", "acquired"},
        {"lease", mapping->lease_id()},
        {"sha256", Hashes(*mapping)}});
  if (try_write) {
    // Expected to die of SIGSEGV: the mapping is read-only.
    for (const client::TensorView& tensor : mapping->tensors()) {
      if (tensor.nbytes == 0) continue;
      Emit({{"event", "writing"}, {"tensor", tensor.name}});
      *const_cast<volatile char*>(static_cast<const char*>(tensor.data)) = 1;
      Emit({{"event", "wrote"}});
      return 0;
    }
  }
  if (!hold) return mapping->Release().ok() ? 0 : 2;
  while (true) {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    if (signal_number == SIGUSR1) {
      Emit({{"event", "rehashed"}, {"sha256", Hashes(*mapping)}});
    } else if (signal_number == SIGUSR2) {
      absl::Status released = mapping->Release();
      Emit({{"event", "released"},
            {"status", released.ok() ? "ok" : released.ToString()}});
    } else {
      return 0;
    }
  }
}

}  // namespace
}  // namespace warmstart

int main(int argc, char** argv) { return warmstart::Run(argc, argv); }
