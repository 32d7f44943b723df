#include "daemon/remote/remote_source.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "daemon/base/metrics.h"

namespace warmstart {
namespace {

constexpr unsigned kMaxConcurrency = 256;
// Requests queued ahead of the workers, per worker, before ReadAsync waits:
// bounds the queue, not memory (the bytes land in the caller's buffers).
constexpr size_t kQueuedPerWorker = 4;

// Each count is one look-up in `metrics` (RemoteOptions::metrics, never
// null once RemoteSources has it): cheap beside the request it counts.
void CountRefused(Metrics& metrics) {
  metrics
      .GetCounter(
          "warmstart_remote_refused_total",
          "Remote model URLs refused: not beneath an allowed remote source.")
      ->Add();
}

void CountRetry(Metrics& metrics) {
  metrics
      .GetCounter("warmstart_remote_retries_total",
                  "Remote requests retried after a 5xx, a reset, a timeout or "
                  "a short body.")
      ->Add();
}

void CountBytes(Metrics& metrics, uint64_t n) {
  metrics
      .GetCounter("warmstart_remote_read_bytes_total",
                  "Bytes received from remote sources.")
      ->Add(n);
}

std::string Env(EnvLookup env, const char* name) {
  const char* value = env(name);
  return value == nullptr ? std::string() : std::string(value);
}

const char* GetEnv(const char* name) { return std::getenv(name); }

// Percent-encodes a key for a URL path, leaving '/' (S3 keys are paths)
// and the unreserved characters, upper-case hex as SigV4's canonical URI
// has it.
std::string EncodeKey(absl::string_view key) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : key) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' ||
        c == '~' || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// What one transfer learnt from the response headers.
struct ResponseHeaders {
  std::string etag;
  std::string content_range;
  std::string last_modified;
};

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* headers = static_cast<ResponseHeaders*>(user);
  const absl::string_view line(data, size * count);
  const size_t colon = line.find(':');
  if (colon != absl::string_view::npos) {
    const std::string name = absl::AsciiStrToLower(
        absl::StripAsciiWhitespace(line.substr(0, colon)));
    const absl::string_view value =
        absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (name == "etag") headers->etag = std::string(value);
    if (name == "content-range") headers->content_range = std::string(value);
    if (name == "last-modified") headers->last_modified = std::string(value);
  } else if (absl::StartsWith(line, "HTTP/")) {
    // A new response (after a 100 Continue): forget the previous one.
    *headers = ResponseHeaders();
  }
  return size * count;
}

// Where a ranged GET writes: [next, end) of the caller's buffer.
struct Sink {
  char* next;
  char* end;
  CURL* curl;
};

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* sink = static_cast<Sink*>(user);
  const size_t n = size * count;
  // Only a 206's body is the range asked for; an error page (a 503's) is
  // dropped, and the status decides what happens next.
  long status = 0;
  curl_easy_getinfo(sink->curl, CURLINFO_RESPONSE_CODE, &status);
  // A 200 is the whole object, which a server that ignores Range sends:
  // stop at once (the transfer ends with CURLE_WRITE_ERROR) rather than
  // download it to throw away.
  if (status == 200) return 0;
  if (status != 206) return n;
  // A body longer than the range asked for: stop (libcurl then fails the
  // transfer with CURLE_WRITE_ERROR) rather than write past the buffer.
  if (n > static_cast<size_t>(sink->end - sink->next)) return 0;
  std::memcpy(sink->next, data, n);
  sink->next += n;
  return n;
}

size_t DiscardBody(char*, size_t size, size_t count, void*) {
  return size * count;
}

bool RetryableCurlError(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

bool RetryableHttpStatus(long status) {
  return status >= 500 || status == 429 || status == 408;
}

// The error for a final HTTP answer `status` to `what` on `url`.
absl::Status HttpError(const std::string& url, const std::string& what,
                       long status) {
  const std::string message = absl::StrCat(url, ": ", what, ": HTTP ", status);
  switch (status) {
    case 401:
    case 403:
      return absl::PermissionDeniedError(
          absl::StrCat(message, " (access refused: check the credentials)"));
    case 404:
      return absl::NotFoundError(absl::StrCat(message, " (no such object)"));
    case 412:
      return absl::DataLossError(
          absl::StrCat(message,
                       " (the object changed since it was opened: its ETag or "
                       "Last-Modified differs)"));
    case 416:
      return absl::DataLossError(absl::StrCat(
          message,
          " (range not satisfiable: the object is shorter than when "
          "it was opened)"));
    default:
      if (status >= 300 && status < 400) {
        return absl::InvalidArgumentError(
            absl::StrCat(message, " (redirects are not followed)"));
      }
      return absl::UnavailableError(message);
  }
}

// What one try of a request came to: its status, and whether the failure
// is worth another try (a 5xx, a reset, a timeout, a short body).
struct TryOutcome {
  absl::Status status;
  bool retryable = false;
};

// Runs `try_once(attempt)` for attempt 1, 2, ... until it succeeds, fails
// in a way not worth retrying, or `options.max_attempts` tries are spent;
// sleeps between tries with exponential backoff (initial_backoff, doubled
// up to max_backoff) and counts each retry. Returns the last try's status.
absl::Status RetryWithBackoff(
    const RemoteOptions& options,
    const std::function<TryOutcome(int attempt)>& try_once) {
  absl::Duration backoff = options.initial_backoff;
  for (int attempt = 1;; ++attempt) {
    TryOutcome outcome = try_once(attempt);
    if (!outcome.retryable || attempt >= options.max_attempts) {
      return std::move(outcome.status);
    }
    CountRetry(*options.metrics);
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, options.max_backoff);
  }
}

// The outcome of a transfer libcurl could not complete (`code`).
TryOutcome TransferFailed(const std::string& url, absl::string_view what,
                          CURLcode code, int attempt) {
  return {absl::UnavailableError(absl::StrCat(
              url, ": ", what, ": ", curl_easy_strerror(code), " (after ",
              attempt, attempt == 1 ? " try)" : " tries)")),
          RetryableCurlError(code)};
}

// The outcome of a final HTTP answer that is not the one expected.
TryOutcome HttpFailed(const std::string& url, const std::string& what,
                      long status) {
  return {HttpError(url, what, status), RetryableHttpStatus(status)};
}

}  // namespace

// One request: a HEAD or a ranged GET on `curl`, with the object's signing.
struct RequestSpec {
  const std::string* http_url;
  bool s3;
  const AwsCredentials* credentials;
  std::string sigv4;  // "aws:amz:<region>:s3"
  const std::string* ca_bundle;
  const RemoteOptions* options;
};

namespace {

// Sets up `curl` for `spec`; the returned header list must outlive the
// transfer (the caller frees it).
curl_slist* Prepare(CURL* curl, const RequestSpec& spec) {
  curl_easy_reset(curl);
  curl_easy_setopt(curl, CURLOPT_URL, spec.http_url->c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  // A redirect could lead outside the allowed prefixes: never followed.
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(
                       spec.options->connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(
      curl, CURLOPT_LOW_SPEED_TIME,
      std::max<long>(1, absl::ToInt64Seconds(spec.options->stall_timeout)));
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  // One connection per worker: a handle's cache would otherwise keep up to
  // five, dead ones included after a server restart, each a descriptor.
  curl_easy_setopt(curl, CURLOPT_MAXCONNECTS, 1L);
  if (!spec.ca_bundle->empty()) {
    curl_easy_setopt(curl, CURLOPT_CAINFO, spec.ca_bundle->c_str());
  }
  curl_slist* headers = nullptr;
  if (spec.s3) {
    curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, spec.sigv4.c_str());
    // Username and password separately: a secret may contain ':'.
    curl_easy_setopt(curl, CURLOPT_USERNAME,
                     spec.credentials->access_key_id.c_str());
    curl_easy_setopt(curl, CURLOPT_PASSWORD,
                     spec.credentials->secret_access_key.c_str());
    // S3 wants the payload hash header; a GET or HEAD has no payload.
    headers = curl_slist_append(
        headers,
        "x-amz-content-sha256: "
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    if (!spec.credentials->session_token.empty()) {
      headers = curl_slist_append(headers,
                                  absl::StrCat("x-amz-security-token: ",
                                               spec.credentials->session_token)
                                      .c_str());
    }
  }
  return headers;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RemoteSources>> RemoteSources::Create(
    RemoteOptions options) {
  if (options.concurrency == 0 || options.concurrency > kMaxConcurrency) {
    return absl::InvalidArgumentError(
        absl::StrCat("remote concurrency ", options.concurrency,
                     ": must be 1 to ", kMaxConcurrency));
  }
  for (const std::string& prefix : options.allowed_prefixes) {
    if (!IsRemoteUrl(prefix)) {
      return absl::InvalidArgumentError(
          absl::StrCat("remote source \"", prefix,
                       "\": must start with http://, https:// or s3://"));
    }
    if (prefix.find('@') != std::string::npos) {
      return absl::InvalidArgumentError(
          "remote source: a prefix must not hold user information ('@'); "
          "credentials come from the environment");
    }
  }
  if (options.max_attempts < 1) options.max_attempts = 1;
  if (options.env == nullptr) options.env = &GetEnv;
  WS_RETURN_IF_ERROR(CurlGlobalInit());
  std::vector<CurlEasy> handles;
  for (unsigned i = 0; i < options.concurrency; ++i) {
    WS_ASSIGN_OR_RETURN(CurlEasy curl, CurlEasy::Create());
    handles.push_back(std::move(curl));
  }
  std::unique_ptr<RemoteSources> sources(new RemoteSources(std::move(options)));
  for (CurlEasy& curl : handles) {
    sources->workers_.emplace_back(
        [s = sources.get(), c = std::move(curl)]() mutable {
          s->Work(std::move(c));
        });
  }
  return sources;
}

RemoteSources::RemoteSources(RemoteOptions options)
    : options_(std::move(options)) {
  options_.metrics = &GivenOrUnexported(options_.metrics, unexported_metrics_);
  const EnvLookup env = options_.env;
  region_ = options_.s3_region;
  if (region_.empty()) region_ = Env(env, "AWS_REGION");
  if (region_.empty()) region_ = Env(env, "AWS_DEFAULT_REGION");
  if (region_.empty()) region_ = "us-east-1";
  endpoint_ = options_.s3_endpoint;
  if (endpoint_.empty()) endpoint_ = Env(env, "AWS_ENDPOINT_URL_S3");
  if (endpoint_.empty()) endpoint_ = Env(env, "AWS_ENDPOINT_URL");
  const bool overridden = !endpoint_.empty();
  if (!overridden) {
    endpoint_ = absl::StrCat("https://s3.", region_, ".amazonaws.com");
  }
  while (!endpoint_.empty() && endpoint_.back() == '/') endpoint_.pop_back();
  RemoteOptions::Addressing addressing = options_.s3_addressing;
  if (addressing == RemoteOptions::Addressing::kAuto) {
    const std::string style = Env(env, "AWS_S3_ADDRESSING_STYLE");
    if (style == "path") addressing = RemoteOptions::Addressing::kPath;
    if (style == "virtual") {
      addressing = RemoteOptions::Addressing::kVirtualHost;
    }
  }
  path_style_ = addressing == RemoteOptions::Addressing::kAuto
                    ? overridden
                    : addressing == RemoteOptions::Addressing::kPath;
  ca_bundle_ = options_.ca_bundle;
  if (ca_bundle_.empty()) ca_bundle_ = Env(env, "AWS_CA_BUNDLE");
  AwsCredentialProviderOptions credential_options;
  credential_options.env = env;
  credential_options.region = region_;
  credential_options.ca_bundle = ca_bundle_;
  credential_options.connect_timeout = options_.connect_timeout;
  credential_options.now = options_.now;
  credential_options.metrics = options_.metrics;
  credential_provider_ =
      std::make_unique<AwsCredentialProvider>(std::move(credential_options));
}

RemoteSources::~RemoteSources() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  for (std::thread& worker : workers_) worker.join();
}

void RemoteSources::Enqueue(Job job) const {
  absl::MutexLock lock(&mutex_);
  const size_t limit = kQueuedPerWorker * workers_.size();
  auto has_room = [this, limit]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return queue_.size() < limit;
  };
  mutex_.Await(absl::Condition(&has_room));
  queue_.push_back(std::move(job));
}

void RemoteSources::Work(CurlEasy curl) {
  while (true) {
    Job job;
    {
      absl::MutexLock lock(&mutex_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || !queue_.empty();
      };
      mutex_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job(curl);
  }
}

absl::StatusOr<AwsCredentials> RemoteSources::S3Credentials(
    const std::string& url) const {
  absl::StatusOr<AwsCredentials> found = credential_provider_->Get();
  if (!found.ok()) {
    return absl::Status(found.status().code(),
                        absl::StrCat(url, ": ", found.status().message()));
  }
  return found;
}

absl::Status RemoteSources::CheckAllowed(const std::string& url) const {
  for (const std::string& prefix : options_.allowed_prefixes) {
    if (!absl::StartsWith(url, prefix)) continue;
    if (url.size() == prefix.size() || prefix.back() == '/' ||
        url[prefix.size()] == '/') {
      return absl::OkStatus();
    }
  }
  CountRefused(*options_.metrics);
  return absl::PermissionDeniedError(absl::StrCat(
      url, ": not beneath an allowed remote source (",
      options_.allowed_prefixes.empty()
          ? std::string("none configured: remote_sources in the config or "
                        "--remote_source PREFIX")
          : absl::StrJoin(options_.allowed_prefixes, ", "),
      ")"));
}

absl::StatusOr<std::pair<std::string, bool>> RemoteSources::Resolve(
    const std::string& url) const {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos || !IsRemoteUrl(url)) {
    return absl::InvalidArgumentError(
        absl::StrCat(url, ": not an http://, https:// or s3:// URL"));
  }
  const std::string scheme = url.substr(0, scheme_end);
  const std::string rest = url.substr(scheme_end + 3);
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  if (authority.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        url, ": the URL names no ", scheme == "s3" ? "bucket" : "host"));
  }
  if (authority.find('@') != std::string::npos) {
    // Not echoed: the part before '@' would be a credential.
    return absl::InvalidArgumentError(
        absl::StrCat(scheme,
                     "://...: a URL must not hold user information "
                     "('@'); credentials come from the environment"));
  }
  if (url.find_first_of("?#") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(url, ": a model URL must not hold a query or fragment"));
  }
  const std::string path =
      slash == std::string::npos ? std::string() : rest.substr(slash + 1);
  for (absl::string_view segment : absl::StrSplit(path, '/')) {
    if (segment == "." || segment == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(url, ": '.' and '..' segments are not allowed"));
    }
  }
  if (path.empty() || path.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(url, ": the URL names no object (it ends with '/')"));
  }
  if (scheme != "s3") return std::make_pair(url, false);
  const std::string& bucket = authority;
  if (path_style_) {
    return std::make_pair(
        absl::StrCat(endpoint_, "/", bucket, "/", EncodeKey(path)), true);
  }
  const size_t host_start = endpoint_.find("://");
  if (host_start == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("S3 endpoint \"", endpoint_,
                     "\": must start with http:// or https://"));
  }
  return std::make_pair(
      absl::StrCat(endpoint_.substr(0, host_start + 3), bucket, ".",
                   endpoint_.substr(host_start + 3), "/", EncodeKey(path)),
      true);
}

absl::StatusOr<std::unique_ptr<RemoteObject>> RemoteSources::Open(
    const std::string& url) const {
  WS_ASSIGN_OR_RETURN(auto resolved, Resolve(url));
  WS_RETURN_IF_ERROR(CheckAllowed(url));
  AwsCredentials credentials;
  if (resolved.second) {
    WS_ASSIGN_OR_RETURN(credentials, S3Credentials(url));
  }
  RequestSpec spec{&resolved.first, resolved.second,
                   &credentials,    absl::StrCat("aws:amz:", region_, ":s3"),
                   &ca_bundle_,     &options_};
  absl::Status status;
  uint64_t size = 0;
  std::string etag;
  std::string last_modified;
  absl::Notification done;
  Enqueue([&](CurlEasy& curl) {
    status = RetryWithBackoff(options_, [&](int attempt) -> TryOutcome {
      curl_slist* headers = Prepare(curl.get(), spec);
      ResponseHeaders response;
      curl_easy_setopt(curl.get(), CURLOPT_NOBODY, 1L);
      curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers);
      curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, &OnHeader);
      curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &response);
      curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &DiscardBody);
      const CURLcode code = curl_easy_perform(curl.get());
      curl_slist_free_all(headers);
      long http = 0;
      curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &http);
      if (code != CURLE_OK) return TransferFailed(url, "HEAD", code, attempt);
      if (http != 200) return HttpFailed(url, "HEAD", http);
      curl_off_t length = -1;
      curl_easy_getinfo(curl.get(), CURLINFO_CONTENT_LENGTH_DOWNLOAD_T,
                        &length);
      if (length < 0) {
        return {absl::InvalidArgumentError(
            absl::StrCat(url, ": HEAD: the server sent no Content-Length"))};
      }
      size = static_cast<uint64_t>(length);
      etag = response.etag;
      last_modified = response.last_modified;
      return {absl::OkStatus()};
    });
    done.Notify();
  });
  done.WaitForNotification();
  WS_RETURN_IF_ERROR(status);
  return std::unique_ptr<RemoteObject>(new RemoteObject(
      this, url, resolved.first, resolved.second, std::move(credentials), size,
      std::move(etag), std::move(last_modified)));
}

namespace {

// Percent-encodes a query value as SigV4's canonical query string wants it
// (everything but the unreserved characters, '/' included).
std::string EncodeQueryValue(absl::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string XmlUnescape(absl::string_view text) {
  return absl::StrReplaceAll(text, {{"&lt;", "<"},
                                    {"&gt;", ">"},
                                    {"&quot;", "\""},
                                    {"&apos;", "'"},
                                    {"&amp;", "&"}});
}

// The text of every <tag>...</tag> in `xml`, in order.
std::vector<std::string> XmlValues(absl::string_view xml,
                                   absl::string_view tag) {
  const std::string open = absl::StrCat("<", tag, ">");
  const std::string close = absl::StrCat("</", tag, ">");
  std::vector<std::string> values;
  size_t at = 0;
  while ((at = xml.find(open, at)) != absl::string_view::npos) {
    const size_t start = at + open.size();
    const size_t end = xml.find(close, start);
    if (end == absl::string_view::npos) break;
    values.push_back(XmlUnescape(xml.substr(start, end - start)));
    at = end + close.size();
  }
  return values;
}

size_t AppendBody(char* data, size_t size, size_t count, void* user) {
  auto* body = static_cast<std::string*>(user);
  // A listing page is at most 1000 keys: a few hundred KiB.
  constexpr size_t kMaxListingBytes = 64 << 20;
  if (body->size() + size * count > kMaxListingBytes) return 0;
  body->append(data, size * count);
  return size * count;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> RemoteSources::ListUrl(
    const std::string& url) const {
  if (!absl::StartsWith(url, "s3://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        url,
        ": HTTP servers cannot list a directory: name the weight file "
        "or the *.index.json shard index"));
  }
  if (url.back() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(url, ": a prefix to list must end with '/'"));
  }
  WS_RETURN_IF_ERROR(CheckAllowed(url));
  const std::string rest = url.substr(5);
  const size_t slash = rest.find('/');
  const std::string bucket = rest.substr(0, slash);
  const std::string prefix = rest.substr(slash + 1);
  if (bucket.empty() || bucket.find('@') != std::string::npos ||
      url.find_first_of("?#") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("s3://...: not a valid bucket and prefix to list"));
  }
  WS_ASSIGN_OR_RETURN(const AwsCredentials credentials, S3Credentials(url));
  // The bucket's own URL, path-style or virtual-host as for objects.
  std::string bucket_url;
  if (path_style_) {
    bucket_url = absl::StrCat(endpoint_, "/", bucket);
  } else {
    const size_t host_start = endpoint_.find("://");
    bucket_url = absl::StrCat(endpoint_.substr(0, host_start + 3), bucket, ".",
                              endpoint_.substr(host_start + 3), "/");
  }
  std::vector<std::string> urls;
  std::string token;
  while (true) {
    // libcurl signs the query as written: SigV4 wants it sorted by name and
    // fully encoded.
    std::string query;
    if (!token.empty()) {
      absl::StrAppend(&query, "continuation-token=", EncodeQueryValue(token),
                      "&");
    }
    absl::StrAppend(
        &query, "delimiter=%2F&list-type=2&prefix=", EncodeQueryValue(prefix));
    const std::string request_url = absl::StrCat(bucket_url, "?", query);
    RequestSpec spec{&request_url, true,
                     &credentials, absl::StrCat("aws:amz:", region_, ":s3"),
                     &ca_bundle_,  &options_};
    std::string body;
    absl::Status status;
    absl::Notification done;
    Enqueue([&](CurlEasy& curl) {
      status = RetryWithBackoff(options_, [&](int attempt) -> TryOutcome {
        body.clear();
        curl_slist* headers = Prepare(curl.get(), spec);
        curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &AppendBody);
        curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &body);
        const CURLcode code = curl_easy_perform(curl.get());
        curl_slist_free_all(headers);
        long http = 0;
        curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &http);
        if (code != CURLE_OK) {
          return TransferFailed(url, "list", code, attempt);
        }
        if (http != 200) return HttpFailed(url, "list", http);
        return {absl::OkStatus()};
      });
      done.Notify();
    });
    done.WaitForNotification();
    WS_RETURN_IF_ERROR(status);
    if (body.find("<ListBucketResult") == std::string::npos) {
      return absl::DataLossError(absl::StrCat(
          url, ": list: the answer is not a ListObjectsV2 result"));
    }
    for (const std::string& key : XmlValues(body, "Key")) {
      // With the delimiter, keys are directly beneath the prefix.
      if (absl::StartsWith(key, prefix) && key.size() > prefix.size()) {
        urls.push_back(absl::StrCat("s3://", bucket, "/", key));
      }
    }
    const std::vector<std::string> truncated = XmlValues(body, "IsTruncated");
    const std::vector<std::string> next =
        XmlValues(body, "NextContinuationToken");
    if (truncated.empty() || truncated[0] != "true" || next.empty()) break;
    token = next[0];
  }
  std::sort(urls.begin(), urls.end());
  return urls;
}

absl::StatusOr<std::unique_ptr<ByteSource>> RemoteSources::OpenUrl(
    const std::string& url) const {
  WS_ASSIGN_OR_RETURN(std::unique_ptr<RemoteObject> object, Open(url));
  return std::unique_ptr<ByteSource>(std::move(object));
}

namespace {

// Parts of one ReadAsync: the first error wins; `done` runs when the last
// part finishes.
struct PartGroup {
  absl::Mutex mutex;
  int pending ABSL_GUARDED_BY(mutex) = 0;
  absl::Status first ABSL_GUARDED_BY(mutex);
  std::function<void(absl::Status)> done;

  void Finish(absl::Status status) {
    absl::Status result;
    {
      absl::MutexLock lock(&mutex);
      if (first.ok() && !status.ok()) first = std::move(status);
      if (--pending > 0) return;
      result = first;
    }
    done(std::move(result));
  }
};

// Checks a 206 answer's Content-Range ("bytes a-b/total") against the
// object's size.
absl::Status CheckContentRange(const std::string& url,
                               const std::string& content_range,
                               uint64_t size) {
  const size_t slash = content_range.rfind('/');
  uint64_t total = 0;
  if (slash == std::string::npos ||
      !absl::SimpleAtoi(content_range.substr(slash + 1), &total)) {
    return absl::DataLossError(absl::StrCat(
        url, ": GET: a partial answer without a Content-Range total (\"",
        content_range, "\")"));
  }
  if (total != size) {
    return absl::DataLossError(
        absl::StrCat(url, ": the object changed since it was opened: size ",
                     size, " -> ", total));
  }
  return absl::OkStatus();
}

// What a HEAD fixed about an object: reads must find it unchanged.
struct ObjectIdentity {
  const std::string& url;
  uint64_t size;
  const std::string& etag;           // Empty when the server sent none.
  bool weak_etag;                    // etag is W/"...".
  const std::string& last_modified;  // Empty when the server sent none.
};

// One try of a ranged GET of bytes [from, last] of `object` into `sink`,
// which holds the bytes of the earlier tries before `sink.next`.
TryOutcome GetRangeOnce(CURL* curl, const RequestSpec& spec,
                        const ObjectIdentity& object, uint64_t from,
                        uint64_t last, int attempt, Sink& sink) {
  const std::string& url = object.url;
  const std::string& etag = object.etag;
  const uint64_t size = object.size;
  curl_slist* headers = Prepare(curl, spec);
  headers = curl_slist_append(
      headers, absl::StrCat("Range: bytes=", from, "-", last).c_str());
  if (!etag.empty() && !object.weak_etag) {
    headers = curl_slist_append(headers, ("If-Match: " + etag).c_str());
  } else if (!object.last_modified.empty()) {
    // A weak ETag never passes If-Match's strong comparison (a compliant
    // server answers 412): the date is the precondition instead, and the
    // ETag and size of each answer are still compared below.
    headers = curl_slist_append(
        headers, ("If-Unmodified-Since: " + object.last_modified).c_str());
  }
  ResponseHeaders response;
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &response);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  char* const before = sink.next;
  const CURLcode code = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  long http = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
  CountBytes(*spec.options->metrics, sink.next - before);
  const std::string what = absl::StrCat("GET bytes ", from, "-", last);
  if (http == 200) {
    return {absl::FailedPreconditionError(absl::StrCat(
        url, ": ", what,
        ": the server ignored the Range header (HTTP 200): it must serve "
        "byte ranges"))};
  }
  if (http != 0 && http != 206) return HttpFailed(url, what, http);
  if (http == 206 && !response.etag.empty() && !etag.empty() &&
      response.etag != etag) {
    return {absl::DataLossError(
        absl::StrCat(url, ": the object changed since it was opened: ETag ",
                     etag, " -> ", response.etag))};
  }
  if (http == 206) {
    absl::Status range = CheckContentRange(url, response.content_range, size);
    if (!range.ok()) return {std::move(range)};
  }
  if (code == CURLE_WRITE_ERROR) {
    return {absl::DataLossError(absl::StrCat(
        url, ": ", what, ": the server sent more bytes than asked"))};
  }
  if (code != CURLE_OK) return TransferFailed(url, what, code, attempt);
  if (sink.next != sink.end) {
    return {absl::DataLossError(
                absl::StrCat(url, ": ", what, ": the body ended at byte ",
                             from + (sink.next - before), " (after ", attempt,
                             attempt == 1 ? " try)" : " tries)")),
            /*retryable=*/true};
  }
  return {absl::OkStatus()};
}

}  // namespace

void RemoteObject::ReadAsync(uint64_t offset, uint64_t length, char* out,
                             std::function<void(absl::Status)> done) const {
  if (offset > size_ || length > size_ - offset) {
    done(absl::OutOfRangeError(absl::StrCat(
        url_, ": at byte ", offset, ": reading ", length,
        " bytes passes the end of the object (", size_, " bytes)")));
    return;
  }
  if (length == 0) {
    done(absl::OkStatus());
    return;
  }
  const RemoteOptions& options = sources_->options_;
  const uint64_t parts_wanted = options.concurrency;
  const uint64_t part_bytes = std::max<uint64_t>(
      options.min_part_bytes, (length + parts_wanted - 1) / parts_wanted);
  const uint64_t parts = (length + part_bytes - 1) / part_bytes;
  auto group = std::make_shared<PartGroup>();
  group->done = std::move(done);
  {
    absl::MutexLock lock(&group->mutex);
    group->pending = static_cast<int>(parts);
  }
  for (uint64_t p = 0; p < parts; ++p) {
    const uint64_t part_offset = offset + p * part_bytes;
    const uint64_t part_length =
        std::min(part_bytes, offset + length - part_offset);
    char* const part_out = out + (part_offset - offset);
    sources_->Enqueue([this, group, part_offset, part_length,
                       part_out](CurlEasy& curl) {
      const RemoteOptions& options = sources_->options_;
      AwsCredentials current = credentials_;
      RequestSpec spec{&http_url_,
                       s3_,
                       &current,
                       absl::StrCat("aws:amz:", sources_->region_, ":s3"),
                       &sources_->ca_bundle_,
                       &options};
      Sink sink{part_out, part_out + part_length, curl.get()};
      absl::Status status =
          RetryWithBackoff(options, [&](int attempt) -> TryOutcome {
            // Temporary credentials may have been renewed since the open
            // (a long load): the provider hands out its current ones.
            if (s3_ && credentials_.expiration != absl::InfiniteFuture()) {
              absl::StatusOr<AwsCredentials> renewed =
                  sources_->S3Credentials(url_);
              if (!renewed.ok()) return {renewed.status()};
              current = *std::move(renewed);
            }
            // Resume where the last try stopped.
            const uint64_t from = part_offset + (sink.next - part_out);
            const ObjectIdentity object{url_, size_, etag_, weak_etag(),
                                        last_modified_};
            return GetRangeOnce(curl.get(), spec, object, from,
                                part_offset + part_length - 1, attempt, sink);
          });
      group->Finish(std::move(status));
    });
  }
}

absl::Status RemoteObject::ReadAt(uint64_t offset, uint64_t length,
                                  char* out) const {
  absl::Status result;
  absl::Notification done;
  ReadAsync(offset, length, out, [&](absl::Status status) {
    result = std::move(status);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

}  // namespace warmstart
