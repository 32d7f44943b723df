#include "daemon/service/info_service.h"

namespace warmstart {

grpc::Status WarmstartService::GetServerInfo(
    grpc::ServerContext* /*context*/,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  *response = info_;
  return grpc::Status::OK;
}

}  // namespace warmstart
