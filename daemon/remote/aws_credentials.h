// AwsCredentials: the access key an S3 request is signed with.
// FindAwsCredentials reads the sources that need no request (the whole chain,
// web-identity tokens included, is AwsCredentialProvider's, in
// aws_credential_provider.h), in this order:
//   1. the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the
//      optional AWS_SESSION_TOKEN;
//   2. the shared credentials file: AWS_SHARED_CREDENTIALS_FILE, or else
//      $HOME/.aws/credentials, profile AWS_PROFILE (default "default"):
//      aws_access_key_id, aws_secret_access_key, aws_session_token.
//
// Secrets never appear in the errors returned here: they name the variable,
// the file, the profile and the key only.
//
// Plain values and functions; thread-safe (they read the environment and
// files, and keep nothing).
#ifndef WARMSTART_DAEMON_REMOTE_AWS_CREDENTIALS_H_
#define WARMSTART_DAEMON_REMOTE_AWS_CREDENTIALS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace warmstart {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // Empty when none.
  // Where they came from, for logs and errors: "environment",
  // "<file> [<profile>]" or "web identity <role ARN>". Holds no secret.
  std::string origin;
  // When temporary credentials stop working; InfiniteFuture for keys.
  absl::Time expiration = absl::InfiniteFuture();
};

// Reads `getenv` style lookups through `env` so tests can pass their own.
using EnvLookup = const char* (*)(const char*);

// The credentials of the chain above. Errors: Unauthenticated naming what
// was looked at when nothing provides a key; InvalidArgument naming the
// file, line and key for a malformed credentials file or a profile with only
// half a key pair; the errno class of a credentials file that exists but
// cannot be read.
absl::StatusOr<AwsCredentials> FindAwsCredentials(EnvLookup env);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_REMOTE_AWS_CREDENTIALS_H_
