#include "daemon/formats/key_source.h"

#include <cctype>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace warmstart {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kHex[] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

std::string Hex(const KeyMaterial& key) {
  return absl::BytesToHexString(absl::string_view(
      reinterpret_cast<const char*>(key.data()), KeyMaterial::kSize));
}

std::string RawKey() { return absl::HexStringToBytes(kHex); }

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

TEST(KeyFromHexTest, ParsesEitherCase) {
  ASSERT_OK_AND_ASSIGN(KeyMaterial lower, KeyFromHex(kHex));
  EXPECT_EQ(Hex(lower), kHex);
  std::string upper = kHex;
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  ASSERT_OK_AND_ASSIGN(KeyMaterial from_upper, KeyFromHex(upper));
  EXPECT_EQ(Hex(from_upper), kHex);
}

TEST(KeyFromHexTest, RejectsWrongLengthWithoutEchoingTheInput) {
  EXPECT_THAT(KeyFromHex("abcdef"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("expected 64 hex digits, got 6"),
                             Not(HasSubstr("abcdef")))));
}

TEST(KeyFromHexTest, RejectsNonHexWithoutEchoingTheInput) {
  std::string bad = kHex;
  bad[10] = 'g';
  EXPECT_THAT(KeyFromHex(bad),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("not a hex string"),
                             HasSubstr("position 10"), Not(HasSubstr(bad)))));
}

TEST(KeyMaterialTest, FromBytesNeedsExactly32Bytes) {
  EXPECT_OK(KeyMaterial::FromBytes(RawKey()));
  EXPECT_THAT(KeyMaterial::FromBytes("short"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("a key is 32 bytes, this one is 5")));
}

TEST(KeyMaterialTest, MovingWipesTheSource) {
  ASSERT_OK_AND_ASSIGN(KeyMaterial key, KeyFromHex(kHex));
  KeyMaterial moved = std::move(key);
  EXPECT_EQ(Hex(moved), kHex);
  EXPECT_EQ(Hex(key), std::string(64, '0'));  // NOLINT(bugprone-use-after-move)
  ASSERT_OK_AND_ASSIGN(KeyMaterial other, KeyFromHex(std::string(64, 'f')));
  other = std::move(moved);
  EXPECT_EQ(Hex(other), kHex);
  EXPECT_EQ(Hex(moved),
            std::string(64, '0'));  // NOLINT(bugprone-use-after-move)
}

TEST(PasswordTest, MovingEmptiesTheSource) {
  Password password("secret");
  Password moved = std::move(password);
  EXPECT_EQ(moved.view(), "secret");
  EXPECT_EQ(password.view(), "");  // NOLINT(bugprone-use-after-move)
  Password other("other");
  other = std::move(moved);
  EXPECT_EQ(other.view(), "secret");
  EXPECT_EQ(moved.view(), "");  // NOLINT(bugprone-use-after-move)
}

class KeyFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& contents) {
    const std::string path = dir_.Join("key");
    WriteFile(path, contents);
    return path;
  }

  testing::ShortTempDir dir_;
};

TEST_F(KeyFileTest, ReadsRawBytes) {
  ASSERT_OK_AND_ASSIGN(KeyMaterial key, KeyFromFile(Write(RawKey())));
  EXPECT_EQ(Hex(key), kHex);
}

TEST_F(KeyFileTest, ReadsHexWithOrWithoutNewline) {
  for (const char* ending : {"", "\n", "\r\n"}) {
    ASSERT_OK_AND_ASSIGN(KeyMaterial key,
                         KeyFromFile(Write(std::string(kHex) + ending)));
    EXPECT_EQ(Hex(key), kHex);
  }
}

TEST_F(KeyFileTest, RejectsOtherSizes) {
  const std::string path = Write(RawKey() + "x");
  EXPECT_THAT(KeyFromFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith(path + ": "),
                             HasSubstr("32 raw bytes, or 64 hex digits"),
                             HasSubstr("this one has 33 bytes"))));
  EXPECT_THAT(KeyFromFile(Write(std::string(500, 'a'))),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("this one has more than 66 bytes")));
  EXPECT_THAT(KeyFromFile(Write("")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("this one has 0 bytes")));
}

TEST_F(KeyFileTest, RejectsBadHexNamingTheFile) {
  const std::string path = Write(std::string(63, 'a') + "z\n");
  EXPECT_THAT(
      KeyFromFile(path),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(StartsWith(path + ": "), HasSubstr("not a hex string"))));
}

TEST_F(KeyFileTest, MissingFileIsNotFound) {
  EXPECT_THAT(KeyFromFile(dir_.Join("absent")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("absent")));
}

TEST_F(KeyFileTest, PasswordFileDropsOneTrailingNewline) {
  ASSERT_OK_AND_ASSIGN(Password password, PasswordFromFile(Write("pw word\n")));
  EXPECT_EQ(password.view(), "pw word");
  ASSERT_OK_AND_ASSIGN(Password crlf, PasswordFromFile(Write("pw\r\n")));
  EXPECT_EQ(crlf.view(), "pw");
  ASSERT_OK_AND_ASSIGN(Password two, PasswordFromFile(Write("pw\n\n")));
  EXPECT_EQ(two.view(), "pw\n");
}

TEST_F(KeyFileTest, PasswordFileErrors) {
  EXPECT_THAT(PasswordFromFile(Write("\n")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the password file is empty")));
  EXPECT_THAT(PasswordFromFile(Write(std::string(70000, 'p'))),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("longer than 65536 bytes")));
  EXPECT_THAT(PasswordFromFile(dir_.Join("absent")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("absent")));
}

// The parameters of encrypted_password_v3.tensors and the key its writer
// derived.
class DeriveKeyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    json_ = nlohmann::json::parse(testing::ReadFileOrDie(
        testing::FixturePath("tensorizer/encrypted_password_v3.tensors.json")));
    kdf_.opslimit = json_["opslimit"].get<uint64_t>();
    kdf_.memlimit = json_["memlimit"].get<uint64_t>();
    kdf_.algorithm = 2;
    kdf_.salt = absl::HexStringToBytes(json_["salt_hex"].get<std::string>());
  }

  Password FixturePassword() const {
    return Password(json_["password"].get<std::string>());
  }

  nlohmann::json json_;
  KeyDerivation kdf_;
};

TEST_F(DeriveKeyTest, MatchesTheWritersKey) {
  ASSERT_OK_AND_ASSIGN(KeyMaterial key, DeriveKey(FixturePassword(), kdf_));
  EXPECT_EQ(Hex(key), json_["derived_key_hex"].get<std::string>());
}

TEST_F(DeriveKeyTest, WrongPasswordGivesAnotherKey) {
  ASSERT_OK_AND_ASSIGN(KeyMaterial key, DeriveKey(Password("wrong"), kdf_));
  EXPECT_NE(Hex(key), json_["derived_key_hex"].get<std::string>());
}

TEST_F(DeriveKeyTest, OpslimitAboveTheCapIsRejected) {
  kdf_.opslimit = 65;
  EXPECT_THAT(DeriveKey(FixturePassword(), kdf_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("opslimit 65"), HasSubstr("1 to 64"))));
  KdfLimits limits;
  limits.max_opslimit = 65;
  kdf_.memlimit = 8192;
  EXPECT_OK(DeriveKey(FixturePassword(), kdf_, limits));
}

TEST_F(DeriveKeyTest, MemlimitAboveTheCapIsRejected) {
  kdf_.memlimit = uint64_t{2} << 30;
  EXPECT_THAT(DeriveKey(FixturePassword(), kdf_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("memlimit 2147483648"),
                             HasSubstr("to 1073741824"))));
}

TEST_F(DeriveKeyTest, ValuesBelowLibsodiumsMinimumAreRejected) {
  kdf_.opslimit = 0;
  EXPECT_THAT(DeriveKey(FixturePassword(), kdf_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("opslimit 0 is outside")));
  kdf_.opslimit = 1;
  kdf_.memlimit = 1024;
  EXPECT_THAT(DeriveKey(FixturePassword(), kdf_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("memlimit 1024 bytes is outside")));
}

TEST_F(DeriveKeyTest, OtherAlgorithmsAndSaltSizesAreRejected) {
  KeyDerivation argon2i = kdf_;
  argon2i.algorithm = 1;
  EXPECT_THAT(DeriveKey(FixturePassword(), argon2i),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("algorithm 1 is not Argon2id13")));
  KeyDerivation short_salt = kdf_;
  short_salt.salt = "salt";
  EXPECT_THAT(DeriveKey(FixturePassword(), short_salt),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the salt is 4 bytes; Argon2id needs 16")));
}

TEST(KeyFromEnvironmentTest, ReadsTheFileTheVariableNames) {
  testing::ShortTempDir dir;
  const std::string path = dir.Join("key.hex");
  std::ofstream(path) << std::string(64, 'a') << "\n";
  ::setenv("WARMSTART_TEST_KEY_FILE", path.c_str(), 1);
  ASSERT_OK_AND_ASSIGN(KeyMaterial key,
                       KeyFromEnvironment("WARMSTART_TEST_KEY_FILE"));
  EXPECT_EQ(key.data()[0], 0xaa);
  ::unsetenv("WARMSTART_TEST_KEY_FILE");
  EXPECT_THAT(KeyFromEnvironment("WARMSTART_TEST_KEY_FILE"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("WARMSTART_TEST_KEY_FILE")));
}

}  // namespace
}  // namespace warmstart
