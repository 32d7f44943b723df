// The C interface (warmstart.h) over the C++ client.
//
// Every exported function catches at the boundary: the client uses no
// exceptions, but the standard library may still throw (std::bad_alloc),
// and nothing may unwind into a C caller.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/model_json.h"
#include "client/model_mapping.h"
#include "client/warmstart.h"
#include "common/version.h"
#include "nlohmann/json.hpp"
#include "proto/warmstart.pb.h"

struct warmstart_client {
  std::unique_ptr<warmstart::client::Client> client;
};

namespace {

// The columns warmstart_tensor_table points into.
struct TensorTableColumns {
  std::string names;
  std::string dtypes;
  std::string device_uuids;
  std::vector<uint64_t> nbytes;
  std::vector<uint64_t> data;
  std::vector<uint8_t> on_host;
  std::vector<uint8_t> read_only;
  std::vector<uint64_t> shape_starts;
  std::vector<uint64_t> shapes;
};

}  // namespace

struct warmstart_model {
  warmstart::client::ModelMapping mapping;
  // Built by the first warmstart_model_tensor_table, dropped by
  // warmstart_release; the mutex lets accessors on several threads share it.
  std::mutex table_mutex;
  std::unique_ptr<TensorTableColumns> table;
  // Copies, so that they outlive warmstart_release.
  std::string name;
  std::string lease_id;
  // What warmstart_model_file_path last returned.
  std::string file_path;
  std::string metadata_json;
};

namespace {

using warmstart::client::Client;
using warmstart::client::ConnectOptions;
using warmstart::client::ModelJson;
using warmstart::client::ModelMapping;
using warmstart::client::TensorRecord;
using warmstart::v1::ModelStatus;

// Stores `message` (made one line) in *errptr, freeing what was there, and
// returns `code`. Never throws: on want of memory *errptr becomes NULL.
int Fail(char** errptr, int code, absl::string_view message) noexcept {
  if (errptr == nullptr) return code;
  std::free(*errptr);
  *errptr = static_cast<char*>(std::malloc(message.size() + 1));
  if (*errptr != nullptr) {
    for (size_t i = 0; i < message.size(); ++i) {
      const char c = message[i];
      (*errptr)[i] = (c == '\n' || c == '\r' || c == '\0') ? ' ' : c;
    }
    (*errptr)[message.size()] = '\0';
  }
  return code;
}

// May throw (building the message); callers run inside the boundary's try.
int FailWith(char** errptr, const absl::Status& status) {
  // The codes of warmstart.h are absl's (and gRPC's) canonical codes.
  const int code = static_cast<int>(status.code());
  if (status.message().empty()) {
    return Fail(errptr, code, absl::StatusCodeToString(status.code()));
  }
  return Fail(errptr, code, status.message());
}

// What a function returns when an exception reached the boundary. Call it
// only from a catch block.
int CaughtException(char** errptr) noexcept {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return Fail(errptr, WARMSTART_INTERNAL,
                "warmstart: internal error: out of memory");
  } catch (const std::exception& e) {
    // A fixed buffer: nothing here may allocate (and throw) again.
    char message[512];
    std::snprintf(message, sizeof(message), "warmstart: internal error: %s",
                  e.what());
    return Fail(errptr, WARMSTART_INTERNAL, message);
  } catch (...) {
    return Fail(errptr, WARMSTART_INTERNAL,
                "warmstart: internal error: unknown exception");
  }
}

int NullArgument(char** errptr, const char* what) noexcept {
  char message[128];
  std::snprintf(message, sizeof(message), "warmstart: %s is NULL", what);
  return Fail(errptr, WARMSTART_INVALID_ARGUMENT, message);
}

// A timeout of warmstart.h as an absl::Duration: negative (or infinite)
// waits forever when `negative_is_forever`; NaN is refused.
absl::StatusOr<absl::Duration> Timeout(double seconds,
                                       bool negative_is_forever) {
  if (std::isnan(seconds)) {
    return absl::InvalidArgumentError("warmstart: the timeout is NaN");
  }
  if (seconds < 0) {
    if (negative_is_forever) return absl::InfiniteDuration();
    return absl::InvalidArgumentError(
        absl::StrCat("warmstart: negative timeout ", seconds));
  }
  if (std::isinf(seconds)) return absl::InfiniteDuration();
  return absl::Seconds(seconds);
}

// A malloc'ed copy of `text`, or null.
char* MallocCopy(const std::string& text) {
  char* copy = static_cast<char*>(std::malloc(text.size() + 1));
  if (copy != nullptr) std::memcpy(copy, text.c_str(), text.size() + 1);
  return copy;
}

}  // namespace

namespace {

// Straight from the mapping's tensor table: no TensorView, no allocation per
// tensor (each column is sized once), which keeps a table of thousands of
// tensors well under a millisecond.
std::unique_ptr<TensorTableColumns> BuildTensorTable(
    const ModelMapping& mapping) {
  auto columns = std::make_unique<TensorTableColumns>();
  const size_t count = mapping.tensor_count();
  size_t names_bytes = 0;
  size_t dtypes_bytes = 0;
  size_t device_uuids_bytes = 0;
  size_t dimensions = 0;
  for (size_t i = 0; i < count; ++i) {
    const TensorRecord record = mapping.tensor_record(i);
    names_bytes += record.name.size() + 1;
    dtypes_bytes += record.dtype.size() + 1;
    device_uuids_bytes += record.device_uuid->size() + 1;
    dimensions += record.shape.size();
  }
  columns->names.reserve(names_bytes);
  columns->dtypes.reserve(dtypes_bytes);
  columns->device_uuids.reserve(device_uuids_bytes);
  columns->nbytes.reserve(count);
  columns->data.reserve(count);
  columns->on_host.reserve(count);
  columns->read_only.reserve(count);
  columns->shape_starts.reserve(count + 1);
  columns->shapes.reserve(dimensions);
  for (size_t i = 0; i < count; ++i) {
    const TensorRecord record = mapping.tensor_record(i);
    // append(data, size + 1) copies each string's terminating NUL too (the
    // record's strings are followed by one).
    columns->names.append(record.name.data(), record.name.size() + 1);
    columns->dtypes.append(record.dtype.data(), record.dtype.size() + 1);
    columns->device_uuids.append(record.device_uuid->c_str(),
                                 record.device_uuid->size() + 1);
    columns->nbytes.push_back(record.nbytes);
    columns->data.push_back(
        record.nbytes == 0 ? 0 : reinterpret_cast<uintptr_t>(record.data));
    columns->on_host.push_back(*record.device_uuid == "host" ? 1 : 0);
    columns->read_only.push_back(record.read_only ? 1 : 0);
    columns->shape_starts.push_back(columns->shapes.size());
    columns->shapes.insert(columns->shapes.end(), record.shape.begin(),
                           record.shape.end());
  }
  columns->shape_starts.push_back(columns->shapes.size());
  return columns;
}

}  // namespace

extern "C" {

const char* warmstart_version(void) { return warmstart::kVersion; }

void warmstart_free(void* pointer) { std::free(pointer); }

int warmstart_connect(const char* socket_path, double timeout_seconds,
                      int wait_for_daemon, warmstart_client** client,
                      char** errptr) {
  try {
    if (client == nullptr) return NullArgument(errptr, "client");
    *client = nullptr;
    absl::StatusOr<absl::Duration> timeout =
        Timeout(timeout_seconds, /*negative_is_forever=*/false);
    if (!timeout.ok()) return FailWith(errptr, timeout.status());
    ConnectOptions options;
    if (socket_path != nullptr) options.socket_path = socket_path;
    options.timeout = *timeout;
    options.wait_for_daemon = wait_for_daemon != 0;
    absl::StatusOr<std::unique_ptr<Client>> connected =
        Client::Connect(options);
    if (!connected.ok()) return FailWith(errptr, connected.status());
    auto handle = std::make_unique<warmstart_client>();
    handle->client = *std::move(connected);
    *client = handle.release();
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

void warmstart_client_destroy(warmstart_client* client) {
  try {
    delete client;
  } catch (...) {
    // Nothing to report to: destruction has no errptr.
  }
}

int warmstart_load(warmstart_client* client, const char* name, const char* path,
                   double timeout_seconds, char** errptr) {
  return warmstart_load_layout(client, name, path, nullptr, timeout_seconds,
                               errptr);
}

int warmstart_load_layout(warmstart_client* client, const char* name,
                          const char* path, const char* layout,
                          double timeout_seconds, char** errptr) {
  try {
    if (client == nullptr) return NullArgument(errptr, "client");
    if (name == nullptr) return NullArgument(errptr, "name");
    if (path == nullptr) return NullArgument(errptr, "path");
    warmstart::client::LoadModelOptions options;
    if (layout == nullptr) {
      options.layout = warmstart::v1::MODEL_LAYOUT_UNSPECIFIED;
    } else if (std::strcmp(layout, "packed") == 0) {
      options.layout = warmstart::v1::PACKED;
    } else if (std::strcmp(layout, "file_image") == 0) {
      options.layout = warmstart::v1::FILE_IMAGE;
    } else {
      return FailWith(errptr, absl::InvalidArgumentError(absl::StrCat(
                                  "layout \"", absl::CHexEscape(layout),
                                  "\": expected packed or file_image")));
    }
    absl::StatusOr<absl::Duration> timeout =
        Timeout(timeout_seconds, /*negative_is_forever=*/true);
    if (!timeout.ok()) return FailWith(errptr, timeout.status());
    absl::StatusOr<ModelStatus> loaded =
        client->client->Load(name, path, options, *timeout);
    if (!loaded.ok()) return FailWith(errptr, loaded.status());
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

int warmstart_unload(warmstart_client* client, const char* name, int force,
                     char** errptr) {
  try {
    if (client == nullptr) return NullArgument(errptr, "client");
    if (name == nullptr) return NullArgument(errptr, "name");
    absl::StatusOr<ModelStatus> unloaded =
        client->client->Unload(name, force != 0);
    if (!unloaded.ok()) return FailWith(errptr, unloaded.status());
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

int warmstart_status_json(warmstart_client* client, const char* name,
                          char** json, char** errptr) {
  try {
    if (json == nullptr) return NullArgument(errptr, "json");
    *json = nullptr;
    if (client == nullptr) return NullArgument(errptr, "client");
    nlohmann::json doc;
    if (name != nullptr) {
      absl::StatusOr<ModelStatus> model = client->client->GetModel(name);
      if (!model.ok()) return FailWith(errptr, model.status());
      doc = nlohmann::json(ModelJson(*model));
    } else {
      absl::StatusOr<std::vector<ModelStatus>> models = client->client->List();
      if (!models.ok()) return FailWith(errptr, models.status());
      doc = nlohmann::json::array();
      for (const ModelStatus& model : *models)
        doc.push_back(nlohmann::json(ModelJson(model)));
    }
    // Names, paths and messages are bytes from the daemon: never let
    // invalid UTF-8 make dump() throw.
    const std::string text = doc.dump(-1, ' ', /*ensure_ascii=*/false,
                                      nlohmann::json::error_handler_t::replace);
    *json = MallocCopy(text);
    if (*json == nullptr) {
      return Fail(errptr, WARMSTART_INTERNAL,
                  "warmstart: internal error: out of memory");
    }
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

int warmstart_acquire(warmstart_client* client, const char* name,
                      double timeout_seconds, warmstart_model** model,
                      char** errptr) {
  try {
    if (model == nullptr) return NullArgument(errptr, "model");
    *model = nullptr;
    if (client == nullptr) return NullArgument(errptr, "client");
    if (name == nullptr) return NullArgument(errptr, "name");
    absl::StatusOr<absl::Duration> timeout =
        Timeout(timeout_seconds, /*negative_is_forever=*/true);
    if (!timeout.ok()) return FailWith(errptr, timeout.status());
    // Allocated first, so that no lease is taken that a failed allocation
    // would then have to give back.
    auto handle = std::make_unique<warmstart_model>();
    handle->name = name;
    absl::StatusOr<ModelMapping> mapping =
        client->client->Acquire(name, *timeout);
    if (!mapping.ok()) return FailWith(errptr, mapping.status());
    handle->mapping = *std::move(mapping);
    handle->lease_id = handle->mapping.lease_id();
    handle->metadata_json = handle->mapping.metadata_json();
    *model = handle.release();
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

int warmstart_release(warmstart_model* model, char** errptr) {
  try {
    if (model == nullptr) return NullArgument(errptr, "model");
    absl::Status released = model->mapping.Release();
    {
      std::lock_guard<std::mutex> lock(model->table_mutex);
      model->table.reset();
    }
    if (!released.ok()) return FailWith(errptr, released);
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

void warmstart_model_destroy(warmstart_model* model) {
  try {
    delete model;  // ~ModelMapping releases and ignores the status.
  } catch (...) {
    // Nothing to report to: destruction has no errptr.
  }
}

const char* warmstart_model_name(const warmstart_model* model) {
  return model == nullptr ? nullptr : model->name.c_str();
}

const char* warmstart_model_lease_id(const warmstart_model* model) {
  return model == nullptr ? nullptr : model->lease_id.c_str();
}

size_t warmstart_model_tensor_count(const warmstart_model* model) {
  return model == nullptr ? 0 : model->mapping.tensor_count();
}

int warmstart_model_tensor(const warmstart_model* model, size_t index,
                           warmstart_tensor* tensor) {
  if (model == nullptr || tensor == nullptr) {
    return WARMSTART_INVALID_ARGUMENT;
  }
  if (index >= model->mapping.tensor_count()) return WARMSTART_OUT_OF_RANGE;
  const TensorRecord record = model->mapping.tensor_record(index);
  // The record's strings are followed by a NUL: C strings in place.
  tensor->name = record.name.data();
  tensor->dtype = record.dtype.data();
  tensor->device_uuid = record.device_uuid->c_str();
  tensor->shape = record.shape.empty() ? nullptr : record.shape.data();
  tensor->ndim = record.shape.size();
  tensor->nbytes = record.nbytes;
  tensor->data = record.nbytes == 0 ? nullptr : record.data;
  tensor->on_host = *record.device_uuid == "host" ? 1 : 0;
  tensor->read_only = record.read_only ? 1 : 0;
  return WARMSTART_OK;
}

int warmstart_model_tensor_table(warmstart_model* model,
                                 warmstart_tensor_table* table, char** errptr) {
  try {
    if (model == nullptr) return NullArgument(errptr, "model");
    if (table == nullptr) return NullArgument(errptr, "table");
    std::lock_guard<std::mutex> lock(model->table_mutex);
    if (model->table == nullptr) {
      model->table = BuildTensorTable(model->mapping);
    }
    const TensorTableColumns& columns = *model->table;
    table->count = columns.nbytes.size();
    table->names = columns.names.data();
    table->names_bytes = columns.names.size();
    table->dtypes = columns.dtypes.data();
    table->dtypes_bytes = columns.dtypes.size();
    table->device_uuids = columns.device_uuids.data();
    table->device_uuids_bytes = columns.device_uuids.size();
    table->nbytes = columns.nbytes.data();
    table->data = columns.data.data();
    table->on_host = columns.on_host.data();
    table->read_only = columns.read_only.data();
    table->shape_starts = columns.shape_starts.data();
    table->shapes = columns.shapes.data();
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

int warmstart_model_file_path(warmstart_model* model, const char** path,
                              char** errptr) {
  try {
    if (model == nullptr) return NullArgument(errptr, "model");
    if (path == nullptr) return NullArgument(errptr, "path");
    *path = nullptr;
    absl::StatusOr<std::string> file_path = model->mapping.FilePath();
    if (!file_path.ok()) return FailWith(errptr, file_path.status());
    model->file_path = *std::move(file_path);
    *path = model->file_path.c_str();
    return WARMSTART_OK;
  } catch (...) {
    return CaughtException(errptr);
  }
}

const char* warmstart_model_tensor_role(const warmstart_model* model,
                                        size_t index) {
  if (model == nullptr) return nullptr;
  if (index >= model->mapping.tensor_count()) return nullptr;
  // Followed by a NUL in place (TensorRecord).
  return model->mapping.tensor_record(index).role.data();
}

const char* warmstart_model_metadata_json(const warmstart_model* model) {
  return model == nullptr ? nullptr : model->metadata_json.c_str();
}

}  // extern "C"
