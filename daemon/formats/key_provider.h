// KeyProvider: the key for each encrypted tensor, from one key or from a
// password (each file's stored Argon2id parameters derive its key).
//
// Thread safety: thread-safe; KeyFor may be called concurrently.
#ifndef WARMSTART_DAEMON_FORMATS_KEY_PROVIDER_H_
#define WARMSTART_DAEMON_FORMATS_KEY_PROVIDER_H_

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/formats/key_source.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

class KeyProvider {
 public:
  KeyProvider(const KeyProvider&) = delete;
  KeyProvider& operator=(const KeyProvider&) = delete;

  // No key: reading an encrypted tensor fails with "a key is needed".
  KeyProvider() = default;
  explicit KeyProvider(KeyMaterial key)
      : key_(std::make_unique<KeyMaterial>(std::move(key))) {}
  explicit KeyProvider(Password password)
      : password_(std::make_unique<Password>(std::move(password))) {}

  // The key for `tensor` of the file at `path`: null when the tensor is not
  // encrypted or no key or password was given. Derives a password's key
  // once per distinct parameter set (Argon2id is slow on purpose).
  // Errors: InvalidArgument when only a password was given and the file
  // was encrypted with a raw key, or the file's derivation parameters are
  // refused (over the caps of KdfLimits), naming the file and tensor.
  // The returned key lives as long as this provider.
  absl::StatusOr<const KeyMaterial*> KeyFor(const std::string& path,
                                            const TensorEntry& tensor);

 private:
  std::unique_ptr<KeyMaterial> key_;
  std::unique_ptr<Password> password_;
  absl::Mutex mutex_;
  std::map<std::string, std::unique_ptr<KeyMaterial>> derived_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_KEY_PROVIDER_H_
