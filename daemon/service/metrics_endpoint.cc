#include "daemon/service/metrics_endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "daemon/base/logging.h"

namespace warmstart {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kMetricsPath[] = "/metrics";
constexpr char kMetricsContentType[] = "text/plain; version=0.0.4";
constexpr int kListenBacklog = 64;
// After a failed accept() for lack of descriptors or memory, the listening
// socket stays readable; wait this long before trying again instead of
// spinning.
constexpr std::chrono::milliseconds kAcceptBackoff{100};
// What a client may still send after its response (a request body nobody
// reads) before the connection is closed outright.
constexpr size_t kMaxDrainBytes = 64 * 1024;

absl::Status AddressError(absl::string_view address, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("metrics endpoint ", address, ": ", what));
}

// A socket address parsed from "HOST:PORT" or "[IPV6]:PORT".
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family = AF_UNSPEC;
};

absl::StatusOr<SocketAddress> ParseAddress(const std::string& address) {
  absl::string_view host;
  absl::string_view port_text;
  bool bracketed = false;
  const absl::string_view text(address);
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos) {
      return AddressError(address, "missing ']' after the IPv6 address");
    }
    host = text.substr(1, close - 1);
    const absl::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return AddressError(address, "expected \":PORT\" after ']'");
    }
    port_text = rest.substr(1);
    bracketed = true;
  } else {
    const size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return AddressError(address, "expected HOST:PORT or [IPV6]:PORT");
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return AddressError(address,
                          "an IPv6 address needs brackets, as in [::1]:9464");
    }
  }
  if (host.empty()) {
    return AddressError(address, "missing host (give the address to bind)");
  }
  int port = -1;
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return AddressError(address, "invalid port");
  }

  SocketAddress result;
  const std::string host_string =
      (!bracketed && host == "localhost") ? "127.0.0.1" : std::string(host);
  if (bracketed) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&result.storage);
    if (::inet_pton(AF_INET6, host_string.c_str(), &in6->sin6_addr) != 1) {
      return AddressError(address, "invalid IPv6 address");
    }
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<uint16_t>(port));
    result.length = sizeof(sockaddr_in6);
    result.family = AF_INET6;
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&result.storage);
    if (::inet_pton(AF_INET, host_string.c_str(), &in4->sin_addr) != 1) {
      return AddressError(address,
                          "invalid host (expected a numeric IPv4 address or "
                          "localhost)");
    }
    in4->sin_family = AF_INET;
    in4->sin_port = htons(static_cast<uint16_t>(port));
    result.length = sizeof(sockaddr_in);
    result.family = AF_INET;
  }
  return result;
}

absl::Status SocketError(int error_number, const std::string& address,
                         absl::string_view call) {
  const std::string context =
      absl::StrCat("metrics endpoint ", address, ": ", call);
  if (error_number == EADDRINUSE) {
    return absl::AlreadyExistsError(
        absl::StrCat(context, ": address already in use"));
  }
  if (error_number == EADDRNOTAVAIL) {
    return absl::InvalidArgumentError(
        absl::StrCat(context, ": address not available on this host"));
  }
  return ErrnoToStatus(error_number, context);
}

std::string HttpResponse(absl::string_view status_line,
                         absl::string_view content_type, absl::string_view body,
                         bool include_body, absl::string_view extra_headers) {
  std::string response =
      absl::StrCat("HTTP/1.0 ", status_line, "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(), "\r\n", extra_headers,
                   "Connection: close\r\n\r\n");
  if (include_body) absl::StrAppend(&response, body);
  return response;
}

std::string BadRequest(absl::string_view why) {
  return HttpResponse("400 Bad Request", "text/plain; charset=utf-8",
                      absl::StrCat(why, "\n"), /*include_body=*/true, "");
}

// Where the request's header block ends (the index just past its blank
// line), or npos while it is incomplete. Accepts bare LF line ends.
size_t HeaderEnd(absl::string_view data) {
  const size_t crlf = data.find("\r\n\r\n");
  const size_t lf = data.find("\n\n");
  const size_t crlf_end = crlf == absl::string_view::npos ? crlf : crlf + 4;
  const size_t lf_end = lf == absl::string_view::npos ? lf : lf + 2;
  return std::min(crlf_end, lf_end);
}

// The whole response to one complete request header block.
std::string Respond(absl::string_view request,
                    const std::function<std::string()>& render) {
  absl::string_view line = request.substr(0, request.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty() ||
      !absl::StartsWith(parts[2], "HTTP/1.")) {
    return BadRequest("malformed request line");
  }
  const absl::string_view method = parts[0];
  absl::string_view path = parts[1];
  path = path.substr(0, path.find_first_of("?#"));
  if (path != kMetricsPath) {
    return HttpResponse("404 Not Found", "text/plain; charset=utf-8",
                        "not found; metrics are at /metrics\n",
                        method != "HEAD", "");
  }
  if (method != "GET" && method != "HEAD") {
    return HttpResponse("405 Method Not Allowed", "text/plain; charset=utf-8",
                        "method not allowed\n", /*include_body=*/true,
                        "Allow: GET, HEAD\r\n");
  }
  return HttpResponse("200 OK", kMetricsContentType, render(),
                      /*include_body=*/method == "GET", "");
}

// One client connection, from accept to close.
struct Connection {
  enum class Phase {
    kReading,   // collecting the request
    kWriting,   // sending the response
    kDraining,  // response sent and write side shut; waiting for the EOF
  };
  ScopedFd fd;
  Phase phase = Phase::kReading;
  std::string input;
  std::string output;
  size_t written = 0;
  size_t drained = 0;
  Clock::time_point deadline;
  bool closed = false;
};

// Sends what is left of the response; moves to draining when all is sent.
void WriteSome(Connection& c, const MetricsEndpointOptions& options) {
  while (c.written < c.output.size()) {
    const ssize_t n = ::send(c.fd.get(), c.output.data() + c.written,
                             c.output.size() - c.written, MSG_NOSIGNAL);
    if (n > 0) {
      c.written += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c.closed = true;  // the client went away
    return;
  }
  // Shut the write side so the client sees the end of the response, and
  // keep reading until it closes: closing with unread input would reset the
  // connection and could destroy the response before the client reads it.
  ::shutdown(c.fd.get(), SHUT_WR);
  c.output.clear();
  c.output.shrink_to_fit();
  c.phase = Connection::Phase::kDraining;
  c.deadline = Clock::now() + options.io_timeout;
}

void StartResponse(Connection& c, std::string response,
                   const MetricsEndpointOptions& options) {
  c.input.clear();
  c.input.shrink_to_fit();
  c.output = std::move(response);
  c.written = 0;
  c.phase = Connection::Phase::kWriting;
  c.deadline = Clock::now() + options.io_timeout;
  WriteSome(c, options);
}

// Reads what the client sent; answers once the request is complete or too
// large.
void ReadSome(Connection& c, const MetricsEndpointOptions& options,
              const std::function<std::string()>& render) {
  char buffer[4096];
  while (c.phase == Connection::Phase::kReading && !c.closed) {
    // Read at most one byte past the limit: enough to tell it was passed.
    const size_t room = options.max_request_bytes + 1 - c.input.size();
    const ssize_t n =
        ::recv(c.fd.get(), buffer, std::min(room, sizeof(buffer)), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {  // closed before the request was complete, or an error
      c.closed = true;
      return;
    }
    c.input.append(buffer, static_cast<size_t>(n));
    const size_t end = HeaderEnd(c.input);
    if (end != std::string::npos && end <= options.max_request_bytes) {
      StartResponse(c,
                    Respond(absl::string_view(c.input).substr(0, end), render),
                    options);
    } else if (c.input.size() > options.max_request_bytes) {
      Logger("metrics")->debug("metrics endpoint: request over {} bytes",
                               options.max_request_bytes);
      StartResponse(c, BadRequest("request too large"), options);
    }
  }
}

// Discards what the client sends after its response until it closes.
void DrainSome(Connection& c) {
  char buffer[4096];
  while (true) {
    const ssize_t n = ::recv(c.fd.get(), buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      c.closed = true;
      return;
    }
    c.drained += static_cast<size_t>(n);
    if (c.drained > kMaxDrainBytes) {
      c.closed = true;
      return;
    }
  }
}

int PollTimeoutMs(Clock::time_point now, Clock::time_point wake) {
  if (wake == Clock::time_point::max()) return -1;
  if (wake <= now) return 0;
  // Round up so that the deadline has passed when poll returns.
  const auto ms =
      std::chrono::ceil<std::chrono::milliseconds>(wake - now).count();
  return static_cast<int>(std::min<int64_t>(ms, 60 * 1000));
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& address, std::function<std::string()> render) {
  return Start(address, std::move(render), MetricsEndpointOptions());
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& address, std::function<std::string()> render,
    const MetricsEndpointOptions& options) {
  if (!render) return AddressError(address, "no render callback");
  if (options.max_request_bytes == 0 || options.max_connections <= 0 ||
      options.io_timeout.count() <= 0) {
    return AddressError(address, "invalid options");
  }
  WS_ASSIGN_OR_RETURN(const SocketAddress parsed, ParseAddress(address));

  ScopedFd listen_fd(
      ::socket(parsed.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listen_fd.valid()) return SocketError(errno, address, "socket");
  // Lets a restarted daemon bind while old connections sit in TIME_WAIT; on
  // Linux it does not allow two listeners on one port.
  const int one = 1;
  if (::setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &one,
                   sizeof(one)) != 0) {
    return SocketError(errno, address, "setsockopt(SO_REUSEADDR)");
  }
  if (parsed.family == AF_INET6 &&
      ::setsockopt(listen_fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one,
                   sizeof(one)) != 0) {
    return SocketError(errno, address, "setsockopt(IPV6_V6ONLY)");
  }
  if (::bind(listen_fd.get(),
             reinterpret_cast<const sockaddr*>(&parsed.storage),
             parsed.length) != 0) {
    return SocketError(errno, address, "bind");
  }
  if (::listen(listen_fd.get(), kListenBacklog) != 0) {
    return SocketError(errno, address, "listen");
  }
  sockaddr_storage bound{};
  socklen_t bound_length = sizeof(bound);
  if (::getsockname(listen_fd.get(), reinterpret_cast<sockaddr*>(&bound),
                    &bound_length) != 0) {
    return SocketError(errno, address, "getsockname");
  }
  const int port =
      ntohs(parsed.family == AF_INET6
                ? reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port
                : reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);

  ScopedFd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd.valid()) return SocketError(errno, address, "eventfd");

  Logger("metrics")->info("metrics endpoint listening on {} (port {})", address,
                          port);
  return std::unique_ptr<MetricsEndpoint>(
      new MetricsEndpoint(address, port, std::move(listen_fd),
                          std::move(stop_fd), std::move(render), options));
}

MetricsEndpoint::MetricsEndpoint(std::string address, int port,
                                 ScopedFd listen_fd, ScopedFd stop_fd,
                                 std::function<std::string()> render,
                                 const MetricsEndpointOptions& options)
    : address_(std::move(address)),
      port_(port),
      listen_fd_(std::move(listen_fd)),
      stop_fd_(std::move(stop_fd)),
      render_(std::move(render)),
      options_(options),
      thread_([this] { Serve(); }) {}

MetricsEndpoint::~MetricsEndpoint() {
  const uint64_t one = 1;
  // An eventfd write of 1 fails only if the counter would overflow, which
  // cannot happen with one write.
  while (::write(stop_fd_.get(), &one, sizeof(one)) < 0 && errno == EINTR) {
  }
  thread_.join();
}

void MetricsEndpoint::Serve() {
  std::vector<Connection> connections;
  std::vector<pollfd> fds;
  Clock::time_point accept_resume = Clock::time_point::min();
  while (true) {
    Clock::time_point now = Clock::now();
    // Close connections that passed their deadline: a silent client, a slow
    // sender, or one that does not read its response.
    for (Connection& c : connections) {
      if (c.deadline <= now) c.closed = true;
    }
    connections.erase(
        std::remove_if(connections.begin(), connections.end(),
                       [](const Connection& c) { return c.closed; }),
        connections.end());

    fds.clear();
    fds.push_back({stop_fd_.get(), POLLIN, 0});
    const bool accepting =
        static_cast<int>(connections.size()) < options_.max_connections &&
        now >= accept_resume;
    fds.push_back({accepting ? listen_fd_.get() : -1, POLLIN, 0});
    Clock::time_point wake = Clock::time_point::max();
    if (!accepting && accept_resume > now) wake = accept_resume;
    for (const Connection& c : connections) {
      const short events =
          c.phase == Connection::Phase::kWriting ? POLLOUT : POLLIN;
      fds.push_back({c.fd.get(), events, 0});
      wake = std::min(wake, c.deadline);
    }

    const int ready = ::poll(fds.data(), fds.size(), PollTimeoutMs(now, wake));
    if (ready < 0) {
      if (errno == EINTR) continue;
      Logger("metrics")->error("metrics endpoint {}: {}; it stops serving",
                               address_, ErrnoToStatus(errno, "poll"));
      return;
    }
    if (fds[0].revents != 0) return;  // stop requested

    // Serve the connections polled (those accepted below wait for the next
    // round).
    for (size_t i = 0; i < connections.size(); ++i) {
      Connection& c = connections[i];
      const short revents = fds[i + 2].revents;
      if (revents == 0) continue;
      switch (c.phase) {
        case Connection::Phase::kReading:
          ReadSome(c, options_, render_);
          break;
        case Connection::Phase::kWriting:
          WriteSome(c, options_);
          break;
        case Connection::Phase::kDraining:
          DrainSome(c);
          break;
      }
      if ((revents & POLLNVAL) != 0) c.closed = true;
    }

    if (accepting && (fds[1].revents & POLLIN) != 0) {
      while (static_cast<int>(connections.size()) < options_.max_connections) {
        const int fd = ::accept4(listen_fd_.get(), nullptr, nullptr,
                                 SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
          Connection c;
          c.fd.reset(fd);
          c.deadline = Clock::now() + options_.io_timeout;
          connections.push_back(std::move(c));
          continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) {
          continue;
        }
        // Out of descriptors or memory: back off rather than spin on a
        // listening socket that stays readable.
        Logger("metrics")->warn("metrics endpoint {}: {}; pausing accepts",
                                address_, ErrnoToStatus(errno, "accept"));
        accept_resume = Clock::now() + kAcceptBackoff;
        break;
      }
    }
  }
}

}  // namespace warmstart
