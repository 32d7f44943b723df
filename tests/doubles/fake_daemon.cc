#include "tests/doubles/fake_daemon.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fd_passing.h"
#include "common/protocol.h"
#include "common/tensor_table.h"

namespace warmstart {
namespace testing {
namespace {

// Sends one HandleMessage with `fds` attached. Returns errno or 0.
int SendHandleMessage(int socket, const v1::HandleMessage& message,
                      const std::vector<int>& fds) {
  return SendWithFds(socket, message.SerializeAsString(), fds);
}

// A memfd holding `bytes`, sealed like the daemon's when `seal`; -1 on
// error.
int SealedMemfd(const std::string& bytes, bool seal) {
  int fd = ::memfd_create("ws-fake-weights", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      ::close(fd);
      return -1;
    }
    done += static_cast<size_t>(n);
  }
  if (seal && ::fcntl(fd, F_ADD_SEALS,
                      F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

FakeModel PatternModel(const std::string& name, size_t bytes) {
  FakeModel model;
  model.bytes.resize(bytes);
  for (size_t i = 0; i < bytes; ++i) {
    model.bytes[i] = static_cast<char>((i * 7 + 3) & 0xff);
  }
  v1::ModelStatus& status = model.status;
  status.set_name(name);
  status.set_path("/models/" + name + ".safetensors");
  status.set_state(v1::READY);
  status.set_bytes_loaded(bytes);
  status.set_bytes_total(bytes);
  status.set_tensor_count(2);
  status.add_devices("host");
  v1::Tensor a;
  a.set_name("a");
  a.set_dtype("F32");
  a.add_shape(4);
  a.add_shape(4);
  a.set_offset(0);
  a.set_nbytes(64);
  a.set_role("parameter");
  v1::Tensor b;
  b.set_name("b");
  b.set_dtype("U8");
  b.add_shape(100);
  b.set_offset(256);
  b.set_nbytes(100);
  model.tensors = {a, b};
  model.metadata_json = R"({"format":"pt"})";
  return model;
}

class FakeDaemon::Service final : public v1::Warmstart::Service {
 public:
  explicit Service(FakeDaemon* fake) : fake_(fake) {}

  grpc::Status GetServerInfo(grpc::ServerContext* context,
                             const v1::GetServerInfoRequest*,
                             v1::ServerInfo* info) override {
    fake_->Record(context, "GetServerInfo");
    FakeBehavior behavior = fake_->behavior();
    info->set_version("fake");
    info->set_protocol_major(behavior.protocol_major);
    info->set_protocol_minor(0);
    info->set_backend(v1::BACKEND_HOST);
    info->add_devices()->set_uuid("host");
    info->set_pid(static_cast<uint32_t>(::getpid()));
    info->set_handle_socket_name("ws.handles");
    *info->mutable_readiness() = behavior.readiness;
    return grpc::Status::OK;
  }

  grpc::Status LoadModel(grpc::ServerContext* context,
                         const v1::LoadModelRequest* request,
                         v1::ModelStatus* status) override {
    fake_->Record(context, "LoadModel");
    absl::MutexLock lock(&fake_->mu_);
    fake_->loads_.push_back(*request);
    if (!fake_->behavior_.load_error.ok()) return fake_->behavior_.load_error;
    auto it = fake_->models_.find(request->name());
    if (it == fake_->models_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "no such file: " + request->path());
    }
    const FakeModel& model = it->second;
    if (request->no_wait() && !model.progress.empty()) {
      *status = model.progress.front();
      return grpc::Status::OK;
    }
    // As warmstartd: a load that failed is the call's error.
    if (!request->no_wait() && model.status.state() == v1::FAILED) {
      return grpc::Status(
          static_cast<grpc::StatusCode>(model.status.error_code()),
          model.status.error());
    }
    *status = model.status;
    return grpc::Status::OK;
  }

  grpc::Status WatchModel(
      grpc::ServerContext* context, const v1::WatchModelRequest* request,
      grpc::ServerWriter<v1::ModelStatus>* writer) override {
    fake_->Record(context, "WatchModel");
    FakeModel model;
    {
      absl::MutexLock lock(&fake_->mu_);
      auto it = fake_->models_.find(request->name());
      if (it == fake_->models_.end()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND,
                            "no model named " + request->name());
      }
      model = it->second;
    }
    for (const v1::ModelStatus& progress : model.progress) {
      if (!writer->Write(progress)) return grpc::Status::CANCELLED;
    }
    writer->Write(model.status);
    return grpc::Status::OK;
  }

  grpc::Status AcquireModel(grpc::ServerContext* context,
                            const v1::AcquireModelRequest* request,
                            v1::Lease* lease) override {
    return fake_->Acquire(context, *request, lease);
  }

  grpc::Status ReleaseModel(grpc::ServerContext* context,
                            const v1::ReleaseModelRequest* request,
                            v1::ReleaseModelResponse*) override {
    std::string session = fake_->Record(context, "ReleaseModel");
    absl::MutexLock lock(&fake_->mu_);
    fake_->released_.push_back(request->lease_id());
    auto it = fake_->leases_.find(request->lease_id());
    if (it == fake_->leases_.end() || it->second != session) {
      return grpc::Status(
          grpc::StatusCode::NOT_FOUND,
          "no lease " + request->lease_id() + " in session " + session);
    }
    fake_->leases_.erase(it);
    return grpc::Status::OK;
  }

  grpc::Status UnloadModel(grpc::ServerContext* context,
                           const v1::UnloadModelRequest* request,
                           v1::ModelStatus* status) override {
    fake_->Record(context, "UnloadModel");
    absl::MutexLock lock(&fake_->mu_);
    fake_->unloads_.push_back(*request);
    if (!fake_->behavior_.unload_error.ok()) {
      return fake_->behavior_.unload_error;
    }
    auto it = fake_->models_.find(request->name());
    if (it == fake_->models_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "no model named " + request->name());
    }
    *status = it->second.status;
    fake_->models_.erase(it);
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override {
    fake_->Record(context, "ListModels");
    absl::MutexLock lock(&fake_->mu_);
    for (const auto& [name, model] : fake_->models_) {
      if (request->name().empty() || request->name() == name) {
        *response->add_models() = model.status;
      }
    }
    if (!request->name().empty() && response->models().empty()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "no model named " + request->name());
    }
    return grpc::Status::OK;
  }

  grpc::Status GetStats(grpc::ServerContext* context,
                        const v1::GetStatsRequest*, v1::Stats* stats) override {
    fake_->Record(context, "GetStats");
    absl::MutexLock lock(&fake_->mu_);
    stats->set_models(static_cast<uint32_t>(fake_->models_.size()));
    stats->set_leases(static_cast<uint32_t>(fake_->leases_.size()));
    stats->set_sessions(static_cast<uint32_t>(fake_->sessions_.size()));
    (*stats->mutable_metrics())["fake_calls"] =
        static_cast<double>(fake_->calls_.size());
    return grpc::Status::OK;
  }

 private:
  FakeDaemon* const fake_;
};

FakeDaemon::FakeDaemon(std::string dir) : dir_(std::move(dir)) {}

FakeDaemon::~FakeDaemon() { Stop(); }

absl::Status FakeDaemon::Start() {
  {
    absl::MutexLock lock(&mu_);
    ++generation_;
  }
  // A fake that was killed left both sockets behind.
  ::unlink(handle_path().c_str());
  ::unlink(socket_path().c_str());
  sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  const std::string path = handle_path();
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError("handle socket path too long: " + path);
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  listen_fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0 ||
      ::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&address),
             sizeof(address)) != 0 ||
      ::listen(listen_fd_, 16) != 0 || ::pipe2(wake_fds_, O_CLOEXEC) != 0) {
    return absl::InternalError(
        absl::StrCat("handle socket ", path, ": ", std::strerror(errno)));
  }
  accept_thread_ =
      std::thread(&FakeDaemon::AcceptLoop, this, listen_fd_, wake_fds_[0]);

  // A fresh service per server: a service is registered with one server.
  service_ = std::make_unique<Service>(this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path(),
                           grpc::InsecureServerCredentials());
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    Stop();
    return absl::InternalError("cannot serve gRPC on " + socket_path());
  }
  return absl::OkStatus();
}

void FakeDaemon::Stop() {
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(200));
    server_->Wait();
    server_.reset();
  }
  if (accept_thread_.joinable()) {
    char byte = 0;
    (void)!::write(wake_fds_[1], &byte, 1);
    accept_thread_.join();
  }
  for (int& fd : wake_fds_) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, fd] : sessions_) ::close(fd);
    sessions_.clear();
    // A restarted daemon remembers no leases.
    leases_.clear();
  }
  ::unlink(handle_path().c_str());
  ::unlink(socket_path().c_str());
}

void FakeDaemon::AcceptLoop(int listen_fd, int wake_fd) {
  for (;;) {
    pollfd fds[2] = {{listen_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    int connection = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    v1::HandleMessage hello;
    absl::MutexLock lock(&mu_);
    const std::string id =
        absl::StrFormat("%016x%016x", generation_, ++next_session_);
    hello.mutable_hello()->set_session_id(id);
    if (SendHandleMessage(connection, hello, {}) != 0) {
      ::close(connection);
      continue;
    }
    sessions_[id] = connection;
    session_ids_.push_back(id);
  }
}

std::string FakeDaemon::Record(grpc::ServerContext* context,
                               const char* method) {
  std::string session;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find(kSessionMetadataKey); it != metadata.end()) {
    session.assign(it->second.data(), it->second.size());
  }
  absl::MutexLock lock(&mu_);
  calls_.push_back({method, session});
  return session;
}

grpc::Status FakeDaemon::Acquire(grpc::ServerContext* context,
                                 const v1::AcquireModelRequest& request,
                                 v1::Lease* lease) {
  const std::string session = Record(context, "AcquireModel");
  absl::MutexLock lock(&mu_);
  acquires_.push_back(request);
  auto socket = sessions_.find(session);
  if (socket == sessions_.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "session \"" + session + "\" is unknown or closed");
  }
  auto it = models_.find(request.name());
  if (it == models_.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "no model named " + request.name());
  }
  const FakeModel& model = it->second;
  const FakeBehavior& behavior = behavior_;
  if (behavior.send_stale_bundle) {
    int stale = SealedMemfd("stale bytes", true);
    v1::HandleMessage message;
    message.mutable_fds()->set_transfer_id(++next_transfer_);
    message.mutable_fds()->set_count(1);
    SendHandleMessage(socket->second, message, {stale});
    ::close(stale);
  }
  std::vector<int> fds;
  if (behavior.kind != v1::CUDA_IPC_HANDLE) {
    int memfd = SealedMemfd(model.bytes, behavior.seal);
    if (memfd < 0) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "memfd failed");
    }
    fds.push_back(memfd);
    for (int i = 0; i < behavior.extra_fds; ++i) fds.push_back(::dup(memfd));
  }
  if (!fds.empty()) {
    lease->set_fd_transfer_id(++next_transfer_);
    v1::HandleMessage message;
    message.mutable_fds()->set_transfer_id(lease->fd_transfer_id());
    message.mutable_fds()->set_count(
        static_cast<uint32_t>(fds.size() + behavior.count_delta));
    const int error = SendHandleMessage(socket->second, message, fds);
    for (int fd : fds) ::close(fd);
    if (error != 0) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          std::string("sendmsg: ") + std::strerror(error));
    }
  }
  lease->set_lease_id(absl::StrCat("lease-", ++next_lease_));
  *lease->mutable_model() = model.status;
  v1::Allocation* allocation = lease->add_allocations();
  allocation->set_device_uuid(behavior.device_uuid);
  allocation->set_kind(behavior.kind);
  allocation->set_size(behavior.allocation_size != 0 ? behavior.allocation_size
                                                     : model.bytes.size());
  allocation->set_fd_index(0);
  if (request.packed_tensor_table() && behavior.packed_tensor_table) {
    absl::StatusOr<std::string> table =
        EncodeTensorTable(model.tensors.size(), [&model](size_t i) {
          const v1::Tensor& tensor = model.tensors[i];
          return TensorTableEntry{
              tensor.name(),
              tensor.dtype(),
              tensor.role(),
              absl::MakeConstSpan(tensor.shape().data(), tensor.shape_size()),
              tensor.nbytes(),
              tensor.offset()};
        });
    if (!table.ok()) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          std::string(table.status().message()));
    }
    lease->set_tensor_table(*std::move(table));
  } else {
    for (const v1::Tensor& tensor : model.tensors) {
      *lease->add_tensors() = tensor;
    }
  }
  if (behavior.tensor_table_bytes.has_value()) {
    lease->set_tensor_table(*behavior.tensor_table_bytes);
  }
  if (!model.metadata_json.empty()) {
    lease->set_metadata_json(model.metadata_json);
  }
  leases_[lease->lease_id()] = session;
  return grpc::Status::OK;
}

void FakeDaemon::AddModel(FakeModel model) {
  absl::MutexLock lock(&mu_);
  std::string name = model.status.name();
  models_[name] = std::move(model);
}

FakeBehavior FakeDaemon::behavior() const {
  absl::MutexLock lock(&mu_);
  return behavior_;
}

void FakeDaemon::set_behavior(FakeBehavior behavior) {
  absl::MutexLock lock(&mu_);
  behavior_ = std::move(behavior);
}

std::vector<FakeCall> FakeDaemon::calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

std::vector<std::string> FakeDaemon::released_leases() const {
  absl::MutexLock lock(&mu_);
  return released_;
}

std::vector<v1::LoadModelRequest> FakeDaemon::load_requests() const {
  absl::MutexLock lock(&mu_);
  return loads_;
}

std::vector<v1::AcquireModelRequest> FakeDaemon::acquire_requests() const {
  absl::MutexLock lock(&mu_);
  return acquires_;
}

std::vector<v1::UnloadModelRequest> FakeDaemon::unload_requests() const {
  absl::MutexLock lock(&mu_);
  return unloads_;
}

std::vector<std::string> FakeDaemon::session_ids() const {
  absl::MutexLock lock(&mu_);
  return session_ids_;
}

int FakeDaemon::outstanding_leases() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(leases_.size());
}

}  // namespace testing
}  // namespace warmstart
