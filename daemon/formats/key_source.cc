#include "daemon/formats/key_source.h"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"

namespace warmstart {
namespace {

static_assert(KeyMaterial::kSize == crypto_secretbox_KEYBYTES,
              "tensorizer keys are XSalsa20-Poly1305 keys");

constexpr size_t kMaxPasswordFileBytes = 64 * 1024;
constexpr size_t kHexKeyDigits = 2 * KeyMaterial::kSize;
// The longest key file: 64 hex digits and "\r\n".
constexpr size_t kMaxKeyFileBytes = kHexKeyDigits + 2;

absl::Status InitSodium() {
  // sodium_init() is thread-safe and idempotent: 0 the first time, 1 after.
  if (sodium_init() < 0) {
    return absl::InternalError("libsodium failed to initialise");
  }
  return absl::OkStatus();
}

// A heap buffer that is wiped before it is freed, for secrets read from
// files.
class WipedBuffer {
 public:
  explicit WipedBuffer(size_t size) : bytes_(size) {}
  ~WipedBuffer() { sodium_memzero(bytes_.data(), bytes_.size()); }
  WipedBuffer(const WipedBuffer&) = delete;
  WipedBuffer& operator=(const WipedBuffer&) = delete;

  char* data() { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }

 private:
  std::vector<char> bytes_;
};

// Reads `path` into `buffer`, up to its end or until the buffer is full;
// returns the length (buffer->size() means the file may hold more). Any
// readable file works, pipes included (`--key-file <(secret-tool ...)` keeps
// the key off disk), so the size is not taken from fstat.
absl::StatusOr<size_t> ReadSecretFile(const std::string& path,
                                      absl::string_view what,
                                      WipedBuffer* buffer) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return ErrnoToStatus(errno, absl::StrCat("open ", what, " ", path));
  }
  size_t length = 0;
  while (length < buffer->size()) {
    const ssize_t n =
        ::read(fd.get(), buffer->data() + length, buffer->size() - length);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("read ", what, " ", path));
    }
    if (n == 0) break;
    length += static_cast<size_t>(n);
  }
  return length;
}

absl::string_view StripOneNewline(absl::string_view text) {
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
  return text;
}

}  // namespace

absl::StatusOr<KeyMaterial> KeyMaterial::FromBytes(absl::string_view bytes) {
  if (bytes.size() != kSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key: a key is ", kSize, " bytes, this one is ", bytes.size()));
  }
  WS_RETURN_IF_ERROR(InitSodium());
  KeyMaterial key;
  std::copy(bytes.begin(), bytes.end(), key.bytes_.begin());
  return key;
}

KeyMaterial::~KeyMaterial() { sodium_memzero(bytes_.data(), bytes_.size()); }

KeyMaterial::KeyMaterial(KeyMaterial&& other) noexcept : bytes_(other.bytes_) {
  sodium_memzero(other.bytes_.data(), other.bytes_.size());
}

KeyMaterial& KeyMaterial::operator=(KeyMaterial&& other) noexcept {
  if (this != &other) {
    bytes_ = other.bytes_;
    sodium_memzero(other.bytes_.data(), other.bytes_.size());
  }
  return *this;
}

Password::Password(absl::string_view text) : bytes_(text.begin(), text.end()) {}

Password::~Password() { Wipe(); }

Password::Password(Password&& other) noexcept
    : bytes_(std::move(other.bytes_)) {
  // A moved-from vector is empty in practice but not by the standard's
  // guarantee; clearing makes it so without freeing unwiped bytes.
  other.Wipe();
  other.bytes_.clear();
}

Password& Password::operator=(Password&& other) noexcept {
  if (this != &other) {
    Wipe();
    bytes_ = std::move(other.bytes_);
    other.Wipe();
    other.bytes_.clear();
  }
  return *this;
}

void Password::Wipe() { sodium_memzero(bytes_.data(), bytes_.size()); }

absl::StatusOr<KeyMaterial> KeyFromHex(absl::string_view hex) {
  if (hex.size() != kHexKeyDigits) {
    return absl::InvalidArgumentError(
        absl::StrCat("key: expected ", kHexKeyDigits, " hex digits, got ",
                     hex.size(), " characters"));
  }
  unsigned char bytes[KeyMaterial::kSize];
  size_t length = 0;
  const char* end = nullptr;
  // sodium_hex2bin runs in constant time for a given length: the key does
  // not leak through timing.
  const int rc = sodium_hex2bin(bytes, sizeof(bytes), hex.data(), hex.size(),
                                nullptr, &length, &end);
  absl::StatusOr<KeyMaterial> key;
  if (rc != 0 || length != sizeof(bytes) || end != hex.data() + hex.size()) {
    key = absl::InvalidArgumentError(
        absl::StrCat("key: not a hex string (a character other than 0-9, "
                     "a-f, A-F at position ",
                     end == nullptr ? 0 : end - hex.data(), ")"));
  } else {
    key = KeyMaterial::FromBytes(
        absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
  }
  sodium_memzero(bytes, sizeof(bytes));
  return key;
}

absl::StatusOr<KeyMaterial> KeyFromFile(const std::string& path) {
  // One byte more than any valid key file, to tell "too long" apart.
  WipedBuffer buffer(kMaxKeyFileBytes + 1);
  WS_ASSIGN_OR_RETURN(const size_t length,
                      ReadSecretFile(path, "key file", &buffer));
  const absl::string_view contents(buffer.data(), length);
  if (contents.size() == KeyMaterial::kSize) {
    return KeyMaterial::FromBytes(contents);
  }
  const absl::string_view hex = StripOneNewline(contents);
  if (hex.size() != kHexKeyDigits) {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        ": a key file must hold 32 raw bytes, or 64 hex digits optionally "
        "followed by a newline; this one has ",
        length == buffer.size() ? absl::StrCat("more than ", kMaxKeyFileBytes)
                                : absl::StrCat(length),
        " bytes"));
  }
  absl::StatusOr<KeyMaterial> key = KeyFromHex(hex);
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", key.status().message()));
  }
  return key;
}

absl::StatusOr<KeyMaterial> KeyFromEnvironment(const std::string& variable) {
  const char* path = std::getenv(variable.c_str());
  if (path == nullptr || *path == '\0') {
    return absl::FailedPreconditionError(
        absl::StrCat("environment variable ", variable,
                     " should name the key file, but it is not set"));
  }
  return KeyFromFile(path);
}

absl::StatusOr<Password> PasswordFromFile(const std::string& path) {
  WipedBuffer buffer(kMaxPasswordFileBytes + 1);
  WS_ASSIGN_OR_RETURN(const size_t length,
                      ReadSecretFile(path, "password file", &buffer));
  if (length == buffer.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the password file is longer than ",
                     kMaxPasswordFileBytes, " bytes"));
  }
  const absl::string_view password =
      StripOneNewline(absl::string_view(buffer.data(), length));
  if (password.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the password file is empty"));
  }
  return Password(password);
}

absl::StatusOr<KeyMaterial> DeriveKey(const Password& password,
                                      const KeyDerivation& derivation,
                                      const KdfLimits& limits) {
  if (derivation.algorithm != crypto_pwhash_ALG_ARGON2ID13) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key derivation: algorithm ", derivation.algorithm,
        " is not Argon2id13 (", crypto_pwhash_ALG_ARGON2ID13, ")"));
  }
  if (derivation.salt.size() != crypto_pwhash_SALTBYTES) {
    return absl::InvalidArgumentError(
        absl::StrCat("key derivation: the salt is ", derivation.salt.size(),
                     " bytes; Argon2id needs ", crypto_pwhash_SALTBYTES));
  }
  // libsodium's own maxima are far above any sane cap, but a caller may
  // raise the caps; keep both checks so neither can be passed.
  const uint64_t max_ops =
      std::min<uint64_t>(limits.max_opslimit, crypto_pwhash_OPSLIMIT_MAX);
  const uint64_t max_mem =
      std::min<uint64_t>(limits.max_memlimit, crypto_pwhash_MEMLIMIT_MAX);
  if (derivation.opslimit < crypto_pwhash_OPSLIMIT_MIN ||
      derivation.opslimit > max_ops) {
    return absl::InvalidArgumentError(
        absl::StrCat("key derivation: opslimit ", derivation.opslimit,
                     " is outside the accepted range ",
                     crypto_pwhash_OPSLIMIT_MIN, " to ", max_ops,
                     " (the cap keeps a file from making key derivation "
                     "arbitrarily slow)"));
  }
  if (derivation.memlimit < crypto_pwhash_MEMLIMIT_MIN ||
      derivation.memlimit > max_mem) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key derivation: memlimit ", derivation.memlimit,
        " bytes is outside the accepted range ", crypto_pwhash_MEMLIMIT_MIN,
        " to ", max_mem,
        " (the cap keeps a file from making key derivation use arbitrary "
        "memory)"));
  }
  WS_RETURN_IF_ERROR(InitSodium());
  unsigned char bytes[KeyMaterial::kSize];
  const absl::string_view text = password.view();
  const int rc = crypto_pwhash(
      bytes, sizeof(bytes), text.data(), text.size(),
      reinterpret_cast<const unsigned char*>(derivation.salt.data()),
      derivation.opslimit, static_cast<size_t>(derivation.memlimit),
      derivation.algorithm);
  absl::StatusOr<KeyMaterial> key;
  if (rc != 0) {
    key = absl::ResourceExhaustedError(absl::StrCat(
        "key derivation: crypto_pwhash failed (could it not allocate ",
        derivation.memlimit, " bytes?)"));
  } else {
    key = KeyMaterial::FromBytes(
        absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
  }
  sodium_memzero(bytes, sizeof(bytes));
  return key;
}

}  // namespace warmstart
