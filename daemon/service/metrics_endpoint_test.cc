#include "daemon/service/metrics_endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/scoped_fd.h"
#include "common/testing/status_matchers.h"
#include "daemon/base/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;

constexpr char kBody[] =
    "# TYPE warmstart_test_total counter\n"
    "warmstart_test_total 42\n";

std::unique_ptr<MetricsEndpoint> StartOrDie(
    const MetricsEndpointOptions& options = MetricsEndpointOptions()) {
  auto endpoint = MetricsEndpoint::Start(
      "127.0.0.1:0", [] { return std::string(kBody); }, options);
  EXPECT_OK(endpoint);
  return endpoint.ok() ? std::move(*endpoint) : nullptr;
}

ScopedFd Connect(int port) {
  ScopedFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd.valid());
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&address),
                      sizeof(address)),
            0)
      << std::strerror(errno);
  return fd;
}

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n =
        ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    ASSERT_GT(n, 0) << std::strerror(errno);
    sent += static_cast<size_t>(n);
  }
}

// Reads until the server closes the connection (or resets it), or until
// `timeout` passes; returns what arrived.
std::string ReadUntilClosed(int fd, std::chrono::milliseconds timeout =
                                        std::chrono::milliseconds(5000)) {
  std::string data;
  const Clock::time_point deadline = Clock::now() + timeout;
  char buffer[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - Clock::now());
    if (left.count() <= 0) {
      ADD_FAILURE() << "the server did not close the connection in time";
      return data;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return data;
    data.append(buffer, static_cast<size_t>(n));
  }
}

std::string Exchange(int port, const std::string& request) {
  ScopedFd fd = Connect(port);
  SendAll(fd.get(), request);
  return ReadUntilClosed(fd.get());
}

std::string Body(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

TEST(MetricsEndpointTest, ServesMetrics) {
  auto endpoint = StartOrDie();
  ASSERT_NE(endpoint, nullptr);
  EXPECT_GT(endpoint->port(), 0);
  EXPECT_EQ(endpoint->address(), "127.0.0.1:0");
  const std::string response =
      Exchange(endpoint->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(response, StartsWith("HTTP/1.0 200 OK\r\n"));
  EXPECT_THAT(response,
              HasSubstr("\r\nContent-Type: text/plain; version=0.0.4\r\n"));
  EXPECT_THAT(response, HasSubstr(absl::StrCat("\r\nContent-Length: ",
                                               std::strlen(kBody), "\r\n")));
  EXPECT_EQ(Body(response), kBody);
}

TEST(MetricsEndpointTest, ServesAMetricsRegistry) {
  Metrics metrics;
  metrics.GetCounter("warmstart_endpoint_test_total", "endpoint test counter")
      ->Add(7);
  ASSERT_OK_AND_ASSIGN(auto endpoint,
                       MetricsEndpoint::Start("127.0.0.1:0", [&metrics] {
                         return metrics.PrometheusText();
                       }));
  const std::string response =
      Exchange(endpoint->port(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_THAT(response, StartsWith("HTTP/1.0 200 OK\r\n"));
  EXPECT_THAT(Body(response), HasSubstr("warmstart_endpoint_test_total 7"));
}

TEST(MetricsEndpointTest, RendersOnEveryRequest) {
  std::atomic<int> calls{0};
  ASSERT_OK_AND_ASSIGN(auto endpoint,
                       MetricsEndpoint::Start("127.0.0.1:0", [&calls] {
                         return absl::StrCat("scrape ", ++calls, "\n");
                       }));
  EXPECT_EQ(Body(Exchange(endpoint->port(), "GET /metrics HTTP/1.0\r\n\r\n")),
            "scrape 1\n");
  EXPECT_EQ(Body(Exchange(endpoint->port(), "GET /metrics HTTP/1.0\r\n\r\n")),
            "scrape 2\n");
}

TEST(MetricsEndpointTest, AcceptsQueryBareLineFeedsAndSlowClients) {
  auto endpoint = StartOrDie();
  ASSERT_NE(endpoint, nullptr);
  EXPECT_EQ(
      Body(Exchange(endpoint->port(), "GET /metrics?x=1 HTTP/1.1\r\n\r\n")),
      kBody);
  EXPECT_THAT(Exchange(endpoint->port(), "GET /metrics HTTP/1.0\n\n"),
              StartsWith("HTTP/1.0 200 OK"));
  // The request arrives a few bytes at a time.
  ScopedFd fd = Connect(endpoint->port());
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n";
  for (size_t i = 0; i < request.size(); i += 5) {
    SendAll(fd.get(), request.substr(i, 5));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(Body(ReadUntilClosed(fd.get())), kBody);
}

TEST(MetricsEndpointTest, HeadSendsHeadersOnly) {
  auto endpoint = StartOrDie();
  ASSERT_NE(endpoint, nullptr);
  const std::string response =
      Exchange(endpoint->port(), "HEAD /metrics HTTP/1.0\r\n\r\n");
  EXPECT_THAT(response, StartsWith("HTTP/1.0 200 OK\r\n"));
  EXPECT_THAT(response, HasSubstr(absl::StrCat("\r\nContent-Length: ",
                                               std::strlen(kBody), "\r\n")));
  EXPECT_EQ(Body(response), "");
}

TEST(MetricsEndpointTest, OtherPathIsNotFound) {
  auto endpoint = StartOrDie();
  ASSERT_NE(endpoint, nullptr);
  EXPECT_THAT(Exchange(endpoint->port(), "GET /other HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.0 404 Not Found\r\n"));
  EXPECT_THAT(Exchange(endpoint->port(), "GET / HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.0 404 Not Found\r\n"));
  EXPECT_THAT(Exchange(endpoint->port(), "GET /metricsx HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.0 404 Not Found\r\n"));
}

TEST(MetricsEndpointTest, OtherMethodIsNotAllowed) {
  auto endpoint = StartOrDie();
  ASSERT_NE(endpoint, nullptr);
  const std::string response =
      Exchange(endpoint->port(),
               "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
  EXPECT_THAT(response, StartsWith("HTTP/1.0 405 Method Not Allowed\r\n"));
  EXPECT_THAT(response, HasSubstr("\r\nAllow: GET, HEAD\r\n"));
  EXPECT_THAT(Exchange(endpoint->port(), "DELETE /metrics HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.0 405 "));
}

TEST(MetricsEndpointTest, MalformedRequestIsBadRequest) {
  auto endpoint = StartOrDie();
  ASSERT_NE(endpoint, nullptr);
  EXPECT_THAT(Exchange(endpoint->port(), "GET /metrics\r\n\r\n"),
              StartsWith("HTTP/1.0 400 Bad Request\r\n"));
  EXPECT_THAT(Exchange(endpoint->port(), "\r\n\r\n"),
              StartsWith("HTTP/1.0 400 Bad Request\r\n"));
  EXPECT_THAT(Exchange(endpoint->port(), "GET /metrics SPDY/3\r\n\r\n"),
              StartsWith("HTTP/1.0 400 Bad Request\r\n"));
}

TEST(MetricsEndpointTest, OversizedRequestIsRefused) {
  auto endpoint = StartOrDie();
  ASSERT_NE(endpoint, nullptr);
  // Just over the limit: answered with 400.
  const std::string request =
      "GET /metrics HTTP/1.1\r\nX-Pad: " + std::string(9000, 'a') + "\r\n\r\n";
  EXPECT_THAT(Exchange(endpoint->port(), request),
              StartsWith("HTTP/1.0 400 Bad Request\r\n"));

  // Far over the limit: a 400 or a closed connection, and the endpoint still
  // serves the next client.
  ScopedFd fd = Connect(endpoint->port());
  std::thread sender([&fd] {
    const std::string flood(1 << 20, 'b');
    size_t sent = 0;
    while (sent < flood.size()) {
      const ssize_t n = ::send(fd.get(), flood.data() + sent,
                               flood.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;  // the server closed the connection
      sent += static_cast<size_t>(n);
    }
  });
  const std::string response = ReadUntilClosed(fd.get());
  ::shutdown(fd.get(), SHUT_RDWR);  // unblocks the sender if still sending
  sender.join();
  EXPECT_TRUE(response.empty() || absl::StartsWith(response, "HTTP/1.0 400"))
      << response;
  EXPECT_EQ(Body(Exchange(endpoint->port(), "GET /metrics HTTP/1.0\r\n\r\n")),
            kBody);
}

TEST(MetricsEndpointTest, SilentClientDoesNotBlockOthers) {
  MetricsEndpointOptions options;
  // Far longer than Exchange waits for its answer: served only if the silent
  // connection does not hold the others up.
  options.io_timeout = std::chrono::seconds(60);
  auto endpoint = StartOrDie(options);
  ASSERT_NE(endpoint, nullptr);
  ScopedFd silent = Connect(endpoint->port());
  EXPECT_EQ(Body(Exchange(endpoint->port(), "GET /metrics HTTP/1.0\r\n\r\n")),
            kBody);
}

TEST(MetricsEndpointTest, SilentClientIsClosedAfterTheTimeout) {
  MetricsEndpointOptions options;
  options.io_timeout = std::chrono::milliseconds(200);
  auto endpoint = StartOrDie(options);
  ASSERT_NE(endpoint, nullptr);
  // Before connecting: the server's clock starts when it accepts, later.
  const Clock::time_point start = Clock::now();
  ScopedFd silent = Connect(endpoint->port());
  // Closed, not left open: ReadUntilClosed fails after 5 s.
  EXPECT_EQ(ReadUntilClosed(silent.get()), "");
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(200));
}

TEST(MetricsEndpointTest, ConnectionLimitWaitsForTimeouts) {
  MetricsEndpointOptions options;
  options.io_timeout = std::chrono::milliseconds(300);
  options.max_connections = 2;
  auto endpoint = StartOrDie(options);
  ASSERT_NE(endpoint, nullptr);
  ScopedFd silent1 = Connect(endpoint->port());
  ScopedFd silent2 = Connect(endpoint->port());
  // Served once the silent ones time out, within Exchange's 5 s.
  EXPECT_EQ(Body(Exchange(endpoint->port(), "GET /metrics HTTP/1.0\r\n\r\n")),
            kBody);
}

TEST(MetricsEndpointTest, DestructorReturnsPromptly) {
  MetricsEndpointOptions options;
  options.io_timeout = std::chrono::seconds(60);
  auto endpoint = StartOrDie(options);
  ASSERT_NE(endpoint, nullptr);
  const int port = endpoint->port();
  ScopedFd silent = Connect(port);
  ScopedFd half = Connect(port);
  SendAll(half.get(), "GET /metr");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const Clock::time_point start = Clock::now();
  endpoint.reset();
  // Without waiting out the connections' 60 s timeout.
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  // The connections were closed, and nothing listens any more.
  EXPECT_EQ(ReadUntilClosed(silent.get()), "");
  ScopedFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&address),
                      sizeof(address)),
            0);
}

TEST(MetricsEndpointTest, BadAddressesAreInvalidArguments) {
  const auto render = [] { return std::string(); };
  struct Case {
    const char* address;
    const char* reason;
  };
  for (const Case& c : {
           Case{"127.0.0.1:99999", "invalid port"},
           Case{"127.0.0.1:", "invalid port"},
           Case{"127.0.0.1:-1", "invalid port"},
           Case{"127.0.0.1:+80", "invalid port"},
           Case{"127.0.0.1:9x", "invalid port"},
           Case{"127.0.0.1", "HOST:PORT"},
           Case{"", "HOST:PORT"},
           Case{":9464", "missing host"},
           Case{"[]:9464", "missing host"},
           Case{"::1:9464", "brackets"},
           Case{"[::1:9464", "missing ']'"},
           Case{"[::1]9464", ":PORT"},
           Case{"[127.0.0.1]:9464", "invalid IPv6"},
           Case{"example.com:9464", "invalid host"},
           Case{"256.0.0.1:9464", "invalid host"},
       }) {
    EXPECT_THAT(
        MetricsEndpoint::Start(c.address, render),
        StatusIs(
            absl::StatusCode::kInvalidArgument,
            AllOf(HasSubstr(absl::StrCat("metrics endpoint ", c.address, ": ")),
                  HasSubstr(c.reason))))
        << c.address;
  }
  EXPECT_THAT(MetricsEndpoint::Start("127.0.0.1:99999", render),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "metrics endpoint 127.0.0.1:99999: invalid port"));
}

TEST(MetricsEndpointTest, PortInUseNamesTheAddress) {
  auto first = StartOrDie();
  ASSERT_NE(first, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", first->port());
  EXPECT_THAT(
      MetricsEndpoint::Start(address, [] { return std::string(); }),
      StatusIs(absl::StatusCode::kAlreadyExists,
               AllOf(HasSubstr(absl::StrCat("metrics endpoint ", address)),
                     HasSubstr("in use"))));
}

TEST(MetricsEndpointTest, LocalhostBindsLoopback) {
  ASSERT_OK_AND_ASSIGN(auto endpoint, MetricsEndpoint::Start("localhost:0", [] {
                         return std::string(kBody);
                       }));
  EXPECT_EQ(Body(Exchange(endpoint->port(), "GET /metrics HTTP/1.0\r\n\r\n")),
            kBody);
}

TEST(MetricsEndpointTest, ServesOnIpv6Loopback) {
  auto endpoint =
      MetricsEndpoint::Start("[::1]:0", [] { return std::string(kBody); });
  if (!endpoint.ok()) {
    GTEST_SKIP() << "no IPv6 loopback here: " << endpoint.status();
  }
  ScopedFd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 address{};
  address.sin6_family = AF_INET6;
  address.sin6_port = htons(static_cast<uint16_t>((*endpoint)->port()));
  address.sin6_addr = in6addr_loopback;
  ASSERT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&address),
                      sizeof(address)),
            0)
      << std::strerror(errno);
  SendAll(fd.get(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(Body(ReadUntilClosed(fd.get())), kBody);
}

}  // namespace
}  // namespace warmstart
