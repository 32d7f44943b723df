// The client's shared state: the gRPC channel, the daemon's identity and
// the current session.
//
// Internal to the client library. Shared (std::shared_ptr) by the Client
// and every ModelMapping, so a mapping can release its lease after the
// Client object is gone.
#ifndef WARMSTART_CLIENT_CONNECTION_H_
#define WARMSTART_CLIENT_CONNECTION_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/session.h"
#include "grpcpp/grpcpp.h"
#include "proto/warmstart.grpc.pb.h"

namespace warmstart {
namespace client {
namespace internal {

// Thread safety: every method may be called from any thread.
class Connection {
 public:
  Connection(std::string socket_path, absl::Duration connect_timeout,
             std::shared_ptr<grpc::Channel> channel);

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  absl::Duration connect_timeout() const { return connect_timeout_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  v1::Warmstart::Stub& stub() const { return *stub_; }

  // The daemon's status as an absl::Status with the same code and the
  // daemon's message; UNAVAILABLE becomes "daemon unavailable at <socket>:
  // ...".
  absl::Status FromGrpc(const grpc::Status& status) const;

  // Sets the deadline `timeout` from now (none when infinite) and, when
  // `session` is not null, the session metadata.
  static void Prepare(grpc::ClientContext* context, absl::Duration timeout,
                      const Session* session);

  // Prepare() with the current session when one is open: every call from
  // a client that has a session carries its id.
  void PrepareWithCurrentSession(grpc::ClientContext* context,
                                 absl::Duration timeout);

  // Runs `call`, a call that changes nothing, with a fresh context
  // prepared as PrepareWithCurrentSession(timeout) does, and returns its
  // status. When it fails because the daemon is unreachable while its
  // socket file is there (a daemon restarting), waits for the channel to
  // reconnect, at once rather than after the channel's reconnect backoff,
  // for up to kReconnectWait within `timeout`, and calls it once more.
  grpc::Status CallReadOnly(
      absl::Duration timeout,
      const std::function<grpc::Status(grpc::ClientContext*)>& call);

  // Reads the daemon's identity, checks its protocol and remembers it.
  // `wait_for_ready` waits for the channel to (re)connect until `deadline`
  // instead of failing at once; a wait that runs out is Unavailable too.
  absl::StatusOr<v1::ServerInfo> FetchServerInfo(absl::Time deadline,
                                                 bool wait_for_ready);

  // FailedPrecondition when `info`'s protocol major differs from the
  // client's.
  absl::Status CheckProtocol(const v1::ServerInfo& info) const;

  v1::ServerInfo server_info() const ABSL_LOCKS_EXCLUDED(mu_);
  void set_server_info(const v1::ServerInfo& info) ABSL_LOCKS_EXCLUDED(mu_);

  // Held across an acquire (session check, AcquireModel, receiving its
  // descriptors), so that a bundle for another transfer is always stale.
  absl::Mutex& acquire_mu() const ABSL_LOCK_RETURNED(acquire_mu_) {
    return acquire_mu_;
  }

  // The open session for an acquire: the current one once stale bundles
  // are discarded from it, or, when there is none or it has closed (the
  // daemon restarted), a new one after reading ServerInfo again (the
  // handle socket's name may have changed, and so may the protocol).
  absl::StatusOr<std::shared_ptr<Session>> SessionForAcquire(
      absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(acquire_mu_);

  // Sends ReleaseModel for `lease_id` under `session`. Unavailable without
  // a call when the session has closed (the daemon already ended the
  // lease with it).
  absl::Status ReleaseLease(Session& session, const std::string& lease_id);

 private:
  const std::string socket_path_;
  const absl::Duration connect_timeout_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::Warmstart::Stub> stub_;

  mutable absl::Mutex acquire_mu_;
  mutable absl::Mutex mu_;
  v1::ServerInfo server_info_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Session> session_ ABSL_GUARDED_BY(mu_);
};

}  // namespace internal
}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_CONNECTION_H_
