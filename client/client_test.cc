#include "client/client.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "common/tensor_table.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "tests/doubles/fake_daemon.h"
#include "tests/doubles/subprocess.h"

namespace warmstart {
namespace client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::warmstart::testing::ChildProcess;
using ::warmstart::testing::FakeBehavior;
using ::warmstart::testing::FakeCall;
using ::warmstart::testing::FakeDaemon;
using ::warmstart::testing::FakeModel;
using ::warmstart::testing::ShortTempDir;

// The descriptors of this process that are the fake's weight memfds (the
// fake closes its own copies once sent, so these are the client's).
std::vector<int> OpenWeightMemfds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    char target[256];
    const std::string link = std::string("/proc/self/fd/") + entry->d_name;
    ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (std::strncmp(target, "/memfd:ws-fake-weights", 22) == 0) {
      fds.push_back(std::atoi(entry->d_name));
    }
  }
  ::closedir(dir);
  return fds;
}

v1::ModelStatus MakeStatus(const std::string& name, v1::ModelState state,
                           uint64_t loaded, uint64_t total) {
  v1::ModelStatus status;
  status.set_name(name);
  status.set_path("/models/" + name + ".safetensors");
  status.set_state(state);
  status.set_bytes_loaded(loaded);
  status.set_bytes_total(total);
  status.add_devices("host");
  return status;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeModel model = ::warmstart::testing::PatternModel("tiny", 10000);
    bytes_ = model.bytes;
    model.progress = {MakeStatus("tiny", v1::LOADING, 0, bytes_.size()),
                      MakeStatus("tiny", v1::LOADING, 5000, bytes_.size())};
    fake_.AddModel(model);
    ASSERT_OK(fake_.Start());
  }

  std::unique_ptr<Client> Connect() {
    ConnectOptions options;
    options.socket_path = fake_.socket_path();
    options.timeout = absl::Seconds(2);
    auto client = Client::Connect(options);
    EXPECT_OK(client.status());
    return client.ok() ? std::move(*client) : nullptr;
  }

  void SetBehavior(void (*change)(FakeBehavior&)) {
    FakeBehavior behavior = fake_.behavior();
    change(behavior);
    fake_.set_behavior(behavior);
  }

  std::string bytes_;
  ShortTempDir dir_;
  FakeDaemon fake_{dir_.path()};
};

TEST_F(ClientTest, AcquireMapsTheBytesReadOnly) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_OK_AND_ASSIGN(ModelMapping mapping, client->Acquire("tiny"));
  EXPECT_TRUE(mapping.held());
  EXPECT_EQ(mapping.model().name(), "tiny");
  EXPECT_EQ(mapping.lease_id(), "lease-1");
  ASSERT_EQ(mapping.tensors().size(), 2u);
  const TensorView* b = mapping.Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, "U8");
  EXPECT_THAT(b->shape, ElementsAre(100));
  EXPECT_EQ(b->nbytes, 100u);
  EXPECT_EQ(b->device_uuid, "host");
  EXPECT_EQ(std::string(static_cast<const char*>(b->data), b->nbytes),
            bytes_.substr(256, 100));
  EXPECT_EQ(mapping.Find("b", "host"), b);
  EXPECT_EQ(mapping.Find("b", "GPU-0"), nullptr);
  EXPECT_EQ(mapping.Find("c"), nullptr);
  const TensorView* a = mapping.Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(std::memcmp(a->data, bytes_.data(), 64), 0);

  // Nothing this process holds can change the weights.
  std::vector<int> memfds = OpenWeightMemfds();
  ASSERT_EQ(memfds.size(), 1u);
  const int fd = memfds[0];
  EXPECT_EQ(::fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  errno = 0;
  EXPECT_EQ(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(::ftruncate(fd, 0), 0);
  EXPECT_NE(::ftruncate(fd, 1 << 20), 0);
  EXPECT_NE(::pwrite(fd, "x", 1, 0), 1);
  void* page = const_cast<void*>(a->data);
  EXPECT_NE(::mprotect(page, 4096, PROT_READ | PROT_WRITE), 0);

  const std::string lease = mapping.lease_id();
  EXPECT_OK(mapping.Release());
  EXPECT_FALSE(mapping.held());
  EXPECT_TRUE(mapping.tensors().empty());
  EXPECT_TRUE(OpenWeightMemfds().empty());
  EXPECT_THAT(fake_.released_leases(), ElementsAre(lease));
  EXPECT_EQ(fake_.outstanding_leases(), 0);
  // Idempotent: nothing is sent twice.
  EXPECT_OK(mapping.Release());
  EXPECT_THAT(fake_.released_leases(), ElementsAre(lease));
}

// A model of odd tensors (non-ASCII name, 0-byte, 0-dim, repeated name)
// next to PatternModel's "a" and "b".
FakeModel OddModel() {
  FakeModel odd = ::warmstart::testing::PatternModel("odd", 4096);
  v1::Tensor unicode;
  unicode.set_name("layers.0/\xc3\xbc name \xe5\x90\x8d.weight");
  unicode.set_dtype("F16");
  unicode.add_shape(2);
  unicode.add_shape(3);
  unicode.set_offset(1024);
  unicode.set_nbytes(12);
  v1::Tensor empty;
  empty.set_name("empty");
  empty.set_dtype("F32");
  empty.add_shape(0);
  empty.add_shape(4);
  empty.set_offset(2048);
  empty.set_nbytes(0);
  v1::Tensor repeated = odd.tensors[0];  // A second "a", later.
  repeated.set_offset(3000);
  v1::Tensor scalar;
  scalar.set_name("scalar");
  scalar.set_dtype("F64");
  scalar.set_offset(3008);
  scalar.set_nbytes(8);
  scalar.set_role("buffer");
  odd.tensors.push_back(unicode);
  odd.tensors.push_back(empty);
  odd.tensors.push_back(repeated);
  odd.tensors.push_back(scalar);
  return odd;
}

// The views are built on first use from the lease's records: every field
// of every record agrees with its view, Find works before and after
// tensors() and after a move (the name index views the table's strings),
// names need not be ASCII, a 0-byte tensor has no data, a repeated name
// finds its first tensor, and nothing is left once released.
// Read from the packed table (`packed`) or from the repeated tensors of a
// daemon that predates it, the records and views are the same.
void ExpectRecordsViewsAndFindAgree(FakeDaemon& fake, bool packed) {
  FakeBehavior behavior;
  behavior.packed_tensor_table = packed;
  fake.set_behavior(behavior);
  const FakeModel odd = OddModel();
  const v1::Tensor& unicode = odd.tensors[2];
  fake.AddModel(odd);
  ConnectOptions options;
  options.socket_path = fake.socket_path();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client,
                       Client::Connect(options));
  ASSERT_OK_AND_ASSIGN(ModelMapping first, client->Acquire("odd"));
  // The client asks for the table; it gets one when the daemon has it.
  ASSERT_FALSE(fake.acquire_requests().empty());
  EXPECT_TRUE(fake.acquire_requests().back().packed_tensor_table());
  ASSERT_EQ(first.tensor_count(), 6u);
  // Find before any view exists.
  const TensorView* found = first.Find(unicode.name());
  ASSERT_NE(found, nullptr);
  ModelMapping mapping(std::move(first));
  EXPECT_EQ(first.tensor_count(), 0u);
  const std::vector<TensorView>& views = mapping.tensors();
  ASSERT_EQ(views.size(), 6u);
  EXPECT_EQ(found, &views[2]);
  EXPECT_EQ(mapping.Find(unicode.name()), &views[2]);
  const char* base = static_cast<const char*>(views[0].data);
  for (size_t i = 0; i < views.size(); ++i) {
    SCOPED_TRACE(views[i].name);
    const TensorRecord record = mapping.tensor_record(i);
    const v1::Tensor& sent = odd.tensors[i];
    EXPECT_EQ(record.name, sent.name());
    EXPECT_EQ(record.name.data()[record.name.size()], '\0');
    EXPECT_EQ(record.dtype, sent.dtype());
    EXPECT_EQ(record.role, sent.role());
    EXPECT_EQ(std::vector<uint64_t>(record.shape.begin(), record.shape.end()),
              std::vector<uint64_t>(sent.shape().begin(), sent.shape().end()));
    EXPECT_EQ(record.nbytes, sent.nbytes());
    EXPECT_EQ(record.offset, sent.offset());
    EXPECT_EQ(views[i].name, sent.name());
    EXPECT_EQ(views[i].dtype, sent.dtype());
    EXPECT_EQ(views[i].shape,
              std::vector<uint64_t>(sent.shape().begin(), sent.shape().end()));
    EXPECT_EQ(views[i].nbytes, sent.nbytes());
    EXPECT_EQ(views[i].role, sent.role());
    EXPECT_EQ(views[i].device_uuid, "host");
    EXPECT_EQ(*record.device_uuid, "host");
    EXPECT_EQ(views[i].data, base + sent.offset());
    EXPECT_EQ(record.data, views[i].data);
    EXPECT_TRUE(views[i].read_only);
    EXPECT_TRUE(record.read_only);
  }
  EXPECT_EQ(std::string(static_cast<const char*>(views[2].data), 12),
            odd.bytes.substr(1024, 12));
  EXPECT_EQ(mapping.Find("empty")->nbytes, 0u);
  EXPECT_EQ(mapping.Find("a"), &views[0]);
  EXPECT_EQ(mapping.Find("a", "host"), &views[0]);
  EXPECT_EQ(mapping.Find("a", "GPU-0"), nullptr);
  EXPECT_EQ(mapping.Find("layers.0"), nullptr);
  EXPECT_TRUE(mapping.Find("scalar")->shape.empty());
  EXPECT_EQ(mapping.Find("scalar")->role, "buffer");
  EXPECT_OK(mapping.Release());
  EXPECT_EQ(mapping.tensor_count(), 0u);
  EXPECT_TRUE(mapping.tensors().empty());
  EXPECT_EQ(mapping.Find("a"), nullptr);
}

TEST_F(ClientTest, RecordsViewsAndFindAgreeOnEveryTensorFromThePackedTable) {
  ExpectRecordsViewsAndFindAgree(fake_, /*packed=*/true);
}

TEST_F(ClientTest, RecordsViewsAndFindAgreeOnEveryTensorFromAnOlderDaemon) {
  ExpectRecordsViewsAndFindAgree(fake_, /*packed=*/false);
}

// A table that is not what Lease.tensor_table describes is refused, naming
// the model, the field and the flaw; the lease is given back and nothing
// stays open.
TEST_F(ClientTest, AMalformedTensorTableIsRefusedNamingModelAndField) {
  const FakeModel odd = OddModel();
  fake_.AddModel(odd);
  absl::StatusOr<std::string> good =
      EncodeTensorTable(odd.tensors.size(), [&odd](size_t i) {
        const v1::Tensor& t = odd.tensors[i];
        return TensorTableEntry{
            t.name(),   t.dtype(),
            t.role(),   absl::MakeConstSpan(t.shape().data(), t.shape_size()),
            t.nbytes(), t.offset()};
      });
  ASSERT_OK(good);
  std::string past_end = *good;
  const uint32_t far = 1u << 30;  // Tensor 1's name_offset.
  std::memcpy(&past_end[40 + 48 + 16], &far, sizeof(far));
  std::string bad_magic = *good;
  bad_magic[0] = 'X';
  std::string too_many = *good;
  const uint64_t count = uint64_t{1} << 62;
  std::memcpy(&too_many[16], &count, sizeof(count));
  struct Case {
    std::string bytes;
    std::string why;
  };
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  int released = 0;
  for (const Case& c :
       {Case{good->substr(0, good->size() - 1), "string_bytes: "},
        Case{good->substr(0, 12), "12 bytes, fewer than the 40"},
        Case{past_end, "tensor 1: name (offset 1073741824"},
        Case{bad_magic, "magic: 0x54545358"},
        Case{too_many, "tensor_count: 4611686018427387904"}}) {
    SCOPED_TRACE(c.why);
    FakeBehavior behavior;
    behavior.tensor_table_bytes = c.bytes;
    fake_.set_behavior(behavior);
    absl::StatusOr<ModelMapping> mapping = client->Acquire("odd");
    EXPECT_THAT(mapping,
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("model odd: lease lease-" +
                                   std::to_string(released + 1) +
                                   ": the daemon's Lease.tensor_table (")));
    EXPECT_THAT(mapping.status().message(), HasSubstr(c.why));
    ++released;
    EXPECT_EQ(fake_.released_leases().size(), static_cast<size_t>(released));
    EXPECT_TRUE(OpenWeightMemfds().empty());
  }
  // A table next to repeated tensors: a daemon that is neither old nor new.
  FakeBehavior both;
  both.packed_tensor_table = false;
  both.tensor_table_bytes = *good;
  fake_.set_behavior(both);
  EXPECT_THAT(client->Acquire("odd"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("sent both Lease.tensor_table and 6 "
                                 "Lease.tensors")));
  // And the good table is read.
  FakeBehavior served;
  served.tensor_table_bytes = *good;
  fake_.set_behavior(served);
  ASSERT_OK_AND_ASSIGN(ModelMapping mapping, client->Acquire("odd"));
  EXPECT_EQ(mapping.tensor_count(), 6u);
}

TEST_F(ClientTest, DestructorAndMoveRelease) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  {
    ASSERT_OK_AND_ASSIGN(ModelMapping first, client->Acquire("tiny"));
    ModelMapping moved(std::move(first));
    EXPECT_FALSE(first.held());
    EXPECT_TRUE(moved.held());
    ASSERT_OK_AND_ASSIGN(ModelMapping second, client->Acquire("tiny"));
    // Assigning over a held mapping releases it first.
    moved = std::move(second);
    EXPECT_THAT(fake_.released_leases(), ElementsAre("lease-1"));
    EXPECT_EQ(moved.lease_id(), "lease-2");
    EXPECT_EQ(OpenWeightMemfds().size(), 1u);
  }
  EXPECT_THAT(fake_.released_leases(), ElementsAre("lease-1", "lease-2"));
  EXPECT_TRUE(OpenWeightMemfds().empty());
}

TEST_F(ClientTest, MappingOutlivesClient) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_OK_AND_ASSIGN(ModelMapping mapping, client->Acquire("tiny"));
  client.reset();
  const TensorView* b = mapping.Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(b->data), b->nbytes),
            bytes_.substr(256, 100));
  EXPECT_OK(mapping.Release());
  EXPECT_THAT(fake_.released_leases(), ElementsAre("lease-1"));
}

TEST_F(ClientTest, SessionIdRidesOnEveryCallOnceOpen) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_OK(client->List().status());
  ASSERT_OK_AND_ASSIGN(ModelMapping mapping, client->Acquire("tiny"));
  ASSERT_OK(client->List().status());
  ASSERT_OK(client->Stats().status());
  ASSERT_OK(mapping.Release());
  ASSERT_EQ(fake_.session_ids().size(), 1u);
  const std::string session = fake_.session_ids()[0];
  EXPECT_EQ(session.size(), 32u);
  std::vector<std::string> seen;
  for (const FakeCall& call : fake_.calls()) {
    seen.push_back(call.method + "=" + call.session_id);
  }
  EXPECT_THAT(seen,
              ElementsAre("GetServerInfo=", "ListModels=", "GetServerInfo=",
                          "AcquireModel=" + session, "ListModels=" + session,
                          "GetStats=" + session, "ReleaseModel=" + session));
}

TEST_F(ClientTest, StaleBundlesAreSkippedAndClosed) {
  SetBehavior([](FakeBehavior& b) { b.send_stale_bundle = true; });
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_OK_AND_ASSIGN(ModelMapping first, client->Acquire("tiny"));
  ASSERT_OK_AND_ASSIGN(ModelMapping second, client->Acquire("tiny"));
  for (const ModelMapping* mapping : {&first, &second}) {
    const TensorView* a = mapping->Find("a");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(std::memcmp(a->data, bytes_.data(), 64), 0);
  }
  // Only the two mapped memfds are open: the stale ones were closed.
  EXPECT_EQ(OpenWeightMemfds().size(), 2u);
}

TEST_F(ClientTest, WrongDescriptorCountIsAnErrorAndLeaksNothing) {
  SetBehavior([](FakeBehavior& b) { b.extra_fds = 2; });
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(OpenWeightMemfds().empty());
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr("sent 3 descriptors for 1 allocations")));
  EXPECT_TRUE(OpenWeightMemfds().empty());
  EXPECT_THAT(fake_.released_leases(), ElementsAre("lease-1"));
  EXPECT_EQ(fake_.outstanding_leases(), 0);

  SetBehavior([](FakeBehavior& b) {
    b.extra_fds = 0;
    b.count_delta = 1;
  });
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr("announced 2 descriptors but carried 1")));
  EXPECT_TRUE(OpenWeightMemfds().empty());
  EXPECT_EQ(fake_.outstanding_leases(), 0);

  // The session survives a bad bundle.
  SetBehavior([](FakeBehavior& b) { b.count_delta = 0; });
  EXPECT_OK(client->Acquire("tiny").status());
}

TEST_F(ClientTest, UnsafeDescriptorsAreRefused) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  SetBehavior([](FakeBehavior& b) { b.seal = false; });
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("not sealed")));
  SetBehavior([](FakeBehavior& b) {
    b.seal = true;
    b.allocation_size = 1 << 20;
  });
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr("holds 10000 bytes, fewer than the 1048576")));
  SetBehavior([](FakeBehavior& b) { b.allocation_size = 300; });
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor b (bytes 256 + 100) lies outside its "
                                 "allocation of 300 bytes")));
  EXPECT_TRUE(OpenWeightMemfds().empty());
  EXPECT_EQ(fake_.outstanding_leases(), 0);
  EXPECT_EQ(fake_.released_leases().size(), 3u);
}

TEST_F(ClientTest, GpuModelOnAGpuThisProcessCannotSeeIsNotFound) {
  // The simulated CUDA driver (tests/doubles/cuda_sim.h) sees one
  // GPU, not this one. (CUDA import itself: cuda_import_test and
  // //tests:daemon_protocol_test.) The client keeps the driver it loads
  // first for the process's life, so this is the only test here that
  // reaches CUDA; the variable is cleared even when an assertion fails.
  ::setenv(
      "WARMSTART_LIBCUDA",
      ::warmstart::testing::BinaryPath("tests/doubles/libcuda_sim.so").c_str(),
      1);
  absl::Cleanup unset = [] { ::unsetenv("WARMSTART_LIBCUDA"); };
  SetBehavior([](FakeBehavior& b) {
    b.kind = v1::CUDA_VMM_FD;
    b.device_uuid = "GPU-1234";
  });
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("model tiny, allocation 0: import CUDA VMM "
                                 "memory (10000 bytes) on GPU-1234: GPU "
                                 "GPU-1234 is not visible to this process")));
  EXPECT_TRUE(OpenWeightMemfds().empty());
  EXPECT_EQ(fake_.outstanding_leases(), 0);
}

TEST_F(ClientTest, DaemonErrorsKeepTheirCodeAndMessage) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  EXPECT_THAT(client->Acquire("nope"),
              StatusIs(absl::StatusCode::kNotFound, "no model named nope"));
  EXPECT_THAT(client->GetModel("nope"),
              StatusIs(absl::StatusCode::kNotFound, "no model named nope"));
  EXPECT_THAT(client->Unload("nope"),
              StatusIs(absl::StatusCode::kNotFound, "no model named nope"));
  FakeBehavior behavior = fake_.behavior();
  behavior.load_error =
      grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "tiny is other files");
  behavior.unload_error =
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "tiny is leased");
  fake_.set_behavior(behavior);
  EXPECT_THAT(
      client->Load("tiny", "/models/x"),
      StatusIs(absl::StatusCode::kAlreadyExists, "tiny is other files"));
  EXPECT_THAT(
      client->Unload("tiny"),
      StatusIs(absl::StatusCode::kFailedPrecondition, "tiny is leased"));
}

TEST_F(ClientTest, LoadWatchListUnload) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  LoadModelOptions options;
  options.devices = {"host"};
  options.no_wait = true;
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus started,
                       client->Load("tiny", "/models/tiny", options));
  EXPECT_EQ(started.state(), v1::LOADING);
  ASSERT_EQ(fake_.load_requests().size(), 1u);
  EXPECT_EQ(fake_.load_requests()[0].path(), "/models/tiny");
  EXPECT_TRUE(fake_.load_requests()[0].no_wait());
  EXPECT_THAT(fake_.load_requests()[0].devices(), ElementsAre("host"));

  std::vector<uint64_t> loaded;
  EXPECT_OK(client->Watch("tiny", [&](const v1::ModelStatus& status) {
    loaded.push_back(status.bytes_loaded());
  }));
  EXPECT_THAT(loaded, ElementsAre(0, 5000, 10000));
  EXPECT_THAT(client->Watch("nope", [](const v1::ModelStatus&) {}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));

  ASSERT_OK_AND_ASSIGN(v1::ModelStatus ready, client->Load("tiny", "/m"));
  EXPECT_EQ(ready.state(), v1::READY);

  ASSERT_OK_AND_ASSIGN(auto models, client->List());
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].name(), "tiny");
  ASSERT_OK_AND_ASSIGN(v1::ModelStatus one, client->GetModel("tiny"));
  EXPECT_EQ(one.bytes_total(), 10000u);
  ASSERT_OK_AND_ASSIGN(v1::Stats stats, client->Stats());
  EXPECT_EQ(stats.models(), 1u);
  ASSERT_OK_AND_ASSIGN(v1::ServerInfo info, client->ServerInfo());
  EXPECT_EQ(info.handle_socket_name(), "ws.handles");

  ASSERT_OK(client->Unload("tiny", /*force=*/true).status());
  ASSERT_EQ(fake_.unload_requests().size(), 1u);
  EXPECT_TRUE(fake_.unload_requests()[0].force());
  ASSERT_OK_AND_ASSIGN(models, client->List());
  EXPECT_TRUE(models.empty());
}

TEST_F(ClientTest, FailedLoadIsTheModelsError) {
  FakeModel broken;
  broken.status = MakeStatus("broken", v1::FAILED, 10, 100);
  broken.status.set_error("read /models/broken: Input/output error");
  broken.status.set_error_code(static_cast<int>(absl::StatusCode::kDataLoss));
  broken.progress = {MakeStatus("broken", v1::LOADING, 10, 100)};
  fake_.AddModel(broken);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  int calls = 0;
  EXPECT_THAT(client->Watch("broken", [&](const v1::ModelStatus&) { ++calls; }),
              StatusIs(absl::StatusCode::kDataLoss,
                       "read /models/broken: Input/output error"));
  EXPECT_EQ(calls, 2);
  // Whether the load call waits (the daemon's error) or not (the failed
  // status), the result is the model's error.
  EXPECT_THAT(client->Load("broken", "/models/broken"),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("Input/output")));
  // A no_wait load that finds the model failed already.
  broken.progress.clear();
  broken.status.set_name("dead");
  fake_.AddModel(broken);
  LoadModelOptions no_wait;
  no_wait.no_wait = true;
  EXPECT_THAT(client->Load("dead", "/models/dead", no_wait),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("Input/output")));
}

TEST_F(ClientTest, DaemonGoneIsUnavailableNamingTheSocket) {
  ConnectOptions options;
  options.socket_path = fake_.socket_path();
  // Also how long an acquire waits for a daemon to come back: long enough
  // for a loaded machine, short enough for the test.
  options.timeout = absl::Seconds(2);
  ASSERT_OK_AND_ASSIGN(auto client, Client::Connect(options));
  ASSERT_OK_AND_ASSIGN(ModelMapping mapping, client->Acquire("tiny"));
  fake_.Stop();
  const std::string expected = "daemon unavailable at " + fake_.socket_path();
  EXPECT_THAT(client->List(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr(expected)));
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr(expected)));
  // The weights stay readable; the lease ended with the session.
  EXPECT_EQ(std::memcmp(mapping.Find("a")->data, bytes_.data(), 64), 0);
  EXPECT_THAT(mapping.Release(),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("has closed (the daemon restarted")));
  EXPECT_TRUE(OpenWeightMemfds().empty());

  options.timeout = absl::Milliseconds(200);
  EXPECT_THAT(Client::Connect(options),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr(expected)));
}

TEST_F(ClientTest, ReconnectsAfterTheDaemonRestarts) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_OK_AND_ASSIGN(ModelMapping before, client->Acquire("tiny"));
  fake_.Stop();
  ASSERT_OK(fake_.Start());
  ASSERT_OK_AND_ASSIGN(ModelMapping after, client->Acquire("tiny"));
  ASSERT_EQ(fake_.session_ids().size(), 2u);
  EXPECT_NE(fake_.session_ids()[0], fake_.session_ids()[1]);
  EXPECT_EQ(std::memcmp(after.Find("a")->data, bytes_.data(), 64), 0);
  EXPECT_EQ(std::memcmp(before.Find("a")->data, bytes_.data(), 64), 0);
  // The old lease died with its session: nothing is sent for it.
  EXPECT_THAT(before.Release(), StatusIs(absl::StatusCode::kUnavailable,
                                         HasSubstr("has closed")));
  EXPECT_OK(after.Release());
  EXPECT_THAT(fake_.released_leases(), ElementsAre(after.lease_id()));
  std::vector<FakeCall> calls = fake_.calls();
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back().method, "ReleaseModel");
  EXPECT_EQ(calls.back().session_id, fake_.session_ids()[1]);
}

TEST_F(ClientTest, ProtocolIsCheckedAgainOnReconnect) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_OK(client->Acquire("tiny").status());
  fake_.Stop();
  SetBehavior([](FakeBehavior& b) { b.protocol_major = 2; });
  ASSERT_OK(fake_.Start());
  EXPECT_THAT(client->Acquire("tiny"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("speaks protocol 2.0")));
  ConnectOptions options;
  options.socket_path = fake_.socket_path();
  EXPECT_THAT(Client::Connect(options),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("this client speaks 1.x")));
}

// The fake as a child process: a daemon that can die without a goodbye.
class FakeDaemonProcess {
 public:
  // Starts it serving in `dir`, logging into `dir`/`log`; waits until it
  // serves.
  FakeDaemonProcess(const std::string& dir, const std::string& log)
      : log_dir_(dir + "/" + log) {
    ::mkdir(log_dir_.c_str(), 0755);
    child_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{
            ::warmstart::testing::BinaryPath("tests/doubles/fake_daemon_main"),
            dir},
        log_dir_);
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (child_->Stderr().find("ready") == std::string::npos &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  bool ready() const {
    return child_->Stderr().find("ready") != std::string::npos;
  }
  void Kill() { child_->Stop(SIGKILL, 5000); }

 private:
  std::string log_dir_;
  std::unique_ptr<ChildProcess> child_;
};

TEST(ClientCrashTest, ReconnectsAfterTheDaemonIsKilled) {
  ShortTempDir dir;
  auto first = std::make_unique<FakeDaemonProcess>(dir.path(), "one");
  ASSERT_TRUE(first->ready());
  ConnectOptions options;
  options.socket_path = dir.Join("ws.sock");
  options.timeout = absl::Seconds(5);
  ASSERT_OK_AND_ASSIGN(auto client, Client::Connect(options));
  ASSERT_OK_AND_ASSIGN(ModelMapping before, client->Acquire("tiny"));
  const std::string bytes =
      ::warmstart::testing::PatternModel("tiny", 10000).bytes;

  first->Kill();
  // The weights stay mapped (the memfd lives while this process maps it),
  // and a dead daemon is reported as such.
  EXPECT_EQ(std::memcmp(before.Find("a")->data, bytes.data(), 64), 0);
  EXPECT_THAT(client->List(), StatusIs(absl::StatusCode::kUnavailable,
                                       HasSubstr("daemon unavailable at " +
                                                 options.socket_path)));

  FakeDaemonProcess second(dir.path(), "two");
  ASSERT_TRUE(second.ready());
  // The channel's connection died without a goodbye; the first calls after
  // the restart reconnect instead of failing on it.
  EXPECT_OK(client->List().status());
  ASSERT_OK_AND_ASSIGN(ModelMapping after, client->Acquire("tiny"));
  EXPECT_EQ(std::memcmp(after.Find("b")->data, bytes.data() + 256, 100), 0);
  EXPECT_THAT(before.Release(), StatusIs(absl::StatusCode::kUnavailable,
                                         HasSubstr("has closed")));
  EXPECT_OK(after.Release());
  second.Kill();
}

TEST(ClientCrashTest, AcquireReconnectsAsTheFirstCallAfterAKill) {
  ShortTempDir dir;
  auto first = std::make_unique<FakeDaemonProcess>(dir.path(), "one");
  ASSERT_TRUE(first->ready());
  ConnectOptions options;
  options.socket_path = dir.Join("ws.sock");
  ASSERT_OK_AND_ASSIGN(auto client, Client::Connect(options));
  ASSERT_OK(client->Acquire("tiny").status());
  first->Kill();
  FakeDaemonProcess second(dir.path(), "two");
  ASSERT_TRUE(second.ready());
  ASSERT_OK_AND_ASSIGN(ModelMapping after, client->Acquire("tiny"));
  EXPECT_TRUE(after.held());
  second.Kill();
}

TEST(ClientCrashTest, ReadOnlyCallsAreRetriedAfterAKill) {
  ShortTempDir dir;
  auto first = std::make_unique<FakeDaemonProcess>(dir.path(), "one");
  ASSERT_TRUE(first->ready());
  ConnectOptions options;
  options.socket_path = dir.Join("ws.sock");
  ASSERT_OK_AND_ASSIGN(auto client, Client::Connect(options));
  ASSERT_OK(client->List().status());
  first->Kill();
  FakeDaemonProcess second(dir.path(), "two");
  ASSERT_TRUE(second.ready());
  EXPECT_OK(client->List().status());
  second.Kill();
}

}  // namespace
}  // namespace client
}  // namespace warmstart
