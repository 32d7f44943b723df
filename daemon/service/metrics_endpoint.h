// MetricsEndpoint: a minimal HTTP server for Prometheus scrapes.
//
// It answers `GET /metrics` (and `HEAD /metrics`) with the text that a render
// callback returns, as `Content-Type: text/plain; version=0.0.4`; any other
// path gets 404, any other method 405, a malformed or oversized request 400.
// Every connection is closed after one response (HTTP/1.0 style, no
// keep-alive). It is meant for a loopback address: it has no TLS and no
// authentication. It binds exactly the address it is given; refusing
// non-loopback addresses is the configuration's job.
//
// One thread serves every connection with poll(): a client that connects and
// sends nothing, or sends slowly, or does not read its response, holds only
// its own connection, until the per-connection timeout closes it; requests
// are bounded in size; at most `max_connections` are open at once (further
// clients wait in the listen backlog).
//
// Typical use in the daemon:
//
//   WS_ASSIGN_OR_RETURN(auto endpoint, MetricsEndpoint::Start(
//       config.metrics_address(),
//       [&metrics] { return metrics.PrometheusText(); }));
//   ...  // serves until `endpoint` is destroyed (before `metrics`)
//
// Thread safety: Start() and the accessors may be called from any thread.
// `render` is called on the endpoint's own thread, once per GET request, so
// it must be thread-safe with respect to the rest of the program (as
// Metrics::PrometheusText() is) and must not block for long: the endpoint
// serves nobody else while it runs.
#ifndef WARMSTART_DAEMON_SERVICE_METRICS_ENDPOINT_H_
#define WARMSTART_DAEMON_SERVICE_METRICS_ENDPOINT_H_

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/scoped_fd.h"

namespace warmstart {

// Limits of one MetricsEndpoint; the defaults suit production.
struct MetricsEndpointOptions {
  // The largest request (request line plus headers) read before answering
  // 400 and closing.
  size_t max_request_bytes = 8 * 1024;
  // How long a client has to send its whole request, and then again to read
  // the whole response, before its connection is closed.
  std::chrono::milliseconds io_timeout{2000};
  // Connections served at once; more wait in the kernel's listen backlog.
  int max_connections = 16;
};

class MetricsEndpoint {
 public:
  // Binds `address`, listens and starts the serving thread.
  //
  // `address` is "HOST:PORT" where HOST is a numeric IPv4 address or
  // "localhost" (127.0.0.1), or "[IPV6]:PORT" with a numeric IPv6 address
  // ("[::1]:9464"). PORT 0 picks a free port; port() tells which.
  //
  // Errors name the address: InvalidArgument for a malformed address
  // ("metrics endpoint 127.0.0.1:99999: invalid port"), AlreadyExists when
  // the port is in use, other errno statuses from socket/bind/listen.
  // REQUIRES: `render` is non-null.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& address, std::function<std::string()> render);
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& address, std::function<std::string()> render,
      const MetricsEndpointOptions& options);

  // Stops the serving thread (promptly: it does not wait for clients), then
  // closes every open connection and the listening socket.
  ~MetricsEndpoint();

  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // The port actually bound (the chosen one when the address asked for 0).
  int port() const { return port_; }
  // The address as given to Start().
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint(std::string address, int port, ScopedFd listen_fd,
                  ScopedFd stop_fd, std::function<std::string()> render,
                  const MetricsEndpointOptions& options);

  // The serving thread's body; returns when stop_fd_ becomes readable.
  void Serve();

  const std::string address_;
  const int port_;
  const ScopedFd listen_fd_;
  // An eventfd; written once by the destructor to stop Serve().
  const ScopedFd stop_fd_;
  const std::function<std::string()> render_;
  const MetricsEndpointOptions options_;
  // Started last in the constructor, joined first in the destructor.
  std::thread thread_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVICE_METRICS_ENDPOINT_H_
