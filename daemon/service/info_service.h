// The warmstart.v1 gRPC service (first version: server identification).
//
// Thread safety: handlers run on gRPC's threads; the service holds only
// immutable state.
#ifndef WARMSTART_DAEMON_SERVICE_INFO_SERVICE_H_
#define WARMSTART_DAEMON_SERVICE_INFO_SERVICE_H_

#include "proto/warmstart.grpc.pb.h"

namespace warmstart {

class WarmstartService final : public v1::Warmstart::Service {
 public:
  // `info` is returned by GetServerInfo as it is.
  explicit WarmstartService(v1::ServerInfo info) : info_(std::move(info)) {}

  grpc::Status GetServerInfo(grpc::ServerContext* context,
                             const v1::GetServerInfoRequest* request,
                             v1::ServerInfo* response) override;

 private:
  const v1::ServerInfo info_;
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_SERVICE_INFO_SERVICE_H_
