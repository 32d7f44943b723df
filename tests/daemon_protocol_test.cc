// The daemon's protocol seen from below the client library: sessions on the
// handle socket, descriptors that cannot be used to write, refusals of
// forged sessions; and the client library across a daemon restart.
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/client.h"
#include "common/protocol.h"
#include "common/tensor_table.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/warmstart.grpc.pb.h"
#include "tests/doubles/cuda_sim.h"
#include "tests/doubles/subprocess.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::warmstart::testing::BinaryPath;
using ::warmstart::testing::ChildProcess;
using ::warmstart::testing::RunProcess;
using ::warmstart::testing::ShortTempDir;

constexpr char kFixture[] = "gguf/ollama-llama-2-tiny-random.gguf";
// The fixture's expected values, written with it: every tensor's sha256.
constexpr char kFixtureFacts[] = "gguf/ollama-llama-2-tiny-random.json";

class DaemonProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override { SetUpModelsAndStart(); }

  void SetUpModelsAndStart() {
    root_ = dir_.Join("models");
    std::filesystem::create_directory(root_);
    model_path_ = root_ + "/tiny.gguf";
    std::filesystem::copy_file(testing::FixturePath(kFixture), model_path_);
    socket_ = dir_.Join("d.sock");
    StartDaemon();
  }

  void StartDaemon() {
    daemon_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{BinaryPath("daemon/warmstartd"), "--socket",
                                 socket_, "--backend", backend_, "--model_root",
                                 root_, "--preload", "tiny=" + model_path_},
        dir_.path());
    testing::RunResult ready =
        RunProcess({BinaryPath("tools/warmstartctl/warmstartctl"), "wait-ready",
                    "--timeout", "30", "--socket", socket_});
    ASSERT_EQ(ready.exit_code, 0) << ready.err << daemon_->Stderr();
  }

  std::unique_ptr<v1::Warmstart::Stub> Stub() {
    return v1::Warmstart::NewStub(grpc::CreateChannel(
        "unix:" + socket_, grpc::InsecureChannelCredentials()));
  }

  // Opens a session by hand; returns the handle socket and sets `id`.
  int OpenSession(std::string* id) {
    int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    const std::string path = socket_ + kHandleSocketSuffix;
    std::memcpy(address.sun_path, path.data(), path.size());
    EXPECT_EQ(
        ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
        0);
    char buffer[256];
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    v1::HandleMessage hello;
    EXPECT_TRUE(hello.ParseFromArray(buffer, static_cast<int>(n)));
    *id = hello.hello().session_id();
    return fd;
  }

  // AcquireModel of "tiny" over raw gRPC with `session_id` as the session
  // metadata; the lease goes to *lease.
  grpc::Status AcquireTiny(const std::string& session_id, v1::Lease* lease) {
    grpc::ClientContext context;
    context.AddMetadata(kSessionMetadataKey, session_id);
    v1::AcquireModelRequest request;
    request.set_name("tiny");
    return Stub()->AcquireModel(&context, request, lease);
  }

  // Receives one descriptor bundle; returns its descriptors.
  std::vector<int> ReceiveFds(int socket, uint64_t* transfer_id) {
    char data[256];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
    iovec vector{data, sizeof(data)};
    msghdr header{};
    header.msg_iov = &vector;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof(control);
    const ssize_t n = ::recvmsg(socket, &header, MSG_CMSG_CLOEXEC);
    EXPECT_GT(n, 0);
    v1::HandleMessage message;
    EXPECT_TRUE(message.ParseFromArray(data, static_cast<int>(n)));
    *transfer_id = message.fds().transfer_id();
    std::vector<int> fds;
    cmsghdr* rights = CMSG_FIRSTHDR(&header);
    if (rights == nullptr) return fds;
    const size_t count = (rights->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    fds.resize(count);
    std::memcpy(fds.data(), CMSG_DATA(rights), count * sizeof(int));
    return fds;
  }

  ShortTempDir dir_;
  std::string backend_ = "host";
  std::string root_;
  std::string model_path_;
  std::string socket_;
  std::unique_ptr<ChildProcess> daemon_;
};

TEST_F(DaemonProtocolTest, SharedMemoryCannotBeWrittenOrResized) {
  std::string session;
  const int handles = OpenSession(&session);
  v1::Lease lease;
  grpc::Status status = AcquireTiny(session, &lease);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(lease.allocations_size(), 1);
  EXPECT_EQ(lease.allocations(0).kind(), v1::HOST_MEMFD);
  EXPECT_EQ(lease.allocations(0).device_uuid(), "host");
  uint64_t transfer_id = 0;
  std::vector<int> fds = ReceiveFds(handles, &transfer_id);
  EXPECT_EQ(transfer_id, lease.fd_transfer_id());
  ASSERT_EQ(fds.size(), 1u);
  const int fd = fds[0];
  const size_t size = lease.allocations(0).size();

  EXPECT_EQ(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(fd, 0), -1);
  EXPECT_EQ(::ftruncate(fd, size * 2), -1);
  EXPECT_EQ(::pwrite(fd, "x", 1, 0), -1);
  EXPECT_EQ(::fallocate(fd, 0, 0, size * 2), -1);
  // Reopening through /proc gives the same sealed file.
  const std::string reopened = "/proc/self/fd/" + std::to_string(fd);
  const int writable = ::open(reopened.c_str(), O_RDWR | O_CLOEXEC);
  if (writable >= 0) {
    EXPECT_EQ(::pwrite(writable, "x", 1, 0), -1);
    ::close(writable);
  }
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  EXPECT_NE(::mprotect(mapped, size, PROT_READ | PROT_WRITE), 0);
  ::munmap(mapped, size);
  ::close(fd);
  ::close(handles);
}

TEST_F(DaemonProtocolTest, ForgedMissingOrClosedSessionsAreRefused) {
  v1::AcquireModelRequest request;
  request.set_name("tiny");
  {
    grpc::ClientContext context;
    v1::Lease lease;
    grpc::Status status = Stub()->AcquireModel(&context, request, &lease);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(status.error_message(), HasSubstr("no session"));
  }
  for (const std::string& forged :
       {std::string("0123456789abcdef0123456789abcdef"), std::string(200, 'z'),
        std::string("")}) {
    grpc::ClientContext context;
    context.AddMetadata(kSessionMetadataKey, forged);
    v1::Lease lease;
    grpc::Status status = Stub()->AcquireModel(&context, request, &lease);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << forged.size();
    EXPECT_THAT(status.error_message(), HasSubstr("unknown or closed"));
  }
  {
    // Past gRPC's 8 KiB metadata limit: refused before any handler runs.
    grpc::ClientContext context;
    context.AddMetadata(kSessionMetadataKey, std::string(100000, 'z'));
    v1::Lease lease;
    grpc::Status status = Stub()->AcquireModel(&context, request, &lease);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  std::string session;
  ::close(OpenSession(&session));
  // The daemon's session thread notices the close at once, but when it runs
  // is up to the scheduler: ask until it has.
  grpc::Status status;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  do {
    grpc::ClientContext context;
    context.AddMetadata(kSessionMetadataKey, session);
    v1::ReleaseModelRequest release;
    release.set_lease_id("whatever");
    v1::ReleaseModelResponse response;
    status = Stub()->ReleaseModel(&context, release, &response);
    if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED) break;
    // Until then the session is live and the lease simply unknown.
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND)
        << status.error_message();
    absl::SleepFor(absl::Milliseconds(5));
  } while (absl::Now() < deadline);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("unknown or closed"));
}

TEST_F(DaemonProtocolTest, TextThatIsNotUtf8IsInvalidArgumentNamingTheField) {
  // Before, the protobuf parser refused such a request: INTERNAL with no
  // message, and nothing said which field. The text fields are bytes on the
  // wire now and the daemon checks them itself.
  const std::string bad = "m\xff\x1b";
  auto expect_refused = [&](const grpc::Status& status,
                            const std::string& field) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << field << ": " << status.error_message();
    EXPECT_THAT(status.error_message(),
                HasSubstr(field + " \"m\\xff\\x1b\" is not valid UTF-8 "
                                  "(byte 1)"));
  };
  {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_name("ok");
    request.set_path(root_ + "/" + bad);
    v1::ModelStatus response;
    const grpc::Status status = Stub()->LoadModel(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(),
                HasSubstr("LoadModelRequest.path \"" + root_ + "/m\\xff"));
  }
  {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_name(bad);
    request.set_path(model_path_);
    v1::ModelStatus response;
    expect_refused(Stub()->LoadModel(&context, request, &response),
                   "LoadModelRequest.name");
  }
  {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_name("ok");
    request.set_path(model_path_);
    request.add_devices(bad);
    v1::ModelStatus response;
    expect_refused(Stub()->LoadModel(&context, request, &response),
                   "LoadModelRequest.devices");
  }
  {
    grpc::ClientContext context;
    v1::AcquireModelRequest request;
    request.set_name(bad);
    v1::Lease lease;
    expect_refused(Stub()->AcquireModel(&context, request, &lease),
                   "AcquireModelRequest.name");
  }
  {
    grpc::ClientContext context;
    v1::ReleaseModelRequest request;
    request.set_lease_id(bad);
    v1::ReleaseModelResponse response;
    expect_refused(Stub()->ReleaseModel(&context, request, &response),
                   "ReleaseModelRequest.lease_id");
  }
  {
    grpc::ClientContext context;
    v1::UnloadModelRequest request;
    request.set_name(bad);
    request.set_force(true);
    v1::ModelStatus response;
    expect_refused(Stub()->UnloadModel(&context, request, &response),
                   "UnloadModelRequest.name");
  }
  {
    grpc::ClientContext context;
    v1::ListModelsRequest request;
    request.set_name(bad);
    v1::ListModelsResponse response;
    expect_refused(Stub()->ListModels(&context, request, &response),
                   "ListModelsRequest.name");
  }
  {
    grpc::ClientContext context;
    v1::WatchModelRequest request;
    request.set_name(bad);
    auto reader = Stub()->WatchModel(&context, request);
    v1::ModelStatus status;
    while (reader->Read(&status)) {
    }
    expect_refused(reader->Finish(), "WatchModelRequest.name");
  }
  // Nothing reached the log raw, and the daemon still serves.
  EXPECT_THAT(daemon_->Stderr(), Not(HasSubstr("\xff")));
  grpc::ClientContext context;
  v1::ListModelsResponse listed;
  EXPECT_TRUE(Stub()->ListModels(&context, {}, &listed).ok());
}

TEST_F(DaemonProtocolTest, AnotherSessionCannotReleaseMyLease) {
  std::string mine, theirs;
  const int my_socket = OpenSession(&mine);
  const int their_socket = OpenSession(&theirs);
  v1::Lease lease;
  ASSERT_TRUE(AcquireTiny(mine, &lease).ok());
  grpc::ClientContext release;
  release.AddMetadata(kSessionMetadataKey, theirs);
  v1::ReleaseModelRequest release_request;
  release_request.set_lease_id(lease.lease_id());
  v1::ReleaseModelResponse response;
  grpc::Status status =
      Stub()->ReleaseModel(&release, release_request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ::close(my_socket);
  ::close(their_socket);
}

TEST_F(DaemonProtocolTest, AStolenSessionIdIsRefused) {
  // Another process opens a session and hands its id over (as a log, /proc
  // or a core dump would). Before, the id worked from any process: the
  // daemon recorded SO_PEERCRED and never compared it.
  int id_pipe[2], hold_pipe[2];
  ASSERT_EQ(::pipe(id_pipe), 0);
  ASSERT_EQ(::pipe(hold_pipe), 0);
  const pid_t owner = ::fork();
  if (owner == 0) {
    ::close(id_pipe[0]);
    ::close(hold_pipe[1]);
    std::string id;
    OpenSession(&id);
    (void)!::write(id_pipe[1], id.data(), id.size());
    char byte;
    (void)!::read(hold_pipe[0], &byte, 1);  // Until the parent closes it.
    ::_exit(0);
  }
  ::close(id_pipe[1]);
  ::close(hold_pipe[0]);
  char buffer[64];
  const ssize_t n = ::read(id_pipe[0], buffer, sizeof(buffer));
  ::close(id_pipe[0]);
  ASSERT_EQ(n, 32);
  const std::string stolen(buffer, static_cast<size_t>(n));

  v1::Lease lease;
  grpc::Status status = AcquireTiny(stolen, &lease);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(),
              HasSubstr(absl::StrCat("belongs to pid ", owner)));
  EXPECT_THAT(status.error_message(),
              HasSubstr(absl::StrCat("this call comes from pid ", ::getpid())));

  // The owner's own session still works for the process that opened it.
  std::string mine;
  const int my_socket = OpenSession(&mine);
  v1::Lease own_lease;
  EXPECT_TRUE(AcquireTiny(mine, &own_lease).ok());
  ::close(my_socket);
  ::close(hold_pipe[1]);
  int wait_status = 0;
  ::waitpid(owner, &wait_status, 0);
}

// Whether `uid` exists in this process's user namespace (/proc/self/uid_map).
bool UidMapped(uid_t uid) {
  std::FILE* map = std::fopen("/proc/self/uid_map", "re");
  if (map == nullptr) return false;
  unsigned long inside = 0, outside = 0, count = 0;  // NOLINT(runtime/int)
  bool mapped = false;
  while (std::fscanf(map, "%lu %lu %lu", &inside, &outside, &count) == 3) {
    mapped = mapped || (uid >= inside && uid - inside < count);
  }
  std::fclose(map);
  return mapped;
}

// A TCP port that was free a moment ago.
int FreeTcpPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
            0);
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

TEST_F(DaemonProtocolTest, TcpCallersMayOnlyRead) {
  // TCP callers have no credentials: before, tcp_address let any local user
  // list, load and force-unload, bypassing the unix socket's 0660.
  daemon_.reset();
  const int port = FreeTcpPort();
  const std::string config = dir_.Join("tcp.textproto");
  {
    std::FILE* file = std::fopen(config.c_str(), "w");
    ASSERT_NE(file, nullptr);
    std::fprintf(file, "listen { tcp_address: \"127.0.0.1:%d\" }\n", port);
    std::fclose(file);
  }
  daemon_ = std::make_unique<ChildProcess>(
      std::vector<std::string>{BinaryPath("daemon/warmstartd"), "--socket",
                               socket_, "--backend", backend_, "--model_root",
                               root_, "--preload", "tiny=" + model_path_,
                               "--config", config},
      dir_.path());
  testing::RunResult ready =
      RunProcess({BinaryPath("tools/warmstartctl/warmstartctl"), "wait-ready",
                  "--timeout", "30", "--socket", socket_});
  ASSERT_EQ(ready.exit_code, 0) << ready.err << daemon_->Stderr();

  auto tcp = v1::Warmstart::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    v1::ListModelsResponse models;
    ASSERT_TRUE(
        tcp->ListModels(&context, v1::ListModelsRequest(), &models).ok());
    EXPECT_EQ(models.models_size(), 1);
  }
  {
    grpc::ClientContext context;
    v1::UnloadModelRequest request;
    request.set_name("tiny");
    request.set_force(true);
    v1::ModelStatus status;
    grpc::Status refused = tcp->UnloadModel(&context, request, &status);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(refused.error_message(),
                HasSubstr("callers over TCP may not unload models"));
  }
  {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_name("other");
    request.set_path(model_path_);
    v1::ModelStatus status;
    EXPECT_EQ(tcp->LoadModel(&context, request, &status).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    // A session opened on the handle socket cannot be used over TCP.
    std::string session;
    const int handles = OpenSession(&session);
    grpc::ClientContext context;
    context.AddMetadata(kSessionMetadataKey, session);
    v1::AcquireModelRequest request;
    request.set_name("tiny");
    v1::Lease lease;
    EXPECT_EQ(tcp->AcquireModel(&context, request, &lease).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
    ::close(handles);
  }
  // The model is still there, for the unix socket's callers.
  grpc::ClientContext context;
  v1::ListModelsResponse models;
  ASSERT_TRUE(
      Stub()->ListModels(&context, v1::ListModelsRequest(), &models).ok());
  EXPECT_EQ(models.models_size(), 1);
}

TEST_F(DaemonProtocolTest, AnUnreadHandleSocketDoesNotBlockOthers) {
  // Unread SCM_RIGHTS descriptors are charged to the daemon's user, and an
  // unprivileged one may have no more in flight than its RLIMIT_NOFILE:
  // before, a client that acquired without reading its handle socket made
  // every later send fail (ETOOMANYREFS) and locked every client out. The
  // daemon runs as user nobody (as the systemd unit runs it unprivileged)
  // with a descriptor limit of 256; the binary is copied where nobody can
  // run it.
  if (::geteuid() != 0 || !UidMapped(65534)) {
    GTEST_SKIP() << "needs root and uid 65534 in this user namespace (a "
                    "sandbox maps root alone) to run a daemon as nobody";
  }
  daemon_.reset();
  // The killed root daemon's socket files, which nobody may not probe.
  ::unlink(socket_.c_str());
  ::unlink((socket_ + kHandleSocketSuffix).c_str());
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0777), 0);
  ASSERT_EQ(::chmod(root_.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(model_path_.c_str(), 0644), 0);
  const std::string binary = dir_.Join("warmstartd");
  std::filesystem::copy_file(BinaryPath("daemon/warmstartd"), binary);
  ASSERT_EQ(::chmod(binary.c_str(), 0755), 0);
  daemon_ = std::make_unique<ChildProcess>(
      std::vector<std::string>{
          "/usr/bin/prlimit", "--nofile=256:256", "--", "/usr/bin/setpriv",
          "--reuid=65534", "--regid=65534", "--clear-groups", binary,
          "--socket", socket_, "--backend", backend_, "--model_root", root_,
          "--preload", "tiny=" + model_path_},
      dir_.path());
  testing::RunResult ready =
      RunProcess({BinaryPath("tools/warmstartctl/warmstartctl"), "wait-ready",
                  "--timeout", "30", "--socket", socket_});
  ASSERT_EQ(ready.exit_code, 0) << ready.err << daemon_->Stderr();

  std::string session;
  const int never_read = OpenSession(&session);
  grpc::Status refused;
  int granted = 0;
  for (int i = 0; i < 400; ++i) {
    v1::Lease lease;
    grpc::Status status = AcquireTiny(session, &lease);
    if (!status.ok()) {
      refused = status;
      break;
    }
    ++granted;
  }
  // The daemon gave up on that session long before the kernel's limit, and
  // said why.
  EXPECT_LT(granted, 256);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.error_message();
  EXPECT_THAT(refused.error_message(),
              HasSubstr("descriptor bundles unread on the handle socket"));

  // Everyone else still acquires, through the client library.
  testing::RunResult other =
      RunProcess({BinaryPath("client/examples/map_model"), "--socket", socket_,
                  "--model", "tiny", "--cycles", "20"});
  EXPECT_EQ(other.exit_code, 0) << other.out << other.err << daemon_->Stderr();
  EXPECT_THAT(other.out, HasSubstr("\"event\":\"cycles\""));
  ::close(never_read);
}

// A client that asks for the packed tensor table gets it and no repeated
// tensors; one that does not (every client before the table) gets the
// repeated tensors and no table. Both list the same tensors, and so does
// the client library (which asks), tensor by tensor: a GGUF model and a
// tensorizer one (which records roles).
TEST_F(DaemonProtocolTest, PackedTableAndRepeatedTensorsListTheSameTensors) {
  const std::string roles_path = root_ + "/roles.tensors";
  std::filesystem::copy_file(
      testing::FixturePath("tensorizer/module_simple_v1.tensors"), roles_path);
  {
    grpc::ClientContext context;
    v1::LoadModelRequest load;
    load.set_name("roles");
    load.set_path(roles_path);
    v1::ModelStatus loaded;
    grpc::Status status = Stub()->LoadModel(&context, load, &loaded);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(loaded.state(), v1::READY) << loaded.error();
  }
  std::string session;
  const int handles = OpenSession(&session);
  client::ConnectOptions options;
  options.socket_path = socket_;
  ASSERT_OK_AND_ASSIGN(auto client, client::Client::Connect(options));
  bool saw_role = false;
  for (const std::string model : {"tiny", "roles"}) {
    SCOPED_TRACE(model);
    v1::Lease repeated;
    v1::Lease packed;
    for (bool ask : {false, true}) {
      grpc::ClientContext context;
      context.AddMetadata(kSessionMetadataKey, session);
      v1::AcquireModelRequest request;
      request.set_name(model);
      request.set_packed_tensor_table(ask);
      grpc::Status status =
          Stub()->AcquireModel(&context, request, ask ? &packed : &repeated);
      ASSERT_TRUE(status.ok()) << status.error_message();
      // The daemon closes a session that leaves bundles unread.
      uint64_t transfer_id = 0;
      for (int fd : ReceiveFds(handles, &transfer_id)) ::close(fd);
    }
    ASSERT_GT(repeated.tensors_size(), 0);
    EXPECT_TRUE(repeated.tensor_table().empty());
    EXPECT_EQ(packed.tensors_size(), 0);
    ASSERT_FALSE(packed.tensor_table().empty());
    ASSERT_OK_AND_ASSIGN(TensorTable table,
                         TensorTable::Parse(packed.tensor_table()));
    ASSERT_OK_AND_ASSIGN(client::ModelMapping mapping,
                         client->Acquire(model, absl::Seconds(30)));
    const TensorTableView& view = table.view();
    ASSERT_EQ(view.size(), static_cast<size_t>(repeated.tensors_size()));
    ASSERT_EQ(mapping.tensor_count(), view.size());
    for (size_t i = 0; i < view.size(); ++i) {
      const v1::Tensor& want = repeated.tensors(static_cast<int>(i));
      SCOPED_TRACE(want.name());
      const std::vector<uint64_t> shape(want.shape().begin(),
                                        want.shape().end());
      const client::TensorRecord record = mapping.tensor_record(i);
      EXPECT_EQ(view.name(i), want.name());
      EXPECT_EQ(record.name, want.name());
      EXPECT_EQ(view.dtype(i), want.dtype());
      EXPECT_EQ(record.dtype, want.dtype());
      EXPECT_EQ(view.role(i), want.role());
      EXPECT_EQ(record.role, want.role());
      EXPECT_EQ(
          std::vector<uint64_t>(view.shape(i).begin(), view.shape(i).end()),
          shape);
      EXPECT_EQ(std::vector<uint64_t>(record.shape.begin(), record.shape.end()),
                shape);
      EXPECT_EQ(view.nbytes(i), want.nbytes());
      EXPECT_EQ(record.nbytes, want.nbytes());
      EXPECT_EQ(view.offset(i), want.offset());
      EXPECT_EQ(record.offset, want.offset());
      saw_role = saw_role || !want.role().empty();
    }
  }
  EXPECT_TRUE(saw_role);
  ::close(handles);
}

TEST_F(DaemonProtocolTest, ClientReconnectsAfterADaemonRestart) {
  client::ConnectOptions options;
  options.socket_path = socket_;
  ASSERT_OK_AND_ASSIGN(auto client, client::Client::Connect(options));
  ASSERT_OK_AND_ASSIGN(client::ModelMapping before,
                       client->Acquire("tiny", absl::Seconds(30)));
  const client::TensorView* tensor = before.Find("token_embd.weight");
  ASSERT_NE(tensor, nullptr);
  const std::string bytes(static_cast<const char*>(tensor->data),
                          tensor->nbytes);

  ASSERT_EQ(daemon_->Stop(SIGKILL, 5000), -1);
  auto failed = client->Acquire("tiny", absl::Seconds(2));
  EXPECT_THAT(failed, StatusIs(absl::StatusCode::kUnavailable,
                               HasSubstr("daemon unavailable at")));
  // The old mapping stays readable: host memory outlives the daemon.
  EXPECT_EQ(std::string(static_cast<const char*>(tensor->data), tensor->nbytes),
            bytes);

  StartDaemon();
  ASSERT_OK_AND_ASSIGN(client::ModelMapping after,
                       client->Acquire("tiny", absl::Seconds(30)));
  const client::TensorView* again = after.Find("token_embd.weight");
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(again->data), again->nbytes),
            bytes);
  // The old lease died with the old daemon; releasing it is harmless.
  (void)before.Release();
  ASSERT_OK(after.Release());
}

// The CUDA backend end to end, on the simulated driver: the daemon loads
// onto the "GPU" and exports its memory by descriptor (VMM) or IPC handle,
// and the client library in this process imports it through the same
// simulated driver. Parameter: whether the simulated GPU supports VMM (the
// daemon exports CUDA_VMM_FD) or not (WARMSTART_SIM_VMM=0: the daemon falls
// back to cuMemAlloc and CUDA_IPC_HANDLE).
class SimulatedGpuTest : public DaemonProtocolTest,
                         public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    sim_path_ = BinaryPath("tests/doubles/libcuda_sim.so");
    ::setenv("WARMSTART_LIBCUDA", sim_path_.c_str(), 1);
    // Read by the daemon's cuInit; the client's import does not depend on
    // it.
    ::setenv("WARMSTART_SIM_VMM", GetParam() ? "1" : "0", 1);
    backend_ = "cuda";
    SetUpModelsAndStart();
  }
  void TearDown() override {
    ::unsetenv("WARMSTART_LIBCUDA");
    ::unsetenv("WARMSTART_SIM_VMM");
  }

  // What this process holds of the simulated driver that the client
  // loaded, and its open descriptors.
  struct Held {
    int allocations, address_ranges, ipc_mappings, context_retains, fds;
    bool operator==(const Held& o) const {
      return allocations == o.allocations &&
             address_ranges == o.address_ranges &&
             ipc_mappings == o.ipc_mappings &&
             context_retains == o.context_retains && fds == o.fds;
    }
  };
  Held Now() const {
    // The client loaded the library from this path; this finds that copy.
    void* library = ::dlopen(sim_path_.c_str(), RTLD_NOW | RTLD_NOLOAD);
    EXPECT_NE(library, nullptr);
    auto counter = [library](const char* name) {
      auto fn = reinterpret_cast<int (*)()>(::dlsym(library, name));
      return fn != nullptr ? fn() : -1;
    };
    Held held{counter("warmstart_sim_live_allocations"),
              counter("warmstart_sim_live_address_ranges"),
              counter("warmstart_sim_live_ipc_mappings"),
              counter("warmstart_sim_context_retains"), 0};
    for (const auto& entry :
         std::filesystem::directory_iterator("/proc/self/fd")) {
      (void)entry;
      ++held.fds;
    }
    ::dlclose(library);
    return held;
  }

  std::string sim_path_;
};

std::string PathName(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "vmm" : "legacy_ipc";
}

// Tensor name -> sha256, from the fixture's expected values.
std::map<std::string, std::string> ExpectedSha256() {
  const nlohmann::json facts = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::FixturePath(kFixtureFacts)));
  std::map<std::string, std::string> sha256;
  for (const nlohmann::json& tensor : facts.at("tensors")) {
    sha256[tensor.at("name").get<std::string>()] =
        tensor.at("sha256").get<std::string>();
  }
  return sha256;
}

// The bytes of a tensor the client mapped on the SIMULATED GPU. Only the
// simulation allows this: its device pointers are host addresses. On a real
// GPU they must be copied to the host (cuMemcpyDtoH, as
// client/cuda_import_gpu_test.cc does).
absl::string_view SimulatedDeviceBytes(const client::TensorView& tensor) {
  return absl::string_view(static_cast<const char*>(tensor.data),
                           tensor.nbytes);
}

TEST_P(SimulatedGpuTest, LeasesDescribeDeviceMemoryByUuid) {
  std::string session;
  const int handles = OpenSession(&session);
  v1::Lease lease;
  grpc::Status status = AcquireTiny(session, &lease);
  ASSERT_TRUE(status.ok()) << status.error_message() << daemon_->Stderr();
  ASSERT_EQ(lease.allocations_size(), 1);
  const v1::Allocation& allocation = lease.allocations(0);
  EXPECT_THAT(allocation.device_uuid(), ::testing::StartsWith("GPU-"));
  EXPECT_THAT(lease.model().devices(),
              ::testing::ElementsAre(allocation.device_uuid()));
  EXPECT_EQ(lease.tensors_size(), 12);
  if (!GetParam()) {
    ASSERT_EQ(allocation.kind(), v1::CUDA_IPC_HANDLE);
    EXPECT_EQ(allocation.ipc_handle().size(), 64u);
    EXPECT_EQ(lease.fd_transfer_id(), 0u);
  } else {
    ASSERT_EQ(allocation.kind(), v1::CUDA_VMM_FD);
    uint64_t transfer_id = 0;
    std::vector<int> fds = ReceiveFds(handles, &transfer_id);
    EXPECT_EQ(transfer_id, lease.fd_transfer_id());
    ASSERT_EQ(fds.size(), 1u);
    ::close(fds[0]);
  }
  ::close(handles);
}

TEST_P(SimulatedGpuTest, ClientMapsDeviceMemoryAndReleasesIt) {
  client::ConnectOptions options;
  options.socket_path = socket_;
  ASSERT_OK_AND_ASSIGN(auto client, client::Client::Connect(options));
  EXPECT_EQ(client->server_info().backend(), v1::BACKEND_CUDA);
  // The first acquire opens the session (its socket stays open) and loads
  // the driver; count what is held after it.
  {
    ASSERT_OK_AND_ASSIGN(client::ModelMapping first,
                         client->Acquire("tiny", absl::Seconds(30)));
    ASSERT_OK(first.Release());
  }
  const Held before = Now();

  ASSERT_OK_AND_ASSIGN(client::ModelMapping mapping,
                       client->Acquire("tiny", absl::Seconds(30)));
  const std::map<std::string, std::string> expected = ExpectedSha256();
  ASSERT_EQ(mapping.tensors().size(), expected.size());
  ASSERT_EQ(mapping.model().devices_size(), 1);
  const std::string gpu = mapping.model().devices(0);
  EXPECT_THAT(gpu, ::testing::StartsWith("GPU-"));
  for (const client::TensorView& tensor : mapping.tensors()) {
    EXPECT_EQ(tensor.device_uuid, gpu) << tensor.name;
    ASSERT_NE(tensor.data, nullptr) << tensor.name;
    // VMM: the simulated driver grants read-only access
    // (CU_MEM_ACCESS_FLAGS_PROT_READ). Legacy IPC is always read-write.
    EXPECT_EQ(tensor.read_only, GetParam()) << tensor.name;
    EXPECT_EQ(testing::Sha256Hex(SimulatedDeviceBytes(tensor)),
              expected.at(tensor.name))
        << tensor.name;
  }
  RecordProperty("device_access", GetParam() ? "read-only" : "read-write");
  const client::TensorView* embd = mapping.Find("token_embd.weight", gpu);
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(testing::Sha256Hex(SimulatedDeviceBytes(*embd)),
            "20d11b1af9867eb745affaf279a1f2371687215d93e8eca28f8ec2ff09186774");

  // A second mapping of the model in this process: a legacy handle is
  // opened again (the driver returns the same pointer and counts opens);
  // a VMM descriptor is imported again at another address.
  {
    ASSERT_OK_AND_ASSIGN(client::ModelMapping second,
                         client->Acquire("tiny", absl::Seconds(30)));
    const client::TensorView* again = second.Find("token_embd.weight");
    ASSERT_NE(again, nullptr);
    if (GetParam()) {
      EXPECT_NE(again->data, embd->data);
    } else {
      EXPECT_EQ(again->data, embd->data);
    }
    EXPECT_EQ(SimulatedDeviceBytes(*again), SimulatedDeviceBytes(*embd));
    ASSERT_OK(second.Release());
  }
  // Releasing the second closed only its own open.
  EXPECT_EQ(testing::Sha256Hex(SimulatedDeviceBytes(*embd)),
            expected.at("token_embd.weight"));
  ASSERT_OK(mapping.Release());
  // Everything imported is released: imported handles, address ranges,
  // opened IPC handles, context retains and descriptors.
  const Held after = Now();
  EXPECT_TRUE(after == before)
      << "allocations " << before.allocations << " -> " << after.allocations
      << ", address ranges " << before.address_ranges << " -> "
      << after.address_ranges << ", ipc mappings " << before.ipc_mappings
      << " -> " << after.ipc_mappings << ", context retains "
      << before.context_retains << " -> " << after.context_retains << ", fds "
      << before.fds << " -> " << after.fds;
  EXPECT_EQ(before.ipc_mappings, 0);
  EXPECT_EQ(before.context_retains, 0);
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus model, client->GetModel("tiny"));
  EXPECT_EQ(model.leases(), 0u);
}

TEST_P(SimulatedGpuTest, AGpuTheClientCannotSeeIsNotFound) {
  // A worker whose driver sees no GPU (as with CUDA_VISIBLE_DEVICES
  // hiding it): only the child process gets the setting.
  ::setenv("WARMSTART_SIM_DEVICES", "0", 1);
  testing::RunResult run = RunProcess({BinaryPath("client/examples/map_model"),
                                       "--socket", socket_, "--model", "tiny"});
  ::unsetenv("WARMSTART_SIM_DEVICES");
  EXPECT_EQ(run.exit_code, 2) << run.out << run.err;
  const nlohmann::json event = nlohmann::json::parse(run.out, nullptr, false);
  ASSERT_FALSE(event.is_discarded()) << run.out;
  EXPECT_EQ(event.value("code", ""), "NOT_FOUND") << run.out;
  // The simulated GPU's UUID ("ws-simulated-gpu" in hex).
  EXPECT_THAT(event.value("message", ""),
              HasSubstr("GPU GPU-77732d73-696d-756c-6174-65642d677075 is not "
                        "visible to this process: the CUDA driver sees no GPU"))
      << run.out;
  // The failed acquire gave its lease back.
  client::ConnectOptions options;
  options.socket_path = socket_;
  ASSERT_OK_AND_ASSIGN(auto client, client::Client::Connect(options));
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus model, client->GetModel("tiny"));
  EXPECT_EQ(model.leases(), 0u);
}

INSTANTIATE_TEST_SUITE_P(ExportKinds, SimulatedGpuTest, ::testing::Bool(),
                         PathName);

}  // namespace
}  // namespace warmstart
