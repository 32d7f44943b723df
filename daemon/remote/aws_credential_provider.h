// AwsCredentialProvider: the AWS credential chain the daemon signs S3
// requests with, in this order (the AWS SDKs' order, a subset of it):
//   1. the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the
//      optional AWS_SESSION_TOKEN (FindAwsCredentials);
//   2. a web-identity token (Kubernetes IRSA): AWS_WEB_IDENTITY_TOKEN_FILE,
//      AWS_ROLE_ARN and the optional AWS_ROLE_SESSION_NAME, exchanged for
//      temporary credentials with STS AssumeRoleWithWebIdentity at
//      AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL, or
//      https://sts.<region>.amazonaws.com; the credentials are kept and
//      fetched again, with the token file read again (the kubelet rotates
//      it), once less than `refresh_margin` of their lifetime is left;
//   3. the shared credentials file and profile (FindAwsCredentials).
// Not supported: the config file's role_arn/source_profile and
// credential_process, SSO, the ECS container endpoint and the EC2 instance
// metadata service (IMDS).
//
// The token, the secret key and the session token never appear in the
// errors returned here or in metrics: errors name the variable, the file,
// the role ARN, the STS endpoint and STS's error code.
//
// Thread safety: Get() may be called from any number of threads; one STS
// request runs at a time and the others wait for its answer.
#ifndef WARMSTART_DAEMON_REMOTE_AWS_CREDENTIAL_PROVIDER_H_
#define WARMSTART_DAEMON_REMOTE_AWS_CREDENTIAL_PROVIDER_H_

#include <functional>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/metrics.h"
#include "daemon/remote/aws_credentials.h"

namespace warmstart {

struct AwsCredentialProviderOptions {
  // Lookups of the environment (AWS_*, HOME). REQUIRED: not null.
  EnvLookup env = nullptr;
  // The region of the regional STS endpoint (when no endpoint is set).
  std::string region = "us-east-1";
  // PEM CA bundle for an HTTPS STS endpoint; empty: libcurl's default.
  std::string ca_bundle;
  absl::Duration connect_timeout = absl::Seconds(10);
  // The whole STS request, answer included.
  absl::Duration request_timeout = absl::Seconds(30);
  // The lifetime asked of STS (DurationSeconds).
  absl::Duration session_duration = absl::Hours(1);
  // Temporary credentials are fetched again once less than this is left.
  absl::Duration refresh_margin = absl::Minutes(5);
  // The clock credential expiry is measured with; null means absl::Now
  // (tests pass their own).
  std::function<absl::Time()> now;
  // Where STS requests are counted. Not owned; must outlive the provider.
  // Null: not counted.
  Metrics* metrics = nullptr;
};

class AwsCredentialProvider {
 public:
  explicit AwsCredentialProvider(AwsCredentialProviderOptions options);
  AwsCredentialProvider(const AwsCredentialProvider&) = delete;
  AwsCredentialProvider& operator=(const AwsCredentialProvider&) = delete;

  // Credentials from the first source of the chain that is configured.
  // Temporary credentials carry their `expiration`; the others
  // absl::InfiniteFuture().
  // A refresh that fails while the cached credentials have not expired
  // yet (inside `refresh_margin`) returns those. Errors otherwise: those of
  // FindAwsCredentials;
  // InvalidArgument when AWS_WEB_IDENTITY_TOKEN_FILE is set without
  // AWS_ROLE_ARN; the errno class of a token file that cannot be read,
  // naming the file; Unavailable naming the STS endpoint when it cannot be
  // reached; PermissionDenied with STS's error code when STS refuses the
  // token or the role; DataLoss for an answer that holds no credentials.
  absl::StatusOr<AwsCredentials> Get();

 private:
  // The STS call; made without mutex_ held.
  absl::StatusOr<AwsCredentials> AssumeRoleWithWebIdentity(
      const std::string& token_file, const std::string& role_arn);
  std::string StsEndpoint() const;
  absl::Time Now() const;

  const AwsCredentialProviderOptions options_;
  absl::Mutex mutex_;
  // The last temporary credentials, and the token file and role they are
  // for (a changed environment is not served old credentials).
  std::optional<AwsCredentials> cached_ ABSL_GUARDED_BY(mutex_);
  std::string cached_for_ ABSL_GUARDED_BY(mutex_);
  // One refresh at a time (every ranged GET of a load asks at every try):
  // the others wait for it and take its result, credentials or error,
  // instead of each calling STS in turn.
  bool refreshing_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t refreshes_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Status last_refresh_error_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_REMOTE_AWS_CREDENTIAL_PROVIDER_H_
