// The daemon's protocol seen from below the client library: sessions on the
// handle socket, descriptors that cannot be used to write, refusals of
// forged sessions; and the client library across a daemon restart.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "client/client.h"
#include "daemon/base/testing/status_matchers.h"
#include "daemon/base/testing/test_env.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/warmstart.grpc.pb.h"
#include "tests/subprocess.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::warmstart::testing::BinaryPath;
using ::warmstart::testing::ChildProcess;
using ::warmstart::testing::RunProcess;
using ::warmstart::testing::ShortTempDir;

constexpr char kFixture[] = "gguf/ollama-llama-2-tiny-random.gguf";

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
        RunProcess({BinaryPath("daemon/ctl/warmstartctl"), "wait-ready",
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
    const std::string path = socket_ + ".handles";
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
  grpc::ClientContext context;
  context.AddMetadata("warmstart-session", session);
  v1::AcquireModelRequest request;
  request.set_name("tiny");
  v1::Lease lease;
  grpc::Status status = Stub()->AcquireModel(&context, request, &lease);
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
    context.AddMetadata("warmstart-session", forged);
    v1::Lease lease;
    grpc::Status status = Stub()->AcquireModel(&context, request, &lease);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << forged.size();
    EXPECT_THAT(status.error_message(), HasSubstr("unknown or closed"));
  }
  {
    // Past gRPC's 8 KiB metadata limit: refused before any handler runs.
    grpc::ClientContext context;
    context.AddMetadata("warmstart-session", std::string(100000, 'z'));
    v1::Lease lease;
    grpc::Status status = Stub()->AcquireModel(&context, request, &lease);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  std::string session;
  ::close(OpenSession(&session));
  // The daemon notices the close at once; give its thread a moment.
  absl::SleepFor(absl::Milliseconds(200));
  grpc::ClientContext context;
  context.AddMetadata("warmstart-session", session);
  v1::ReleaseModelRequest release;
  release.set_lease_id("whatever");
  v1::ReleaseModelResponse response;
  grpc::Status status = Stub()->ReleaseModel(&context, release, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("unknown or closed"));
}

TEST_F(DaemonProtocolTest, AnotherSessionCannotReleaseMyLease) {
  std::string mine, theirs;
  const int my_socket = OpenSession(&mine);
  const int their_socket = OpenSession(&theirs);
  grpc::ClientContext acquire;
  acquire.AddMetadata("warmstart-session", mine);
  v1::AcquireModelRequest request;
  request.set_name("tiny");
  v1::Lease lease;
  ASSERT_TRUE(Stub()->AcquireModel(&acquire, request, &lease).ok());
  grpc::ClientContext release;
  release.AddMetadata("warmstart-session", theirs);
  v1::ReleaseModelRequest release_request;
  release_request.set_lease_id(lease.lease_id());
  v1::ReleaseModelResponse response;
  grpc::Status status =
      Stub()->ReleaseModel(&release, release_request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ::close(my_socket);
  ::close(their_socket);
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
// onto the "GPU" and exports its memory by descriptor (VMM) or IPC handle.
class SimulatedGpuTest : public DaemonProtocolTest {
 protected:
  void SetUp() override {
    ::setenv("WARMSTART_LIBCUDA",
             BinaryPath("daemon/device/libcuda_sim.so").c_str(), 1);
    backend_ = "cuda";
    SetUpModelsAndStart();
  }
  void TearDown() override { ::unsetenv("WARMSTART_LIBCUDA"); }
};

TEST_F(SimulatedGpuTest, LeasesDescribeDeviceMemoryByUuid) {
  std::string session;
  const int handles = OpenSession(&session);
  grpc::ClientContext context;
  context.AddMetadata("warmstart-session", session);
  v1::AcquireModelRequest request;
  request.set_name("tiny");
  v1::Lease lease;
  grpc::Status status = Stub()->AcquireModel(&context, request, &lease);
  ASSERT_TRUE(status.ok()) << status.error_message() << daemon_->Stderr();
  ASSERT_EQ(lease.allocations_size(), 1);
  const v1::Allocation& allocation = lease.allocations(0);
  EXPECT_THAT(allocation.device_uuid(), ::testing::StartsWith("GPU-"));
  EXPECT_THAT(lease.model().devices(),
              ::testing::ElementsAre(allocation.device_uuid()));
  EXPECT_EQ(lease.tensors_size(), 12);
  if (allocation.kind() == v1::CUDA_IPC_HANDLE) {
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
  // The client library maps host memory only until CUDA import exists.
  client::ConnectOptions options;
  options.socket_path = socket_;
  ASSERT_OK_AND_ASSIGN(auto client, client::Client::Connect(options));
  EXPECT_EQ(client->server_info().backend(), v1::BACKEND_CUDA);
  EXPECT_THAT(client->Acquire("tiny", absl::Seconds(10)),
              StatusIs(absl::StatusCode::kUnimplemented,
                       HasSubstr("CUDA import is not built yet")));
  ::close(handles);
}

}  // namespace
}  // namespace warmstart
