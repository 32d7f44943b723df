#include "daemon/formats/key_provider.h"

#include "absl/strings/str_cat.h"

namespace warmstart {

absl::StatusOr<const KeyMaterial*> KeyProvider::KeyFor(
    const std::string& path, const TensorEntry& tensor) {
  if (!tensor.encryption.has_value()) return nullptr;
  if (key_ != nullptr) return key_.get();
  if (password_ == nullptr) return nullptr;
  const auto& derivation = tensor.encryption->key_derivation;
  if (!derivation.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tensor \"", tensor.name,
        "\": encrypted with a key, not a password: give the key instead"));
  }
  const std::string cache_key =
      absl::StrCat(derivation->opslimit, "/", derivation->memlimit, "/",
                   derivation->algorithm, "/", derivation->salt);
  absl::MutexLock lock(&mutex_);
  auto it = derived_.find(cache_key);
  if (it == derived_.end()) {
    auto key = DeriveKey(*password_, *derivation);
    if (!key.ok()) {
      return absl::Status(key.status().code(),
                          absl::StrCat(path, ": tensor \"", tensor.name,
                                       "\": ", key.status().message()));
    }
    it = derived_
             .emplace(cache_key, std::make_unique<KeyMaterial>(std::move(*key)))
             .first;
  }
  return it->second.get();
}

}  // namespace warmstart
