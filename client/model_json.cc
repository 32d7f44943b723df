#include "client/model_json.h"

#include <string>

namespace warmstart {
namespace client {

const char* StateName(v1::ModelState state) {
  switch (state) {
    case v1::LOADING:
      return "loading";
    case v1::READY:
      return "ready";
    case v1::FAILED:
      return "failed";
    case v1::UNLOADING:
      return "unloading";
    default:
      return "unknown";
  }
}

const char* LayoutName(v1::ModelLayout layout) {
  switch (layout) {
    case v1::PACKED:
      return "packed";
    case v1::FILE_IMAGE:
      return "file_image";
    default:
      return "";
  }
}

nlohmann::ordered_json ModelJson(const v1::ModelStatus& model) {
  nlohmann::ordered_json devices = nlohmann::ordered_json::array();
  for (const std::string& device : model.devices()) devices.push_back(device);
  return nlohmann::ordered_json{{"name", model.name()},
                                {"path", model.path()},
                                {"state", StateName(model.state())},
                                {"error", model.error()},
                                {"error_code", model.error_code()},
                                {"bytes_loaded", model.bytes_loaded()},
                                {"bytes_total", model.bytes_total()},
                                {"bytes_per_second", model.bytes_per_second()},
                                {"leases", model.leases()},
                                {"pinned", model.pinned()},
                                {"devices", devices},
                                {"tensor_count", model.tensor_count()},
                                {"resident_bytes", model.resident_bytes()},
                                {"load_seconds", model.load_seconds()},
                                {"layout", LayoutName(model.layout())}};
}

}  // namespace client
}  // namespace warmstart
