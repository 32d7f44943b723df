#include "daemon/remote/aws_credential_provider.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "daemon/base/metrics.h"
#include "daemon/remote/curl_easy.h"

namespace warmstart {
namespace {

void CountStsRequest(Metrics* metrics) {
  if (metrics == nullptr) return;
  metrics
      ->GetCounter("warmstart_remote_sts_requests_total",
                   "STS AssumeRoleWithWebIdentity requests for temporary S3 "
                   "credentials.")
      ->Add();
}

std::string Env(EnvLookup env, const char* name) {
  const char* value = env(name);
  return value == nullptr ? std::string() : std::string(value);
}

// The text of the first <tag>...</tag> in `xml`; empty when there is none.
// STS answers hold base64 and ARNs: nothing to unescape but '&amp;'.
std::string XmlValue(absl::string_view xml, absl::string_view tag) {
  const std::string open = absl::StrCat("<", tag, ">");
  const std::string close = absl::StrCat("</", tag, ">");
  const size_t start = xml.find(open);
  if (start == absl::string_view::npos) return "";
  const size_t end = xml.find(close, start + open.size());
  if (end == absl::string_view::npos) return "";
  return absl::StrReplaceAll(
      xml.substr(start + open.size(), end - start - open.size()),
      {{"&amp;", "&"}});
}

size_t AppendAnswer(char* data, size_t size, size_t count, void* user) {
  auto* body = static_cast<std::string*>(user);
  // An STS answer is a few KiB; anything far larger is not one.
  constexpr size_t kMaxAnswerBytes = 1 << 20;
  if (body->size() + size * count > kMaxAnswerBytes) return 0;
  body->append(data, size * count);
  return size * count;
}

// `value` percent-encoded for an application/x-www-form-urlencoded body.
std::string FormValue(CURL* curl, const std::string& value) {
  char* escaped =
      curl_easy_escape(curl, value.data(), static_cast<int>(value.size()));
  if (escaped == nullptr) return "";
  std::string out(escaped);
  curl_free(escaped);
  return out;
}

// The token file's content, whitespace trimmed. Errors name the variable
// and the file; never the content.
absl::StatusOr<std::string> ReadToken(const std::string& token_file) {
  const std::string what =
      absl::StrCat("AWS_WEB_IDENTITY_TOKEN_FILE ", token_file);
  ScopedFd fd(::open(token_file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, what);
  // A projected service-account token is about a KiB; cap what is read.
  constexpr size_t kMaxTokenBytes = 64 << 10;
  std::string content;
  char buffer[4096];
  while (true) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, what);
    if (n == 0) break;
    content.append(buffer, static_cast<size_t>(n));
    if (content.size() > kMaxTokenBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": larger than ", kMaxTokenBytes, " bytes: not a token"));
    }
  }
  std::string token(absl::StripAsciiWhitespace(content));
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the file is empty"));
  }
  return token;
}

}  // namespace

AwsCredentialProvider::AwsCredentialProvider(
    AwsCredentialProviderOptions options)
    : options_(std::move(options)) {}

absl::StatusOr<AwsCredentials> AwsCredentialProvider::Get() {
  const EnvLookup env = options_.env;
  // Keys in the environment come first, as in the AWS SDKs.
  if (!Env(env, "AWS_ACCESS_KEY_ID").empty() ||
      !Env(env, "AWS_SECRET_ACCESS_KEY").empty()) {
    return FindAwsCredentials(env);
  }
  const std::string token_file = Env(env, "AWS_WEB_IDENTITY_TOKEN_FILE");
  if (token_file.empty()) return FindAwsCredentials(env);
  const std::string role_arn = Env(env, "AWS_ROLE_ARN");
  if (role_arn.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AWS_WEB_IDENTITY_TOKEN_FILE is set (", token_file,
        ") but AWS_ROLE_ARN is not: web-identity credentials need the role "
        "to assume"));
  }
  const absl::Time now = Now();
  const std::string key = absl::StrCat(token_file, "\n", role_arn);
  {
    absl::MutexLock lock(&mutex_);
    const uint64_t refreshes_seen = refreshes_;
    mutex_.Await(absl::Condition(
        +[](bool* refreshing) { return !*refreshing; }, &refreshing_));
    const bool have_cached = cached_.has_value() && cached_for_ == key;
    if (have_cached && now < cached_->expiration - options_.refresh_margin) {
      return *cached_;
    }
    if (refreshes_ != refreshes_seen && !last_refresh_error_.ok()) {
      // A refresh this call waited for has just failed: its answer is ours.
      if (have_cached && now < cached_->expiration) return *cached_;
      return last_refresh_error_;
    }
    refreshing_ = true;
  }
  // Up to the request timeout, with the mutex free: callers that need no
  // refresh are not held up by it.
  absl::StatusOr<AwsCredentials> fresh =
      AssumeRoleWithWebIdentity(token_file, role_arn);
  absl::MutexLock lock(&mutex_);
  refreshing_ = false;
  ++refreshes_;
  last_refresh_error_ = fresh.status();
  if (!fresh.ok()) {
    // Credentials inside their refresh margin still work until they expire.
    if (cached_.has_value() && cached_for_ == key &&
        now < cached_->expiration) {
      return *cached_;
    }
    return fresh.status();
  }
  cached_ = *fresh;
  cached_for_ = key;
  return fresh;
}

absl::Time AwsCredentialProvider::Now() const {
  return options_.now ? options_.now() : absl::Now();
}

std::string AwsCredentialProvider::StsEndpoint() const {
  std::string endpoint = Env(options_.env, "AWS_ENDPOINT_URL_STS");
  if (endpoint.empty()) endpoint = Env(options_.env, "AWS_ENDPOINT_URL");
  if (endpoint.empty()) {
    endpoint = absl::StrCat("https://sts.", options_.region, ".amazonaws.com");
  }
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  return endpoint + "/";
}

absl::StatusOr<AwsCredentials> AwsCredentialProvider::AssumeRoleWithWebIdentity(
    const std::string& token_file, const std::string& role_arn) {
  // Read again at every refresh: the kubelet rotates the projected token.
  absl::StatusOr<std::string> token = ReadToken(token_file);
  if (!token.ok()) return token.status();
  std::string session_name = Env(options_.env, "AWS_ROLE_SESSION_NAME");
  if (session_name.empty()) {
    session_name = absl::StrCat("warmstartd-", absl::ToUnixSeconds(Now()));
  }
  const std::string endpoint = StsEndpoint();
  const std::string what = absl::StrCat("web-identity credentials for ",
                                        role_arn, " from STS at ", endpoint);
  if (absl::Status init = CurlGlobalInit(); !init.ok()) return init;
  absl::StatusOr<CurlEasy> created = CurlEasy::Create();
  if (!created.ok()) return created.status();
  CurlEasy curl = *std::move(created);
  CURL* handle = curl.get();
  // The request is not signed: AssumeRoleWithWebIdentity authenticates with
  // the token alone.
  const std::string form = absl::StrCat(
      "Action=AssumeRoleWithWebIdentity&Version=2011-06-15",
      "&DurationSeconds=", absl::ToInt64Seconds(options_.session_duration),
      "&RoleArn=", FormValue(handle, role_arn),
      "&RoleSessionName=", FormValue(handle, session_name),
      "&WebIdentityToken=", FormValue(handle, *token));
  std::string answer;
  curl_easy_setopt(handle, CURLOPT_URL, endpoint.c_str());
  curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(handle, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(
      handle, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(
      handle, CURLOPT_TIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout)));
  if (!options_.ca_bundle.empty()) {
    curl_easy_setopt(handle, CURLOPT_CAINFO, options_.ca_bundle.c_str());
  }
  curl_easy_setopt(handle, CURLOPT_POSTFIELDS, form.c_str());
  curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE_LARGE,
                   static_cast<curl_off_t>(form.size()));
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, &AppendAnswer);
  curl_easy_setopt(handle, CURLOPT_WRITEDATA, &answer);
  CountStsRequest(options_.metrics);
  const CURLcode code = curl_easy_perform(handle);
  if (code != CURLE_OK) {
    return absl::UnavailableError(
        absl::StrCat(what, ": ", curl_easy_strerror(code)));
  }
  long http = 0;
  curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &http);
  if (http != 200) {
    // STS's error code and message name what it refused; the message is
    // scrubbed of the token in case a server echoes it.
    const std::string message =
        absl::StrReplaceAll(XmlValue(answer, "Message"), {{*token, "<token>"}});
    const std::string detail =
        absl::StrCat(what, ": HTTP ", http, " ", XmlValue(answer, "Code"),
                     message.empty() ? "" : ": ", message);
    if (http >= 500) return absl::UnavailableError(detail);
    return absl::PermissionDeniedError(detail);
  }
  AwsCredentials credentials;
  credentials.access_key_id = XmlValue(answer, "AccessKeyId");
  credentials.secret_access_key = XmlValue(answer, "SecretAccessKey");
  credentials.session_token = XmlValue(answer, "SessionToken");
  const std::string expiration = XmlValue(answer, "Expiration");
  std::string parse_error;
  if (credentials.access_key_id.empty() ||
      credentials.secret_access_key.empty() ||
      credentials.session_token.empty() ||
      !absl::ParseTime(absl::RFC3339_full, expiration, &credentials.expiration,
                       &parse_error)) {
    return absl::DataLossError(absl::StrCat(
        what,
        ": the answer holds no AccessKeyId, SecretAccessKey, SessionToken "
        "and RFC 3339 Expiration"));
  }
  credentials.origin = absl::StrCat("web identity ", role_arn);
  return credentials;
}

}  // namespace warmstart
