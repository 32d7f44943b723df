// Unit tests of what needs no server: URL checks, the allow-list and the
// credentials chain. The transfers themselves are tested against real nginx
// and moto servers in tests/remote_source_test.py.
#include <cstdlib>
#include <fstream>
#include <map>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/metrics.h"
#include "daemon/remote/remote_source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::map<std::string, std::string>* g_env = nullptr;

const char* FakeEnv(const char* name) {
  auto it = g_env->find(name);
  return it == g_env->end() ? nullptr : it->second.c_str();
}

class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override { g_env = &env_; }
  void TearDown() override { g_env = nullptr; }

  std::unique_ptr<RemoteSources> Sources(std::vector<std::string> prefixes) {
    RemoteOptions options;
    options.allowed_prefixes = std::move(prefixes);
    options.concurrency = 2;
    options.env = &FakeEnv;
    options.max_attempts = 1;
    options.metrics = &metrics_;
    auto sources = RemoteSources::Create(std::move(options));
    EXPECT_TRUE(sources.ok()) << sources.status();
    return *std::move(sources);
  }

  std::map<std::string, std::string> env_;
  Metrics metrics_;  // Outlives the sources, which count into it.
};

TEST_F(RemoteTest, IsRemoteUrl) {
  EXPECT_TRUE(IsRemoteUrl("s3://b/k"));
  EXPECT_TRUE(IsRemoteUrl("https://h/p"));
  EXPECT_TRUE(IsRemoteUrl("http://h/p"));
  EXPECT_FALSE(IsRemoteUrl("/models/x.safetensors"));
  EXPECT_FALSE(IsRemoteUrl("ftp://h/p"));
}

TEST_F(RemoteTest, RefusesUrlsOutsideThePrefixesAndCountsThem) {
  auto sources = Sources({"http://127.0.0.1:1/models", "s3://bucket/a/"});
  Counter* refused = metrics_.GetCounter("warmstart_remote_refused_total", "");
  const uint64_t before = refused->value();
  // "models2" is not beneath "models": prefixes end at a '/'.
  auto status = sources->Open("http://127.0.0.1:1/models2/x.safetensors");
  EXPECT_EQ(status.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(status.status().message(),
              HasSubstr("not beneath an allowed remote source"));
  EXPECT_EQ(sources->Open("s3://bucket/b/x.gguf").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(sources->Open("https://127.0.0.1:1/models/x").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(refused->value(), before + 3);
  // Allowed (nothing listens on port 1: the HEAD fails to connect).
  EXPECT_EQ(sources->Open("http://127.0.0.1:1/models/x").status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(RemoteTest, NothingIsAllowedWithoutPrefixes) {
  auto sources = Sources({});
  auto status = sources->Open("https://example.invalid/m.safetensors");
  EXPECT_EQ(status.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(status.status().message(), HasSubstr("none configured"));
}

TEST_F(RemoteTest, RefusesMalformedUrlsWithoutEchoingUserInformation) {
  auto sources = Sources({"http://"});
  auto status = sources->Open("http://user:hunter2@h/m");
  EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.status().message(), Not(HasSubstr("hunter2")));
  EXPECT_THAT(sources->Open("http://h/a/../b").status().message(),
              HasSubstr("'..'"));
  EXPECT_THAT(sources->Open("http://h/a?x=1").status().message(),
              HasSubstr("query"));
  EXPECT_THAT(sources->Open("http://h/dir/").status().message(),
              HasSubstr("names no object"));
  EXPECT_THAT(sources->Open("http:///x").status().message(),
              HasSubstr("names no host"));
}

TEST_F(RemoteTest, RefusesBadOptions) {
  RemoteOptions options;
  options.concurrency = 0;
  EXPECT_EQ(RemoteSources::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.concurrency = 1;
  options.allowed_prefixes = {"/local/dir"};
  EXPECT_THAT(RemoteSources::Create(options).status().message(),
              HasSubstr("must start with"));
}

TEST_F(RemoteTest, CredentialsFromTheEnvironment) {
  env_["AWS_ACCESS_KEY_ID"] = "AKID";
  env_["AWS_SECRET_ACCESS_KEY"] = "SECRET";
  env_["AWS_SESSION_TOKEN"] = "TOKEN";
  ASSERT_OK_AND_ASSIGN(AwsCredentials credentials,
                       FindAwsCredentials(&FakeEnv));
  EXPECT_EQ(credentials.access_key_id, "AKID");
  EXPECT_EQ(credentials.secret_access_key, "SECRET");
  EXPECT_EQ(credentials.session_token, "TOKEN");
  EXPECT_EQ(credentials.origin, "environment");
  env_.erase("AWS_SECRET_ACCESS_KEY");
  EXPECT_THAT(FindAwsCredentials(&FakeEnv).status().message(),
              HasSubstr("must both be set"));
}

TEST_F(RemoteTest, CredentialsFromTheSharedFileAndProfile) {
  const std::string file = ::testing::TempDir() + "/credentials";
  {
    std::ofstream out(file);
    out << "[default]\naws_access_key_id = DEF\naws_secret_access_key = D\n"
        << "# comment\n[other]\naws_access_key_id=OTH\n"
        << "aws_secret_access_key=O\naws_session_token=T\n"
        << "[broken]\naws_access_key_id S3CR3T\n";
  }
  env_["AWS_SHARED_CREDENTIALS_FILE"] = file;
  ASSERT_OK_AND_ASSIGN(AwsCredentials def, FindAwsCredentials(&FakeEnv));
  EXPECT_EQ(def.access_key_id, "DEF");
  EXPECT_EQ(def.secret_access_key, "D");
  env_["AWS_PROFILE"] = "other";
  ASSERT_OK_AND_ASSIGN(AwsCredentials other, FindAwsCredentials(&FakeEnv));
  EXPECT_EQ(other.access_key_id, "OTH");
  EXPECT_EQ(other.session_token, "T");
  EXPECT_EQ(other.origin, file + " [other]");
  env_["AWS_PROFILE"] = "missing";
  EXPECT_EQ(FindAwsCredentials(&FakeEnv).status().code(),
            absl::StatusCode::kUnauthenticated);
  env_["AWS_PROFILE"] = "broken";
  absl::Status broken = FindAwsCredentials(&FakeEnv).status();
  EXPECT_THAT(broken.message(), HasSubstr(":10: profile [broken]"));
  EXPECT_THAT(broken.message(), Not(HasSubstr("S3CR3T")));
}

TEST_F(RemoteTest, NoCredentialsAnywhere) {
  env_["HOME"] = ::testing::TempDir() + "/nohome";
  absl::Status status = FindAwsCredentials(&FakeEnv).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(status.message(), HasSubstr("(absent)"));
}

}  // namespace
}  // namespace warmstart
