// AwsCredentialProvider against moto's real STS server (moto.server from
// the test venv, $WARMSTART_VENV) on loopback: web-identity credentials are
// fetched, kept, and fetched again once the injected clock nears their
// expiry. Without the venv the tests that need STS skip with the reason.
#include "daemon/remote/aws_credential_provider.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/scoped_fd.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/doubles/subprocess.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kRole[] = "arn:aws:iam::123456789012:role/loader";
constexpr char kToken[] = "wt19-token-secret";

std::map<std::string, std::string>* g_env = nullptr;

const char* FakeEnv(const char* name) {
  auto it = g_env->find(name);
  return it == g_env->end() ? nullptr : it->second.c_str();
}

// A TCP port on 127.0.0.1 nothing listens on now.
int FreePort() {
  ScopedFd s(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&address), &length) !=
          0) {
    return -1;
  }
  return ntohs(address.sin_port);
}

bool Accepts(int port) {
  ScopedFd s(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  return ::connect(s.get(), reinterpret_cast<sockaddr*>(&address),
                   sizeof(address)) == 0;
}

double StsRequests() {
  const std::map<std::string, double> metrics = Metrics::Global().Snapshot();
  auto it = metrics.find("warmstart_remote_sts_requests_total");
  return it == metrics.end() ? 0 : it->second;
}

class WebIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_env = &env_;
    token_file_ = dir_.Join("token");
    std::ofstream(token_file_) << kToken << "\n";
    env_["AWS_WEB_IDENTITY_TOKEN_FILE"] = token_file_;
    env_["AWS_ROLE_ARN"] = kRole;
    env_["AWS_ROLE_SESSION_NAME"] = "wt19";
    env_["HOME"] = dir_.Join("nohome");
  }
  void TearDown() override {
    if (moto_ != nullptr) moto_->Stop(SIGTERM, 10000);
    g_env = nullptr;
  }

  // Starts moto's server and points AWS_ENDPOINT_URL at it; false (and the
  // test skips) when the venv with moto is not there.
  bool StartSts() {
    const char* venv = std::getenv("WARMSTART_VENV");
    const std::string python = venv ? std::string(venv) + "/bin/python3" : "";
    if (python.empty() || ::access(python.c_str(), X_OK) != 0) return false;
    const int port = FreePort();
    moto_ = std::make_unique<testing::ChildProcess>(
        std::vector<std::string>{python, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", std::to_string(port)},
        dir_.path());
    // moto starts in a second or two; waiting is not what is tested.
    for (int i = 0; i < 600 && !Accepts(port); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    env_["AWS_ENDPOINT_URL"] = absl::StrCat("http://127.0.0.1:", port);
    return Accepts(port);
  }

  AwsCredentialProviderOptions Options() {
    AwsCredentialProviderOptions options;
    options.env = &FakeEnv;
    options.clock = [this] { return now_; };
    return options;
  }

  testing::ShortTempDir dir_;
  std::map<std::string, std::string> env_;
  std::string token_file_;
  absl::Time now_ = absl::Now();
  std::unique_ptr<testing::ChildProcess> moto_;
};

TEST_F(WebIdentityTest, FetchesKeepsAndRenewsBeforeExpiry) {
  if (!StartSts()) GTEST_SKIP() << "needs moto: set WARMSTART_VENV";
  AwsCredentialProvider provider(Options());
  const double before = StsRequests();
  ASSERT_OK_AND_ASSIGN(AwsCredentials first, provider.Get());
  EXPECT_FALSE(first.access_key_id.empty());
  EXPECT_FALSE(first.secret_access_key.empty());
  EXPECT_FALSE(first.session_token.empty());
  EXPECT_EQ(first.origin, absl::StrCat("web identity ", kRole));
  EXPECT_THAT(first.origin, Not(HasSubstr(kToken)));
  // moto grants the DurationSeconds asked (an hour by default).
  EXPECT_GT(first.expiration, absl::Now() + absl::Minutes(55));
  EXPECT_LT(first.expiration, absl::Now() + absl::Minutes(65));
  EXPECT_EQ(StsRequests(), before + 1);

  // Still well within their lifetime: kept, no second request.
  now_ = first.expiration - absl::Minutes(6);
  ASSERT_OK_AND_ASSIGN(AwsCredentials kept, provider.Get());
  EXPECT_EQ(kept.access_key_id, first.access_key_id);
  EXPECT_EQ(StsRequests(), before + 1);

  // Within the refresh margin (5 minutes): fetched again, with the token
  // file read again.
  now_ = first.expiration - absl::Minutes(4);
  ASSERT_OK_AND_ASSIGN(AwsCredentials renewed, provider.Get());
  EXPECT_NE(renewed.access_key_id, first.access_key_id);
  EXPECT_EQ(StsRequests(), before + 2);
}

TEST_F(WebIdentityTest, AFailedRefreshKeepsCredentialsUntilTheyExpire) {
  if (!StartSts()) GTEST_SKIP() << "needs moto: set WARMSTART_VENV";
  AwsCredentialProvider provider(Options());
  ASSERT_OK_AND_ASSIGN(AwsCredentials first, provider.Get());
  // STS gone: a refresh inside the margin fails, and the credentials,
  // still valid, are what a load gets.
  env_["AWS_ENDPOINT_URL_STS"] = absl::StrCat("http://127.0.0.1:", FreePort());
  now_ = first.expiration - absl::Minutes(4);
  ASSERT_OK_AND_ASSIGN(AwsCredentials kept, provider.Get());
  EXPECT_EQ(kept.access_key_id, first.access_key_id);
  // Past their expiry: the refresh's error.
  now_ = first.expiration + absl::Seconds(1);
  EXPECT_EQ(provider.Get().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(WebIdentityTest, EnvironmentKeysComeFirst) {
  env_["AWS_ACCESS_KEY_ID"] = "AKID";
  env_["AWS_SECRET_ACCESS_KEY"] = "SECRET";
  AwsCredentialProvider provider(Options());
  const double before = StsRequests();
  ASSERT_OK_AND_ASSIGN(AwsCredentials keys, provider.Get());
  EXPECT_EQ(keys.origin, "environment");
  EXPECT_EQ(keys.expiration, absl::InfiniteFuture());
  EXPECT_EQ(StsRequests(), before);
}

TEST_F(WebIdentityTest, MissingOrUnreadableTokenFileIsNamed) {
  AwsCredentialProvider provider(Options());
  env_["AWS_WEB_IDENTITY_TOKEN_FILE"] = dir_.Join("absent");
  absl::Status missing = provider.Get().status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(),
              HasSubstr("AWS_WEB_IDENTITY_TOKEN_FILE " + dir_.Join("absent")));
  // A directory where the token should be: read(2) fails with EISDIR.
  env_["AWS_WEB_IDENTITY_TOKEN_FILE"] = dir_.path();
  absl::Status unreadable = provider.Get().status();
  EXPECT_FALSE(unreadable.ok());
  EXPECT_THAT(unreadable.message(), HasSubstr(dir_.path()));
  EXPECT_THAT(unreadable.message(), HasSubstr("directory"));
  std::ofstream(dir_.Join("empty")) << "  \n";
  env_["AWS_WEB_IDENTITY_TOKEN_FILE"] = dir_.Join("empty");
  EXPECT_THAT(provider.Get().status().message(), HasSubstr("is empty"));
}

TEST_F(WebIdentityTest, TokenWithoutRoleIsRefused) {
  env_.erase("AWS_ROLE_ARN");
  AwsCredentialProvider provider(Options());
  absl::Status status = provider.Get().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("AWS_ROLE_ARN is not"));
}

TEST_F(WebIdentityTest, UnreachableStsIsNamedWithoutTheToken) {
  env_["AWS_ENDPOINT_URL_STS"] = absl::StrCat("http://127.0.0.1:", FreePort());
  AwsCredentialProvider provider(Options());
  absl::Status status = provider.Get().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr(env_["AWS_ENDPOINT_URL_STS"]));
  EXPECT_THAT(status.message(), HasSubstr(kRole));
  EXPECT_THAT(status.message(), Not(HasSubstr(kToken)));
}

}  // namespace
}  // namespace warmstart
