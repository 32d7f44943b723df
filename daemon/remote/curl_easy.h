// CurlEasy: a move-only owner of one libcurl easy handle.
//
// A handle keeps its connections open between transfers, so a worker that
// reuses one CurlEasy for many requests to the same host reuses its TCP and
// TLS connection (HTTP keep-alive).
//
// Thread safety: a CurlEasy must be used by one thread at a time (libcurl's
// rule for easy handles). CurlGlobalInit may be called from any thread.
#ifndef WARMSTART_DAEMON_REMOTE_CURL_EASY_H_
#define WARMSTART_DAEMON_REMOTE_CURL_EASY_H_

#include <curl/curl.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace warmstart {

// Initialises libcurl once per process (curl_global_init is not thread-safe
// with every TLS backend; this wraps it in a once). Errors: Internal when
// libcurl cannot initialise.
absl::Status CurlGlobalInit();

class CurlEasy {
 public:
  // A handle from curl_easy_init. Errors: ResourceExhausted when libcurl
  // cannot allocate one. REQUIRES: CurlGlobalInit() returned OK.
  static absl::StatusOr<CurlEasy> Create();

  CurlEasy(CurlEasy&& other) noexcept : handle_(other.handle_) {
    other.handle_ = nullptr;
  }
  CurlEasy& operator=(CurlEasy&& other) noexcept;
  CurlEasy(const CurlEasy&) = delete;
  CurlEasy& operator=(const CurlEasy&) = delete;
  ~CurlEasy();

  // The handle; owned by this object. Null only after a move.
  CURL* get() const { return handle_; }

 private:
  explicit CurlEasy(CURL* handle) : handle_(handle) {}

  CURL* handle_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_REMOTE_CURL_EASY_H_
