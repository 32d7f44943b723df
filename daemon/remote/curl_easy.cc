#include "daemon/remote/curl_easy.h"

#include "absl/base/call_once.h"
#include "absl/strings/str_cat.h"

namespace warmstart {

absl::Status CurlGlobalInit() {
  static absl::once_flag once;
  static CURLcode result = CURLE_OK;
  absl::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_ALL); });
  if (result != CURLE_OK) {
    return absl::InternalError(absl::StrCat("libcurl failed to initialise: ",
                                            curl_easy_strerror(result)));
  }
  return absl::OkStatus();
}

absl::StatusOr<CurlEasy> CurlEasy::Create() {
  CURL* handle = curl_easy_init();
  if (handle == nullptr) {
    return absl::ResourceExhaustedError("libcurl: curl_easy_init failed");
  }
  return CurlEasy(handle);
}

CurlEasy& CurlEasy::operator=(CurlEasy&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) curl_easy_cleanup(handle_);
    handle_ = other.handle_;
    other.handle_ = nullptr;
  }
  return *this;
}

CurlEasy::~CurlEasy() {
  if (handle_ != nullptr) curl_easy_cleanup(handle_);
}

}  // namespace warmstart
