// RemoteSources: model files named by URL, read from HTTP(S) servers and
// S3-compatible object stores with libcurl.
//
// URLs: "https://host[:port]/path", "http://host[:port]/path" and
// "s3://bucket/key". An s3:// URL becomes an HTTPS request to the endpoint
// (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or https://s3.<region>.amazonaws.com)
// signed with SigV4 by libcurl (CURLOPT_AWS_SIGV4), path-style
// ("<endpoint>/<bucket>/<key>") or virtual-host ("<bucket>.<endpoint host>")
// as RemoteOptions says. Only URLs beneath an allowed prefix open; the others
// are refused (PermissionDenied) and counted in
// warmstart_remote_refused_total.
//
// Opening an object sends one HEAD (size and ETag) and reads nothing else,
// so a checkpoint's headers are parsed, and bad input refused, before any
// bulk transfer. Reads are ranged GETs carrying If-Match: <ETag> (for a weak
// ETag, If-Unmodified-Since: <Last-Modified>; see weak_etag()); every
// answer must be 206 with the object's total size and ETag, so an object
// replaced or truncated while it is read fails the read (DataLoss) instead of
// mixing two versions. Transfers that fail with a 5xx or 429 answer, a reset
// or refused connection, a timeout or a short body are retried with
// exponential backoff, resuming at the first byte not yet received.
//
// Requests run on `concurrency` worker threads, each with its own libcurl
// handle kept for the object store's lifetime, so connections are reused.
// ReadAsync splits a range into up to `concurrency` parts fetched in
// parallel straight into the caller's memory (a staging slab): memory use is
// bounded by the caller's buffers, whatever the object's size.
//
// S3 credentials come from AwsCredentialProvider's chain (environment keys,
// a web-identity token, the shared credentials file; see
// aws_credential_provider.h); temporary ones are renewed before they expire,
// also between the parts of a long load. Credentials never appear in logs,
// errors or metrics: errors name the URL as the user wrote it (URLs with user
// information are refused) and the HTTP status.
//
// Thread safety: RemoteSources and RemoteObject are safe to use from any
// number of threads. A RemoteObject must not outlive its RemoteSources.
#ifndef WARMSTART_DAEMON_REMOTE_REMOTE_SOURCE_H_
#define WARMSTART_DAEMON_REMOTE_REMOTE_SOURCE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/metrics.h"
#include "daemon/formats/byte_source.h"
#include "daemon/remote/aws_credential_provider.h"
#include "daemon/remote/aws_credentials.h"
#include "daemon/remote/curl_easy.h"

namespace warmstart {

struct RemoteOptions {
  // URL prefixes that may be read ("https://models.example/llama/",
  // "s3://bucket/prefix"). A URL is allowed when a prefix equals it or is
  // followed in it by '/' (or ends in '/'). Empty: nothing is allowed.
  std::vector<std::string> allowed_prefixes;
  // Parallel requests (worker threads, each with one connection).
  unsigned concurrency = 8;
  // Smallest part a range is split into for parallel GETs.
  uint64_t min_part_bytes = uint64_t{1} << 20;
  // Tries per request (the first and the retries) on retryable failures.
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration connect_timeout = absl::Seconds(10);
  // A transfer slower than 1 byte/s for this long is timed out (a stalled
  // server) and retried.
  absl::Duration stall_timeout = absl::Seconds(30);
  // PEM CA bundle for HTTPS; empty: AWS_CA_BUNDLE, then libcurl's default.
  std::string ca_bundle;
  // S3: the endpoint ("http://127.0.0.1:9000"); empty: AWS_ENDPOINT_URL_S3,
  // AWS_ENDPOINT_URL, then https://s3.<region>.amazonaws.com.
  std::string s3_endpoint;
  // S3 region; empty: AWS_REGION, AWS_DEFAULT_REGION, then "us-east-1".
  std::string s3_region;
  enum class Addressing { kAuto, kPath, kVirtualHost };
  // kAuto: path-style for an endpoint override (S3-compatible servers),
  // virtual-host for AWS. AWS_S3_ADDRESSING_STYLE=path|virtual sets it.
  Addressing s3_addressing = Addressing::kAuto;
  // Lookups of the environment (AWS_*, HOME); getenv by default.
  EnvLookup env = nullptr;
  // The clock temporary S3 credentials expire by; null means absl::Now.
  std::function<absl::Time()> now;
  // Where refused URLs, retries, bytes received and STS requests are
  // counted. Not owned; must outlive the RemoteSources. Null: counted in a
  // Metrics of their own, which nobody exports.
  Metrics* metrics = nullptr;
};

class RemoteSources;

// One object, opened with a HEAD: its size and ETag are fixed from then on.
class RemoteObject : public ByteSource {
 public:
  // The URL as written (no credentials).
  const std::string& name() const override { return url_; }
  uint64_t size() const override { return size_; }
  // The ETag as the server sent it (quotes included); empty when it sent
  // none (then changes are detected by size alone).
  const std::string& etag() const { return etag_; }
  // Whether the ETag is weak (W/"..."): If-Match compares ETags strongly, so
  // a weak one never matches (RFC 9110 13.1.1). Reads of such an object send
  // If-Unmodified-Since with the HEAD's Last-Modified instead, and still
  // fail when an answer's ETag or size differs.
  bool weak_etag() const { return etag_.rfind("W/", 0) == 0; }
  // The fingerprint that tells whether a later load is the same object,
  // with the size: the ETag. A weak ETag makes a weaker fingerprint: a
  // server may keep it across changes it deems equivalent.
  std::string version() const override { return etag_; }

  // Reads [offset, offset + length) into `out`, in parallel parts; blocks.
  // Errors: OutOfRange past the end; see ReadAsync.
  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      char* out) const override;

  // Starts reading [offset, offset + length) into `out` (which must stay
  // valid until `done` runs); `done` runs once, on a worker thread, with OK
  // when every byte arrived, or the first error: DataLoss for an object that
  // changed (412, another ETag or size) or a body cut short after the
  // retries; Unavailable for a server that kept failing (5xx, resets,
  // timeouts); PermissionDenied (401/403) and NotFound (404) at once;
  // OutOfRange for a range past the end. May block while the workers' queue
  // is long. REQUIRES: not called from a `done` callback.
  void ReadAsync(uint64_t offset, uint64_t length, char* out,
                 std::function<void(absl::Status)> done) const;

 private:
  friend class RemoteSources;
  RemoteObject(const RemoteSources* sources, std::string url,
               std::string http_url, bool s3, AwsCredentials credentials,
               uint64_t size, std::string etag, std::string last_modified)
      : sources_(sources),
        url_(std::move(url)),
        http_url_(std::move(http_url)),
        s3_(s3),
        credentials_(std::move(credentials)),
        size_(size),
        etag_(std::move(etag)),
        last_modified_(std::move(last_modified)) {}

  const RemoteSources* const sources_;
  const std::string url_;
  const std::string http_url_;
  const bool s3_;
  const AwsCredentials credentials_;
  const uint64_t size_;
  const std::string etag_;
  const std::string last_modified_;  // The HEAD's; empty when none.
};

class RemoteSources : public UrlSourceOpener {
 public:
  // Starts the worker threads. Errors: InvalidArgument naming the option
  // (concurrency 0 or over 256, a prefix that is not an http(s):// or s3://
  // URL); Internal when libcurl cannot start.
  static absl::StatusOr<std::unique_ptr<RemoteSources>> Create(
      RemoteOptions options);
  // Finishes the queued requests, then stops the workers.
  ~RemoteSources() override;

  // Opens `url` with a HEAD. Errors: PermissionDenied "<url>: not beneath an
  // allowed remote source (...)" (and the refusal is counted);
  // InvalidArgument for a malformed URL; Unauthenticated when S3 credentials
  // cannot be found; the HEAD's errors as ReadAsync describes them.
  absl::StatusOr<std::unique_ptr<RemoteObject>> Open(
      const std::string& url) const;

  // UrlSourceOpener.
  absl::StatusOr<std::unique_ptr<ByteSource>> OpenUrl(
      const std::string& url) const override;
  // Lists "s3://bucket/prefix/" with ListObjectsV2 (delimiter '/', every
  // page). Errors: InvalidArgument for an http(s):// URL (HTTP has no
  // listing: name the file or the shard index) or a URL not ending in '/';
  // the allow-list's refusal; the HTTP errors of ReadAsync; DataLoss for an
  // answer that is not a ListObjectsV2 result.
  absl::StatusOr<std::vector<std::string>> ListUrl(
      const std::string& url) const override;

  const RemoteOptions& options() const { return options_; }

 private:
  friend class RemoteObject;
  using Job = std::function<void(CurlEasy&)>;

  explicit RemoteSources(RemoteOptions options);
  absl::Status CheckAllowed(const std::string& url) const;
  // The HTTP(S) URL for `url`, and whether it is S3.
  absl::StatusOr<std::pair<std::string, bool>> Resolve(
      const std::string& url) const;
  // The current S3 credentials; errors are the provider's, prefixed with
  // `url`.
  absl::StatusOr<AwsCredentials> S3Credentials(const std::string& url) const;
  void Enqueue(Job job) const;
  void Work(CurlEasy curl);

  // Set when no Metrics was given; options_.metrics points into it then.
  std::unique_ptr<Metrics> unexported_metrics_;
  RemoteOptions options_;  // options_.metrics is never null.
  std::string region_;
  std::string endpoint_;
  bool path_style_ = true;
  std::string ca_bundle_;
  // Thread-safe; keeps web-identity credentials between requests.
  std::unique_ptr<AwsCredentialProvider> credential_provider_;

  mutable absl::Mutex mutex_;
  mutable std::deque<Job> queue_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_REMOTE_REMOTE_SOURCE_H_
