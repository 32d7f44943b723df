// A model's status as JSON and its enums as words: the one rendering that
// libwarmstart.so (warmstart_model_status_json) and `warmstartctl ... --json`
// both print, so the two cannot drift apart. Pure functions; thread-safe.
#ifndef WARMSTART_CLIENT_MODEL_JSON_H_
#define WARMSTART_CLIENT_MODEL_JSON_H_

#include "nlohmann/json.hpp"
#include "proto/warmstart.pb.h"

namespace warmstart {
namespace client {

// "loading", "ready", "failed", "unloading"; "unknown" for anything else.
const char* StateName(v1::ModelState state);

// "packed", "file_image"; "" when the daemon did not say.
const char* LayoutName(v1::ModelLayout layout);

// Every field of `model` under its proto name (state and layout as words):
// name, path, state, error, error_code, bytes_loaded, bytes_total,
// bytes_per_second, leases, pinned, devices, tensor_count, resident_bytes,
// load_seconds, layout, in that order (ordered_json keeps it; converting
// to nlohmann::json sorts the keys).
nlohmann::ordered_json ModelJson(const v1::ModelStatus& model);

}  // namespace client
}  // namespace warmstart

#endif  // WARMSTART_CLIENT_MODEL_JSON_H_
