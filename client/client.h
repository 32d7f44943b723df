// The warmstart C++ client: connects to warmstartd over its unix socket,
// loads and lists models, and maps a model's weights into this process.
//
// Depends on proto/ only, never on daemon code.
//
//   ConnectOptions options;
//   options.socket_path = "/run/warmstart/warmstart.sock";
//   absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
//   absl::StatusOr<ModelMapping> mapping = (*client)->Acquire("llama");
//   const TensorView* w = mapping->Find("model.embed_tokens.weight");
//
// Thread safety: a Client may be used from several threads at once (gRPC
// channels and stubs are thread-safe). Acquire() calls of one Client are
// serialized: an Acquire waiting for a model that is still loading delays
// the other Acquires of the same Client.
//
// Errors: a daemon error comes back with the daemon's code and message;
// UNAVAILABLE becomes Unavailable "daemon unavailable at <socket>: ...".
#ifndef WARMSTART_CLIENT_CLIENT_H_
#define WARMSTART_CLIENT_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/model_mapping.h"
#include "common/protocol.h"
#include "proto/warmstart.grpc.pb.h"

namespace warmstart {
namespace client {

namespace internal {
class Connection;
}  // namespace internal

// The protocol this client speaks; a daemon with another major is refused.
inline constexpr uint32_t kClientProtocolMajor = 1;

// The deadline of calls that answer at once (list, status, unload, stats,
// release). Calls that wait for a load (Load, Watch, Acquire) wait without
// a deadline unless given one.
inline constexpr absl::Duration kDefaultCallTimeout = absl::Seconds(30);

struct ConnectOptions {
  std::string socket_path = kDefaultSocketPath;
  // How long Connect waits for the daemon to answer; also how long opening
  // a session (and, after a daemon restart, reconnecting) may take.
  absl::Duration timeout = absl::Seconds(5);
  // Keep retrying until `timeout` while the socket does not exist yet or
  // refuses connections (a daemon that is still starting).
  bool wait_for_daemon = false;
};

struct LoadModelOptions {
  // GPU UUIDs ("GPU-...") or "host"; empty means every device.
  std::vector<std::string> devices;
  // Return as soon as the load has started (the status is then LOADING).
  bool no_wait = false;
  // PACKED or FILE_IMAGE; unspecified lets the daemon choose (FILE_IMAGE
  // for a single GGUF file in host memory) and joins either.
  v1::ModelLayout layout = v1::MODEL_LAYOUT_UNSPECIFIED;
};

class Client {
 public:
  // Connects and checks the daemon's protocol version. Fails with
  // Unavailable ("daemon unavailable at <socket>: ...") when nothing answers
  // within the timeout, FailedPrecondition on an incompatible protocol.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ConnectOptions& options);

  // Mappings acquired through this client stay valid after it is gone.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // The daemon's identity, as last read (at Connect, by ServerInfo(), or
  // when a session was opened).
  v1::ServerInfo server_info() const;

  // Reads the daemon's identity again and checks its protocol
  // (FailedPrecondition when it changed to an incompatible one).
  absl::StatusOr<v1::ServerInfo> ServerInfo(
      absl::Duration timeout = kDefaultCallTimeout);

  // Asks the standard gRPC health service whether the daemon is SERVING.
  absl::StatusOr<bool> IsServing(absl::Duration timeout);

  // Loads model `name` from `path` (absolute, beneath one of the daemon's
  // model roots), or joins the load of the same name from the same files.
  // Returns its status once READY (LOADING with `no_wait`). A load that
  // failed is an error: the model's error code and message. Daemon
  // errors: AlreadyExists (the name is taken by other files),
  // PermissionDenied (outside the model roots), InvalidArgument (a bad
  // name). A timeout leaves the load running (DeadlineExceeded).
  absl::StatusOr<v1::ModelStatus> Load(
      const std::string& name, const std::string& path,
      const LoadModelOptions& options = {},
      absl::Duration timeout = absl::InfiniteDuration());

  // Calls `on_status` with the model's status now and after every change
  // (about ten times a second while loading), on this thread, until it is
  // READY (returns OK) or FAILED (returns the model's error: its
  // error_code, Unknown when it has none, and its error message). NotFound
  // when there is no such model (or it went away).
  absl::Status Watch(
      const std::string& name,
      const std::function<void(const v1::ModelStatus&)>& on_status,
      absl::Duration timeout = absl::InfiniteDuration());

  // List, GetModel and Stats change nothing, so they try again by
  // themselves after a daemon restart: Unavailable only when the daemon is
  // still unreachable a second later (at once when its socket is gone).

  // Every model the daemon holds, in its order.
  absl::StatusOr<std::vector<v1::ModelStatus>> List(
      absl::Duration timeout = kDefaultCallTimeout);

  // One model's status; NotFound when there is none.
  absl::StatusOr<v1::ModelStatus> GetModel(
      const std::string& name, absl::Duration timeout = kDefaultCallTimeout);

  // Frees a model. FailedPrecondition while it is leased unless `force`:
  // then it is UNLOADING until its last lease is released.
  absl::StatusOr<v1::ModelStatus> Unload(
      const std::string& name, bool force = false,
      absl::Duration timeout = kDefaultCallTimeout);

  absl::StatusOr<v1::Stats> Stats(absl::Duration timeout = kDefaultCallTimeout);

  // Takes a lease on model `name` (waiting for a load in progress) and maps
  // its weights read-only. Opens the session on first use; when the daemon
  // has restarted since (the session's socket closed), reads ServerInfo
  // again and opens a new session. Errors: the daemon's (NotFound, ...);
  // Unavailable when the daemon cannot be reached; those of mapping (see
  // ModelMapping), including CUDA import's for a model on a GPU (NotFound
  // when this process cannot see that GPU, FailedPrecondition without a
  // usable driver). No descriptor leaks and no lease stays held on any
  // error.
  absl::StatusOr<ModelMapping> Acquire(
      const std::string& name,
      absl::Duration timeout = absl::InfiniteDuration());

 private:
  explicit Client(std::shared_ptr<internal::Connection> connection);

  // Shared with every ModelMapping.
  std::shared_ptr<internal::Connection> connection_;
};

}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_CLIENT_H_
