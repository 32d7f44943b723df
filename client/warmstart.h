/* warmstart.h: the C interface of the warmstart client (libwarmstart.so).
 *
 * Maps model weights that warmstartd keeps resident (in GPU memory or
 * sealed host shared memory) into this process without copying them.
 *
 *   warmstart_client* client = NULL;
 *   char* err = NULL;
 *   if (warmstart_connect(NULL, 5.0, 0, &client, &err) != WARMSTART_OK) {
 *     fprintf(stderr, "%s\n", err);
 *     warmstart_free(err);
 *     return 1;
 *   }
 *   warmstart_model* model = NULL;
 *   if (warmstart_acquire(client, "llama", 60.0, &model, &err) == 0) {
 *     warmstart_tensor t;
 *     for (size_t i = 0; i < warmstart_model_tensor_count(model); ++i) {
 *       warmstart_model_tensor(model, i, &t);  // t.data: read-only
 *     }
 *     warmstart_model_destroy(model);  // releases the lease, unmaps
 *   } else {
 *     fprintf(stderr, "%s\n", err);
 *   }
 *   warmstart_free(err);
 *   warmstart_client_destroy(client);
 *
 * Conventions:
 *  - Fallible functions return a status code (WARMSTART_OK, or one of the
 *    gRPC/Abseil codes below) and, on failure, store a one-line message in
 *    *errptr, allocated with malloc: free it with warmstart_free. A message
 *    already in *errptr is freed first, so one variable can be reused; a
 *    successful call leaves *errptr alone, so test the return code, not
 *    the message. errptr may be NULL when the message is not wanted.
 *  - Handles are opaque and owned by the caller: each *_destroy frees one.
 *    A model stays valid after the client that acquired it is destroyed.
 *  - Strings are NUL-terminated UTF-8. Strings and arrays a handle returns
 *    live as long as the handle.
 *  - Thread safety: a client may be used from several threads at once; a
 *    model's accessors may be called concurrently, but warmstart_release
 *    and warmstart_model_destroy must not race with other uses of that
 *    model.
 *  - No function throws or aborts on bad input; NULL handles give
 *    WARMSTART_INVALID_ARGUMENT (accessors without a status: NULL or 0).
 *    An unexpected failure inside the library (an exception caught at
 *    the boundary, out of memory) is WARMSTART_INTERNAL.
 */
#ifndef WARMSTART_CLIENT_WARMSTART_H_
#define WARMSTART_CLIENT_WARMSTART_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: the gRPC/Abseil canonical codes. */
enum {
  WARMSTART_OK = 0,
  WARMSTART_CANCELLED = 1,
  WARMSTART_UNKNOWN = 2,
  WARMSTART_INVALID_ARGUMENT = 3,
  WARMSTART_DEADLINE_EXCEEDED = 4,
  WARMSTART_NOT_FOUND = 5,
  WARMSTART_ALREADY_EXISTS = 6,
  WARMSTART_PERMISSION_DENIED = 7,
  WARMSTART_RESOURCE_EXHAUSTED = 8,
  WARMSTART_FAILED_PRECONDITION = 9,
  WARMSTART_ABORTED = 10,
  WARMSTART_OUT_OF_RANGE = 11,
  WARMSTART_UNIMPLEMENTED = 12,
  WARMSTART_INTERNAL = 13,
  WARMSTART_UNAVAILABLE = 14,
  WARMSTART_DATA_LOSS = 15,
  WARMSTART_UNAUTHENTICATED = 16
};

typedef struct warmstart_client warmstart_client;
typedef struct warmstart_model warmstart_model;

/* One tensor of a mapped model. Pointers live as long as the model. */
typedef struct warmstart_tensor {
  const char* name;
  /* As `warmstartctl inspect` names it: "F32", "BF16", "Q4_K", ... */
  const char* dtype;
  /* "host", or the GPU's UUID ("GPU-..."). */
  const char* device_uuid;
  /* Dimensions, outermost first (C order). */
  const uint64_t* shape;
  size_t ndim;
  uint64_t nbytes;
  /* The first byte: host memory mapped read-only (writing faults), or a
   * CUDA device pointer in this process's primary context of that GPU.
   * NULL for an empty tensor. */
  const void* data;
  /* 1 when `data` is host memory, 0 when it is GPU memory. */
  int on_host;
  /* 1 when this process cannot write through `data`: always for host
   * memory and for CUDA VMM imports the driver maps read-only; 0 for legacy
   * CUDA IPC mappings, which the driver maps read-write (do not write). */
  int read_only;
} warmstart_tensor;

/* A model's whole tensor table, column by column, for callers that want
 * every tensor at once without a call per tensor (the Python client). Row i
 * is tensor i of warmstart_model_tensor. Everything it points to is owned
 * by the model handle and valid until warmstart_release or
 * warmstart_model_destroy. */
typedef struct warmstart_tensor_table {
  size_t count;
  /* Every tensor's name, each followed by a NUL, back to back in row order:
   * `names_bytes` bytes in all (the last NUL included). Likewise the
   * dtypes and the device UUIDs. */
  const char* names;
  size_t names_bytes;
  const char* dtypes;
  size_t dtypes_bytes;
  const char* device_uuids;
  size_t device_uuids_bytes;
  /* `count` entries each: as in warmstart_tensor (data as an address; 0
   * for an empty tensor). */
  const uint64_t* nbytes;
  const uint64_t* data;
  const uint8_t* on_host;
  const uint8_t* read_only;
  /* `count + 1` entries: tensor i's dimensions are
   * shapes[shape_starts[i]] up to shapes[shape_starts[i + 1]], outermost
   * first. */
  const uint64_t* shape_starts;
  const uint64_t* shapes;
} warmstart_tensor_table;

/* The library's version, e.g. "0.1.0". Static storage. */
const char* warmstart_version(void);

/* Frees a message or string this library allocated. NULL is fine. */
void warmstart_free(void* pointer);

/* Connects to the daemon at `socket_path` (NULL: the default,
 * /run/warmstart/warmstart.sock) and checks its protocol version. Waits up
 * to `timeout_seconds` for an answer (INFINITY: forever; negative or NaN is
 * WARMSTART_INVALID_ARGUMENT); with `wait_for_daemon` nonzero, also while
 * the socket does not exist yet. WARMSTART_UNAVAILABLE when nothing
 * answers (the message names the socket), WARMSTART_FAILED_PRECONDITION
 * for an incompatible daemon. *client is NULL on failure. */
int warmstart_connect(const char* socket_path, double timeout_seconds,
                      int wait_for_daemon, warmstart_client** client,
                      char** errptr);
void warmstart_client_destroy(warmstart_client* client);

/* Loads model `name` from `path` (absolute, beneath one of the daemon's
 * model roots) and waits until it is ready, up to `timeout_seconds` (a
 * negative value waits forever; a timeout leaves the load running). */
int warmstart_load(warmstart_client* client, const char* name, const char* path,
                   double timeout_seconds, char** errptr);

/* As warmstart_load, holding the model in `layout`: "packed" (tensors back
 * to back, any checkpoint, any device) or "file_image" (the file's exact
 * bytes, which warmstart_model_file_path opens as the file: one plaintext
 * file in host memory). NULL lets the daemon choose (file_image for a
 * single GGUF file in host memory) and joins a model in either layout. */
int warmstart_load_layout(warmstart_client* client, const char* name,
                          const char* path, const char* layout,
                          double timeout_seconds, char** errptr);

/* Unloads a model; `force` nonzero unloads a leased one once its last
 * lease is released. */
int warmstart_unload(warmstart_client* client, const char* name, int force,
                     char** errptr);

/* A model's status as a JSON object ({"name","state","leases",
 * "bytes_loaded","bytes_total",...}; state is "loading", "ready",
 * "failed" or "unloading"; the fields of `warmstartctl status --json`),
 * or with `name` NULL every model as a JSON array. *json is allocated:
 * free it with warmstart_free; NULL on failure. */
int warmstart_status_json(warmstart_client* client, const char* name,
                          char** json, char** errptr);

/* Takes a lease on a model (waiting up to `timeout_seconds` for a load in
 * progress; negative waits forever) and maps it: host memory read-only,
 * GPU memory imported into this process's primary context of the GPU that
 * holds it (found by UUID, whatever device is current).
 * WARMSTART_NOT_FOUND for an unknown model. *model is NULL on failure. */
int warmstart_acquire(warmstart_client* client, const char* name,
                      double timeout_seconds, warmstart_model** model,
                      char** errptr);

/* Unmaps the model and releases its lease; its tensors' pointers become
 * invalid. Idempotent. The handle still needs warmstart_model_destroy. */
int warmstart_release(warmstart_model* model, char** errptr);

/* Releases (ignoring errors) and frees the handle. NULL is fine. */
void warmstart_model_destroy(warmstart_model* model);

/* The model's name and its lease's id; valid until the handle is
 * destroyed, also after warmstart_release. NULL for a NULL handle. */
const char* warmstart_model_name(const warmstart_model* model);
const char* warmstart_model_lease_id(const warmstart_model* model);
/* 0 after warmstart_release. */
size_t warmstart_model_tensor_count(const warmstart_model* model);
/* Fills `*tensor` with tensor `index` (allocation by allocation, each in
 * the daemon's order: a model on several GPUs lists each tensor once per
 * device); WARMSTART_OUT_OF_RANGE past the end, WARMSTART_INVALID_ARGUMENT
 * for a NULL `model` or `tensor`. What it points to is valid until
 * warmstart_release or warmstart_model_destroy. */
int warmstart_model_tensor(const warmstart_model* model, size_t index,
                           warmstart_tensor* tensor);

/* Fills `*table` with every tensor of the model in one call (built on the
 * first call, then kept by the handle); count 0 after warmstart_release.
 * WARMSTART_INVALID_ARGUMENT for a NULL `model` or `table`. */
int warmstart_model_tensor_table(warmstart_model* model,
                                 warmstart_tensor_table* table, char** errptr);

/* For a model held as a file image: sets *path to a path
 * ("/proc/self/fd/N") under which this process can open and map the
 * resident bytes as the model's file (llama.cpp, gguf.GGUFReader,
 * safetensors.safe_open); read-only (writes and resizes fail), valid until
 * warmstart_release. The string is owned by the handle.
 * WARMSTART_FAILED_PRECONDITION for a packed or released model. */
int warmstart_model_file_path(warmstart_model* model, const char** path,
                              char** errptr);

/* What tensor `index` (as for warmstart_model_tensor) is to its module,
 * where the checkpoint's format records it: "parameter", "buffer" or
 * "state_dict" (tensorizer's tensor type); "" for formats that record
 * none (safetensors, GGUF). NULL for a NULL model or an index past the
 * end. Valid until warmstart_release or warmstart_model_destroy. */
const char* warmstart_model_tensor_role(const warmstart_model* model,
                                        size_t index);

/* The checkpoint's key-value metadata as a JSON object: safetensors'
 * __metadata__, GGUF's key-values (arrays summarised as
 * {"type":...,"len":...}), {} for tensorizer; for several files, every
 * file's keys (the first file's value where they differ). Valid until the
 * handle is destroyed, also after warmstart_release. NULL for a NULL
 * model. */
const char* warmstart_model_metadata_json(const warmstart_model* model);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* WARMSTART_CLIENT_WARMSTART_H_ */
