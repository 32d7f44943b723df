// Keys for encrypted tensor data: 32-byte XSalsa20-Poly1305 keys given as
// hex, read from a file, or derived from a password with Argon2id.
//
// Secrets live in move-only owners that wipe their bytes (sodium_memzero)
// when destroyed or moved from. Nothing here logs a secret or puts one in a
// Status message.
//
// Thread safety: all functions are safe to call concurrently; a KeyMaterial
// or Password may be read from several threads while no thread moves it.
#ifndef WARMSTART_DAEMON_FORMATS_KEY_SOURCE_H_
#define WARMSTART_DAEMON_FORMATS_KEY_SOURCE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/formats/manifest.h"

namespace warmstart {

// A 32-byte secret key. Creating one initialises libsodium, so code holding
// a KeyMaterial may call libsodium without calling sodium_init() itself.
class KeyMaterial {
 public:
  static constexpr size_t kSize = 32;

  // Takes a copy of `bytes`. Fails with InvalidArgument unless it holds
  // exactly kSize bytes, and with Internal if libsodium cannot initialise.
  static absl::StatusOr<KeyMaterial> FromBytes(absl::string_view bytes);

  ~KeyMaterial();
  // Moving copies the key and wipes the source, which then holds zeros.
  KeyMaterial(KeyMaterial&& other) noexcept;
  KeyMaterial& operator=(KeyMaterial&& other) noexcept;
  KeyMaterial(const KeyMaterial&) = delete;
  KeyMaterial& operator=(const KeyMaterial&) = delete;

  // kSize bytes, valid while this object lives and is not moved from.
  const unsigned char* data() const { return bytes_.data(); }

 private:
  KeyMaterial() = default;

  std::array<unsigned char, kSize> bytes_{};
};

// A password (any bytes; tensorizer uses the UTF-8 encoding of a string).
class Password {
 public:
  explicit Password(absl::string_view text);
  ~Password();
  // Moving hands the buffer over; the source is left empty.
  Password(Password&& other) noexcept;
  Password& operator=(Password&& other) noexcept;
  Password(const Password&) = delete;
  Password& operator=(const Password&) = delete;

  absl::string_view view() const {
    return absl::string_view(bytes_.data(), bytes_.size());
  }

 private:
  void Wipe();

  std::vector<char> bytes_;
};

// Parses 64 hex digits (either case) into a key. InvalidArgument otherwise;
// the message never repeats the input.
absl::StatusOr<KeyMaterial> KeyFromHex(absl::string_view hex);

// Reads a key file: exactly 32 raw bytes, or 64 hex digits optionally
// followed by "\n" or "\r\n". A 32-byte file is always taken as raw bytes.
// Errors name the path and say which forms are accepted.
absl::StatusOr<KeyMaterial> KeyFromFile(const std::string& path);

// The key in the file that environment variable `variable` names (so the
// key itself never appears in a config file or a command line), read as
// KeyFromFile reads it. FailedPrecondition when the variable is unset or
// empty, naming the variable.
absl::StatusOr<KeyMaterial> KeyFromEnvironment(const std::string& variable);

// Reads a password file (at most 64 KiB). One trailing "\n" or "\r\n" is
// removed, since editors and `echo` add one; an empty password is an error.
absl::StatusOr<Password> PasswordFromFile(const std::string& path);

// Caps on the cost a file may ask of key derivation. The parameters come
// from the (untrusted) file, and Argon2id would otherwise allocate
// `memlimit` bytes and run `opslimit` passes over them.
struct KdfLimits {
  uint64_t max_opslimit = 64;
  uint64_t max_memlimit = uint64_t{1} << 30;  // 1 GiB.
};

// Derives the key for `derivation` (libsodium crypto_pwhash, Argon2id13)
// from `password`. Fails with InvalidArgument, naming the value and the
// cap, when opslimit or memlimit is above `limits` or below libsodium's
// minimum, when the algorithm is not Argon2id13 or the salt is not 16
// bytes; ResourceExhausted when libsodium cannot allocate the memory. Takes
// about memlimit bytes and opslimit passes over them: call it once per
// distinct derivation, not once per tensor.
absl::StatusOr<KeyMaterial> DeriveKey(const Password& password,
                                      const KeyDerivation& derivation,
                                      const KdfLimits& limits = KdfLimits());

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_FORMATS_KEY_SOURCE_H_
