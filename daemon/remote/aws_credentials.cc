#include "daemon/remote/aws_credentials.h"

#include <cerrno>
#include <fstream>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/errno_status.h"

namespace warmstart {
namespace {

std::string Get(EnvLookup env, const char* name) {
  const char* value = env(name);
  return value == nullptr ? std::string() : std::string(value);
}

}  // namespace

absl::StatusOr<AwsCredentials> FindAwsCredentials(EnvLookup env) {
  AwsCredentials credentials;
  credentials.access_key_id = Get(env, "AWS_ACCESS_KEY_ID");
  credentials.secret_access_key = Get(env, "AWS_SECRET_ACCESS_KEY");
  if (!credentials.access_key_id.empty() ||
      !credentials.secret_access_key.empty()) {
    // Half a pair is a mistake worth naming rather than silently falling
    // back to a file with another identity.
    if (credentials.access_key_id.empty() ||
        credentials.secret_access_key.empty()) {
      return absl::InvalidArgumentError(
          "AWS credentials from the environment: AWS_ACCESS_KEY_ID and "
          "AWS_SECRET_ACCESS_KEY must both be set");
    }
    credentials.session_token = Get(env, "AWS_SESSION_TOKEN");
    credentials.origin = "environment";
    return credentials;
  }

  std::string file = Get(env, "AWS_SHARED_CREDENTIALS_FILE");
  if (file.empty()) {
    const std::string home = Get(env, "HOME");
    if (!home.empty()) file = absl::StrCat(home, "/.aws/credentials");
  }
  std::string profile = Get(env, "AWS_PROFILE");
  if (profile.empty()) profile = "default";
  const std::string looked_at =
      "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and "
      "AWS_WEB_IDENTITY_TOKEN_FILE in the environment, and the shared "
      "credentials file";
  if (file.empty()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "no AWS credentials: looked at ", looked_at, " (HOME is not set)"));
  }
  std::ifstream in(file);
  if (!in) {
    if (errno == ENOENT) {
      return absl::UnauthenticatedError(absl::StrCat(
          "no AWS credentials: looked at ", looked_at, " ", file, " (absent)"));
    }
    return ErrnoToStatus(errno, file);
  }
  std::map<std::string, std::string> values;
  std::string section;
  bool found_profile = false;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#' || text[0] == ';') continue;
    if (text.front() == '[') {
      if (text.back() != ']') {
        return absl::InvalidArgumentError(absl::StrCat(
            file, ":", line_number, ": a section header must end with ']'"));
      }
      section = std::string(
          absl::StripAsciiWhitespace(text.substr(1, text.size() - 2)));
      if (section == profile) found_profile = true;
      continue;
    }
    if (section != profile) continue;
    const size_t equals = text.find('=');
    if (equals == absl::string_view::npos) {
      // Never echo the line: it may hold a secret.
      return absl::InvalidArgumentError(
          absl::StrCat(file, ":", line_number, ": profile [", profile,
                       "]: expected 'key = value'"));
    }
    values[absl::AsciiStrToLower(
        absl::StripAsciiWhitespace(text.substr(0, equals)))] =
        std::string(absl::StripAsciiWhitespace(text.substr(equals + 1)));
  }
  if (!found_profile) {
    return absl::UnauthenticatedError(
        absl::StrCat("no AWS credentials: ", file, " has no profile [", profile,
                     "] (AWS_PROFILE selects one)"));
  }
  credentials.access_key_id = values["aws_access_key_id"];
  credentials.secret_access_key = values["aws_secret_access_key"];
  credentials.session_token = values["aws_session_token"];
  if (credentials.access_key_id.empty() ||
      credentials.secret_access_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": profile [", profile,
        "]: aws_access_key_id and aws_secret_access_key must both be set"));
  }
  credentials.origin = absl::StrCat(file, " [", profile, "]");
  return credentials;
}

}  // namespace warmstart
