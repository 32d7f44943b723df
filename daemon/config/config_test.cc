#include "daemon/config/config.h"

#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;
using v1::DaemonConfig;

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.Join("models");
    ASSERT_EQ(::mkdir(root_.c_str(), 0755), 0);
  }

  // Writes `text` to a config file and returns its path.
  std::string ConfigFile(const std::string& text) {
    const std::string path = dir_.Join("warmstart.textproto");
    WriteFile(path, text);
    return path;
  }

  testing::ShortTempDir dir_;
  std::string root_;
};

TEST_F(ConfigTest, DefaultsWithoutFileOrFlags) {
  ASSERT_OK_AND_ASSIGN(DaemonConfig config, BuildConfig(ConfigFlags()));
  EXPECT_EQ(config.listen().unix_socket(), "/run/warmstart/warmstart.sock");
  EXPECT_EQ(config.listen().socket_mode(), 0660u);
  EXPECT_EQ(config.listen().tcp_address(), "");
  EXPECT_FALSE(config.listen().allow_non_loopback());
  EXPECT_THAT(config.model_roots(), SizeIs(0));
  EXPECT_THAT(config.preloads(), SizeIs(0));
  EXPECT_EQ(config.staging_bytes(), uint64_t{256} << 20);
  EXPECT_EQ(config.slab_bytes(), uint64_t{16} << 20);
  EXPECT_EQ(config.io_engine(), v1::IO_ENGINE_AUTO);
  EXPECT_EQ(config.backend(), v1::BACKEND_CHOICE_AUTO);
  EXPECT_EQ(config.shutdown_grace_seconds(), 30u);
  EXPECT_EQ(config.log_format(), v1::LOG_FORMAT_TEXT);
}

TEST_F(ConfigTest, DefaultsLeaveSetFieldsAlone) {
  DaemonConfig config;
  config.mutable_listen()->set_socket_mode(0600);
  config.set_shutdown_grace_seconds(0);
  config.set_backend(v1::BACKEND_CHOICE_HOST);
  ApplyDefaults(config);
  EXPECT_EQ(config.listen().socket_mode(), 0600u);
  EXPECT_EQ(config.shutdown_grace_seconds(), 0u);
  EXPECT_EQ(config.backend(), v1::BACKEND_CHOICE_HOST);
}

TEST_F(ConfigTest, FullFileRoundTripsThroughEcho) {
  // $ROOT stands for the model root, a fresh directory.
  const std::string text = absl::StrReplaceAll(R"txt(
listen {
  unix_socket: "/tmp/ws.sock"
  socket_mode: 0600
  socket_group: "inference"
  tcp_address: "127.0.0.1:50051"
}
model_roots: "$ROOT"
preloads {
  name: "llama-7b"
  path: "$ROOT/llama/model.safetensors"
  devices: "GPU-0a1b2c3d-0000-0000-0000-000000000000"
  devices: "host"
  optional: true
  key { key_env: "LLAMA_KEY_PATH" }
}
preloads {
  name: "secret.v2"
  path: "$ROOT/secret.tensors"
  key { password_file: "/etc/warmstart/password" }
}
budgets { device: "host" bytes: 1073741824 }
staging_bytes: 134217728
slab_bytes: 8388608
io_engine: IO_ENGINE_PREAD
backend: BACKEND_CHOICE_CUDA
shutdown_grace_seconds: 5
log_format: LOG_FORMAT_JSON
)txt",
                                               {{"$ROOT", root_}});
  ConfigFlags flags;
  flags.config = ConfigFile(text);
  ASSERT_OK_AND_ASSIGN(DaemonConfig config, BuildConfig(flags));
  EXPECT_EQ(config.listen().socket_mode(), 0600u);
  ASSERT_THAT(config.preloads(), SizeIs(2));
  EXPECT_TRUE(config.preloads(0).optional());
  EXPECT_EQ(config.preloads(0).key().key_env(), "LLAMA_KEY_PATH");
  EXPECT_FALSE(config.preloads(1).optional());
  EXPECT_EQ(config.io_engine(), v1::IO_ENGINE_PREAD);
  EXPECT_EQ(config.backend(), v1::BACKEND_CHOICE_CUDA);
  EXPECT_EQ(config.log_format(), v1::LOG_FORMAT_JSON);

  const std::string echo = EchoConfig(config);
  EXPECT_EQ(echo.find('\n'), std::string::npos) << echo;
  EXPECT_THAT(echo, HasSubstr("socket_mode: 0600"));
  EXPECT_THAT(echo, HasSubstr("key_env: \"LLAMA_KEY_PATH\""));
  ASSERT_OK_AND_ASSIGN(DaemonConfig reread, LoadConfigFile(ConfigFile(echo)));
  EXPECT_TRUE(
      google::protobuf::util::MessageDifferencer::Equals(config, reread))
      << echo;
}

TEST_F(ConfigTest, EchoShowsAppliedDefaults) {
  ASSERT_OK_AND_ASSIGN(DaemonConfig config, BuildConfig(ConfigFlags()));
  const std::string echo = EchoConfig(config);
  EXPECT_THAT(echo, HasSubstr("socket_mode: 0660"));
  EXPECT_THAT(echo, HasSubstr("backend: BACKEND_CHOICE_AUTO"));
  EXPECT_THAT(echo, HasSubstr("io_engine: IO_ENGINE_AUTO"));
  EXPECT_THAT(echo, HasSubstr("log_format: LOG_FORMAT_TEXT"));
  EXPECT_THAT(echo, HasSubstr("shutdown_grace_seconds: 30"));
}

TEST_F(ConfigTest, SyntaxErrorNamesLineAndColumn) {
  const std::string path =
      ConfigFile("staging_bytes: 134217728\nlisten { socket_mode: \"x\" }\n");
  EXPECT_THAT(LoadConfigFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat(path, ":2:23: "))));
}

TEST_F(ConfigTest, UnknownFieldIsAnError) {
  const std::string path = ConfigFile("listen {}\nstagin_bytes: 1\n");
  EXPECT_THAT(LoadConfigFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat(path, ":2:"))));
  EXPECT_THAT(LoadConfigFile(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr("stagin_bytes")));
}

TEST_F(ConfigTest, MissingFileIsNotFound) {
  ConfigFlags flags;
  flags.config = dir_.Join("absent.textproto");
  EXPECT_THAT(BuildConfig(flags), StatusIs(absl::StatusCode::kNotFound,
                                           HasSubstr("absent.textproto")));
}

struct ValidationCase {
  std::string name;
  std::function<void(DaemonConfig&, const std::string& root)> mutate;
  std::string expected;
};

TEST_F(ConfigTest, EachValidationErrorNamesItsField) {
  const std::vector<ValidationCase> cases = {
      {"empty socket",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_unix_socket("");
       },
       "listen.unix_socket: is empty"},
      {"relative socket",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_unix_socket("run/ws.sock");
       },
       "listen.unix_socket: \"run/ws.sock\" is not an absolute path"},
      {"long socket",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_unix_socket("/" + std::string(107, 's'));
       },
       "is 108 bytes; a unix socket path must be under 108"},
      {"socket mode",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_socket_mode(01777);
       },
       "listen.socket_mode: 01777"},
      {"tcp without port",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_tcp_address("127.0.0.1");
       },
       "listen.tcp_address: \"127.0.0.1\": expected host:port"},
      {"tcp bad port",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_tcp_address("127.0.0.1:70000");
       },
       "listen.tcp_address: \"127.0.0.1:70000\": port"},
      {"tcp empty host",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_tcp_address(":50051");
       },
       "listen.tcp_address: \":50051\": host is empty"},
      {"tcp bare ipv6",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_tcp_address("::1:50051");
       },
       "listen.tcp_address: \"::1:50051\": write an IPv6 host in brackets"},
      {"tcp not loopback",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_tcp_address("10.0.0.1:50051");
       },
       "listen.tcp_address: \"10.0.0.1:50051\": host is not loopback"},
      {"metrics not loopback",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_metrics_address("0.0.0.0:9464");
       },
       "listen.metrics_address: \"0.0.0.0:9464\": host is not loopback"},
      {"metrics without port",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_listen()->set_metrics_address("localhost");
       },
       "listen.metrics_address: \"localhost\": expected host:port"},
      {"relative model root",
       [](DaemonConfig& c, const std::string&) { c.add_model_roots("models"); },
       "model_roots[1]: \"models\" is not an absolute path"},
      {"missing model root",
       [](DaemonConfig& c, const std::string& root) {
         c.add_model_roots(root + "/absent");
       },
       "/absent: No such file or directory"},
      {"model root is a file",
       [](DaemonConfig& c, const std::string&) {
         c.add_model_roots("/proc/self/status");
       },
       "model_roots[1]: \"/proc/self/status\" is not a directory"},
      {"empty preload name",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_preloads(0)->set_name("");
       },
       "preloads[0].name: \"\" must be 1 to 128 of [A-Za-z0-9._-]"},
      {"bad preload name",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_preloads(0)->set_name("a/b");
       },
       "preloads[0].name: \"a/b\" must be"},
      {"long preload name",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_preloads(0)->set_name(std::string(129, 'n'));
       },
       "preloads[0].name: \"nnn"},
      {"duplicate preload name",
       [](DaemonConfig& c, const std::string& root) {
         v1::Preload* p = c.add_preloads();
         p->set_name("model");
         p->set_path(root + "/other");
       },
       "preloads[1].name: \"model\" is used twice"},
      {"relative preload path",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_preloads(0)->set_path("m.safetensors");
       },
       "preloads[0].path: \"m.safetensors\" is not an absolute path"},
      {"preload path with dotdot",
       [](DaemonConfig& c, const std::string& root) {
         c.mutable_preloads(0)->set_path(root + "/../etc/shadow");
       },
       "/../etc/shadow\" contains \"..\""},
      {"preload path outside roots",
       [](DaemonConfig& c, const std::string& root) {
         c.mutable_preloads(0)->set_path(root + "-other/m.safetensors");
       },
       "-other/m.safetensors\" is not beneath any of model_roots"},
      {"empty key file",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_preloads(0)->mutable_key()->set_key_file("");
       },
       "preloads[0].key.key_file: is empty"},
      {"empty key env",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_preloads(0)->mutable_key()->set_key_env("");
       },
       "preloads[0].key.key_env: is empty"},
      {"empty password file",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_preloads(0)->mutable_key()->set_password_file("");
       },
       "preloads[0].key.password_file: is empty"},
      {"empty budget device",
       [](DaemonConfig& c, const std::string&) {
         c.add_budgets()->set_bytes(1);
       },
       "budgets[1].device: is empty"},
      {"duplicate budget device",
       [](DaemonConfig& c, const std::string&) {
         v1::DeviceBudget* b = c.add_budgets();
         b->set_device("host");
         b->set_bytes(1);
       },
       "budgets[1].device: \"host\" has two budgets"},
      {"zero budget",
       [](DaemonConfig& c, const std::string&) {
         c.mutable_budgets(0)->set_bytes(0);
       },
       "budgets[0].bytes: must be > 0"},
      {"small slab",
       [](DaemonConfig& c, const std::string&) {
         c.set_slab_bytes(uint64_t{2} << 20);
         c.set_staging_bytes(uint64_t{16} << 20);
       },
       "slab_bytes: 2097152 must be at least 4194304"},
      {"unaligned slab",
       [](DaemonConfig& c, const std::string&) {
         c.set_slab_bytes((uint64_t{4} << 20) + 512);
       },
       "slab_bytes: 4194816"},
      {"staging below slab",
       [](DaemonConfig& c, const std::string&) { c.set_staging_bytes(0); },
       "staging_bytes: 0 must be a non-zero multiple of slab_bytes"},
      {"staging not a multiple",
       [](DaemonConfig& c, const std::string&) {
         c.set_staging_bytes(uint64_t{24} << 20);
       },
       "staging_bytes: 25165824 must be"},
      {"long grace",
       [](DaemonConfig& c, const std::string&) {
         c.set_shutdown_grace_seconds(3601);
       },
       "shutdown_grace_seconds: 3601 is more than 3600"},
  };

  DaemonConfig valid;
  valid.add_model_roots(root_);
  v1::Preload* preload = valid.add_preloads();
  preload->set_name("model");
  preload->set_path(root_ + "/model.safetensors");
  v1::DeviceBudget* budget = valid.add_budgets();
  budget->set_device("host");
  budget->set_bytes(1 << 30);
  ApplyDefaults(valid);
  ASSERT_OK(ValidateConfig(valid));

  std::set<std::string> seen;
  for (const ValidationCase& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_TRUE(seen.insert(c.expected).second) << "expected text reused";
    DaemonConfig config = valid;
    c.mutate(config, root_);
    EXPECT_THAT(
        ValidateConfig(config),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.expected)));
  }
}

TEST_F(ConfigTest, RemoteSourcesAndUrlPreloads) {
  ConfigFlags flags;
  // Not split on commas: URLs may hold them.
  flags.remote_sources = {"s3://bucket/a,b", "https://models.example/llm/"};
  flags.preloads = {"m=https://models.example/llm/x.gguf"};
  ASSERT_OK_AND_ASSIGN(DaemonConfig config, BuildConfig(flags));
  ASSERT_EQ(config.remote_sources_size(), 2);
  EXPECT_EQ(config.remote_sources(0), "s3://bucket/a,b");
  EXPECT_EQ(config.remote_concurrency(), kDefaultRemoteConcurrency);

  flags.preloads = {"m=https://models.example/other/x.gguf"};
  EXPECT_THAT(BuildConfig(flags),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("preloads[0].path: \"https://models.example/"
                                 "other/x.gguf\" is not beneath any of "
                                 "remote_sources")));
  flags.preloads.clear();
  flags.remote_sources = {"/local"};
  EXPECT_THAT(BuildConfig(flags),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("remote_sources[0]: \"/local\" must start "
                                 "with http://, https:// or s3://")));
  flags.remote_sources = {"https://user:pw@host/"};
  absl::Status with_user = BuildConfig(flags).status();
  EXPECT_THAT(with_user.message(), HasSubstr("remote_sources[0]: must not "
                                             "hold user information"));
  EXPECT_THAT(with_user.message(), Not(HasSubstr("pw")));
  flags.remote_sources = {"https://host/?x"};
  EXPECT_THAT(BuildConfig(flags).status().message(), HasSubstr("query"));

  DaemonConfig zero;
  zero.set_remote_concurrency(0);
  ApplyDefaults(zero);
  EXPECT_THAT(ValidateConfig(zero),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("remote_concurrency: 0 must be 1 to 256")));
}

TEST_F(ConfigTest, PreloadPathsAreNormalizedLexically) {
  DaemonConfig config;
  config.add_model_roots(root_ + "/");
  v1::Preload* preload = config.add_preloads();
  preload->set_name("model");
  preload->set_path(root_ + "//./sub/model.gguf");
  ApplyDefaults(config);
  EXPECT_OK(ValidateConfig(config));
}

TEST_F(ConfigTest, APreloadMayBeAModelRootItself) {
  DaemonConfig config;
  config.add_model_roots(root_);
  v1::Preload* preload = config.add_preloads();
  preload->set_name("checkpoint-dir");
  preload->set_path(root_ + "/.");
  ApplyDefaults(config);
  EXPECT_OK(ValidateConfig(config));
}

TEST_F(ConfigTest, LoopbackTcpIsAccepted) {
  for (const char* address :
       {"127.0.0.1:50051", "127.1.2.3:0", "[::1]:50051", "localhost:8080"}) {
    SCOPED_TRACE(address);
    DaemonConfig config;
    config.mutable_listen()->set_tcp_address(address);
    ApplyDefaults(config);
    EXPECT_OK(ValidateConfig(config));
  }
}

TEST_F(ConfigTest, NonLoopbackTcpNeedsExplicitPermission) {
  const std::string refused = "listen { tcp_address: \"0.0.0.0:50051\" }\n";
  ConfigFlags flags;
  flags.config = ConfigFile(refused);
  EXPECT_THAT(BuildConfig(flags), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("allow_non_loopback")));

  flags.config = ConfigFile(
      "listen { tcp_address: \"0.0.0.0:50051\" allow_non_loopback: true }\n");
  ASSERT_OK_AND_ASSIGN(DaemonConfig config, BuildConfig(flags));
  EXPECT_EQ(config.listen().tcp_address(), "0.0.0.0:50051");
}

TEST_F(ConfigTest, FlagsOverrideAndAccumulate) {
  const std::string other_root = dir_.Join("more");
  ASSERT_EQ(::mkdir(other_root.c_str(), 0755), 0);
  ConfigFlags flags;
  flags.config = ConfigFile(absl::StrCat(
      "listen { unix_socket: \"/tmp/file.sock\" socket_mode: 0640 }\n",
      "model_roots: \"", root_, "\"\n",
      "preloads { name: \"from-file\" path: \"", root_, "/a.gguf\" }\n",
      "backend: BACKEND_CHOICE_CUDA\n"));
  flags.socket = "/tmp/flag.sock";
  flags.model_roots = {other_root, absl::StrCat(root_, ",", other_root)};
  flags.preloads = {
      absl::StrCat("b=", other_root, "/b.safetensors"),
      absl::StrCat("c=", root_, "/c.tensors,d=", other_root, "/d")};
  flags.backend = "host";
  flags.log_format = "json";
  ASSERT_OK_AND_ASSIGN(DaemonConfig config, BuildConfig(flags));

  EXPECT_EQ(config.listen().unix_socket(), "/tmp/flag.sock");
  EXPECT_EQ(config.listen().socket_mode(), 0640u);
  EXPECT_THAT(config.model_roots(),
              ::testing::ElementsAre(root_, other_root, root_, other_root));
  ASSERT_THAT(config.preloads(), SizeIs(4));
  EXPECT_EQ(config.preloads(0).name(), "from-file");
  EXPECT_EQ(config.preloads(1).name(), "b");
  EXPECT_EQ(config.preloads(1).path(), other_root + "/b.safetensors");
  EXPECT_EQ(config.preloads(2).name(), "c");
  EXPECT_EQ(config.preloads(3).name(), "d");
  EXPECT_EQ(config.preloads(3).path(), other_root + "/d");
  EXPECT_FALSE(config.preloads(3).optional());
  EXPECT_EQ(config.backend(), v1::BACKEND_CHOICE_HOST);
  EXPECT_EQ(config.log_format(), v1::LOG_FORMAT_JSON);
}

TEST_F(ConfigTest, PreloadPathMayContainEquals) {
  ConfigFlags flags;
  flags.model_roots = {root_};
  flags.preloads = {absl::StrCat("m=", root_, "/a=b.gguf")};
  ASSERT_OK_AND_ASSIGN(DaemonConfig config, BuildConfig(flags));
  EXPECT_EQ(config.preloads(0).path(), root_ + "/a=b.gguf");
}

TEST_F(ConfigTest, BadFlagValuesAreRefused) {
  struct Case {
    std::function<void(ConfigFlags&)> set;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](ConfigFlags& f) { f.preloads = {"model"}; },
       "--preload \"model\": expected NAME=PATH, no '=' found"},
      {[](ConfigFlags& f) { f.preloads = {"=/models/m.gguf"}; },
       "--preload \"=/models/m.gguf\": expected NAME=PATH, NAME is empty"},
      {[](ConfigFlags& f) { f.preloads = {"m="}; },
       "--preload \"m=\": expected NAME=PATH, PATH is empty"},
      {[](ConfigFlags& f) { f.preloads = {"a=/models/a,"}; },
       "--preload \"\": expected NAME=PATH"},
      {[](ConfigFlags& f) { f.backend = "gpu"; },
       "--backend \"gpu\": expected auto, host or cuda"},
      {[](ConfigFlags& f) { f.log_format = "xml"; },
       "--log_format \"xml\": expected text or json"},
      {[](ConfigFlags& f) { f.socket = "relative.sock"; },
       "listen.unix_socket: \"relative.sock\""},
      {[](ConfigFlags& f) { f.model_roots = {"/tmp,"}; },
       "model_roots[1]: \"\" is not an absolute path"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    ConfigFlags flags;
    c.set(flags);
    EXPECT_THAT(BuildConfig(flags), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr(c.expected)));
  }
}

}  // namespace
}  // namespace warmstart
