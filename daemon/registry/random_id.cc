#include "daemon/registry/random_id.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "common/check.h"

namespace warmstart {

std::string RandomId() {
  char bytes[16];
  size_t done = 0;
  while (done < sizeof(bytes)) {
    const ssize_t n = ::getrandom(bytes + done, sizeof(bytes) - done, 0);
    if (n < 0 && errno == EINTR) continue;
    // getrandom cannot fail for 16 bytes once the pool is initialised
    // (guaranteed after boot); without randomness an id would be guessable,
    // so there is nothing safe to fall back to.
    WS_CHECK(n >= 0) << "getrandom failed: " << std::strerror(errno);
    done += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(absl::string_view(bytes, sizeof(bytes)));
}

}  // namespace warmstart
