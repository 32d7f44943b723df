// Self-connection probes of the daemon's listeners.
//
// A listener can stop taking new connections while everything already
// connected keeps working: its socket file removed (by a tmp cleaner, an
// operator, a second daemon's failed start), its accept loop gone, its
// descriptors exhausted. Health then said SERVING while every new client
// was told "daemon unavailable". The server probes each listener the way a
// new client reaches it: a fresh connection (never a shared one) and a
// GetServerInfo call over it.
//
// Plain functions; thread-safe (each call uses its own channel).
#ifndef WARMSTART_DAEMON_SERVER_LISTENER_PROBE_H_
#define WARMSTART_DAEMON_SERVER_LISTENER_PROBE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace warmstart {

struct ProbeResult {
  // The connect found no listener (no file at the path, or nothing
  // listening on it: ENOENT, ECONNREFUSED), which re-arming can mend. False
  // when it failed otherwise (the daemon out of descriptors, gRPC not
  // answering in time): re-arming would not help.
  bool listener_gone = false;
  absl::Status status;  // OK once a GetServerInfo over it answered.
};

// Connects to the unix socket at `path` and calls GetServerInfo over a new
// connection, within `timeout`. The failure's message names the path and
// what failed ("connect /run/warmstart/warmstart.sock: No such file or
// directory").
ProbeResult ProbeUnixListener(const std::string& path, absl::Duration timeout);

// The same over TCP to `address` ("127.0.0.1:7070"; a wildcard host is
// probed on loopback).
ProbeResult ProbeTcpListener(const std::string& address,
                             absl::Duration timeout);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVER_LISTENER_PROBE_H_
