/* The C interface (warmstart.h, libwarmstart.so) from plain C11, against
 * the fake daemon (tests/doubles/fake_daemon_main) started as a child process.
 * It serves one model, "tiny": 10000 pattern bytes (byte i is
 * (7 i + 3) mod 256) with tensors "a" (F32 [4, 4] at 0) and "b" (U8 [100]
 * at 256).
 *
 * Usage: warmstart_c_test [FAKE_DAEMON_MAIN]; under Bazel the fake comes
 * from the runfiles. Exits 0 when every check passed. */
#define _GNU_SOURCE

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/warmstart.h"

static int failures = 0;
static pid_t fake_pid = -1;
static char dir[] = "/tmp/wsc-XXXXXX";

#define CHECK(condition)                                               \
  do {                                                                 \
    if (!(condition)) {                                                \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
              #condition);                                             \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

/* Stops here: later checks would only repeat the failure. */
#define REQUIRE(condition)                                                   \
  do {                                                                       \
    if (!(condition)) {                                                      \
      fprintf(stderr, "%s:%d: requirement failed: %s\n", __FILE__, __LINE__, \
              #condition);                                                   \
      exit(1);                                                               \
    }                                                                        \
  } while (0)

#define CHECK_CODE(expected, actual, err)                                \
  do {                                                                   \
    int got_ = (actual);                                                 \
    if (got_ != (expected)) {                                            \
      fprintf(stderr, "%s:%d: %s gave %d, want %d (%s): %s\n", __FILE__, \
              __LINE__, #actual, got_, (int)(expected), #expected,       \
              (err) != NULL ? (err) : "(no message)");                   \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

static void StopFake(void) {
  if (fake_pid > 0) {
    kill(fake_pid, SIGKILL);
    waitpid(fake_pid, NULL, 0);
    fake_pid = -1;
  }
  char path[128];
  snprintf(path, sizeof(path), "%s/ws.sock", dir);
  unlink(path);
  snprintf(path, sizeof(path), "%s/ws.handles", dir);
  unlink(path);
  rmdir(dir);
}

/* Starts the fake in `dir` and waits for its "ready" line. */
static void StartFake(const char* binary) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  fake_pid = fork();
  REQUIRE(fake_pid >= 0);
  if (fake_pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    execl(binary, binary, dir, (char*)NULL);
    fprintf(stdout, "cannot run %s: %s\n", binary, strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  atexit(StopFake);
  char output[4096];
  size_t used = 0;
  while (used + 1 < sizeof(output)) {
    ssize_t n = read(fds[0], output + used, sizeof(output) - 1 - used);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    used += (size_t)n;
    output[used] = '\0';
    if (strstr(output, "ready\n") != NULL) break;
  }
  output[used] = '\0';
  REQUIRE(strstr(output, "ready\n") != NULL);
  /* The read end stays open (never closed): the fake may still log. */
}

static int Contains(const char* text, const char* part) {
  return text != NULL && strstr(text, part) != NULL;
}

static uint8_t Pattern(size_t i) { return (uint8_t)((i * 7 + 3) & 0xff); }

/* Whether tensor `t` holds pattern bytes from `offset` on. */
static int HoldsPattern(const warmstart_tensor* t, size_t offset) {
  const uint8_t* bytes = (const uint8_t*)t->data;
  if (bytes == NULL) return 0;
  for (uint64_t i = 0; i < t->nbytes; ++i) {
    if (bytes[i] != Pattern(offset + i)) return 0;
  }
  return 1;
}

static void TestVersion(void) {
  CHECK(strcmp(warmstart_version(), "0.1.0") == 0);
  warmstart_free(NULL);
}

static void TestMissingDaemon(void) {
  char missing[128];
  snprintf(missing, sizeof(missing), "%s/missing.sock", dir);
  warmstart_client* client = (warmstart_client*)&failures; /* Overwritten. */
  char* err = NULL;
  CHECK_CODE(WARMSTART_UNAVAILABLE,
             warmstart_connect(missing, 1.0, 0, &client, &err), err);
  CHECK(client == NULL);
  CHECK(Contains(err, missing));
  CHECK(strchr(err, '\n') == NULL);
  /* The same errptr again: the old message is freed first (ASan's leak
   * check would see it otherwise). */
  CHECK_CODE(WARMSTART_UNAVAILABLE,
             warmstart_connect(missing, 0.2, 0, &client, &err), err);
  CHECK(Contains(err, missing));
  /* A bad timeout. */
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_connect(missing, -1.0, 0, &client, &err), err);
  CHECK(Contains(err, "timeout"));
  /* No message wanted. */
  CHECK_CODE(WARMSTART_UNAVAILABLE,
             warmstart_connect(missing, 0.2, 0, &client, NULL), NULL);
  warmstart_free(err);
}

static void TestNullArguments(void) {
  char* err = NULL;
  warmstart_model* model = NULL;
  char* json = NULL;
  warmstart_tensor tensor;
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_connect(NULL, 1.0, 0, NULL, &err), err);
  CHECK(Contains(err, "NULL"));
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_acquire(NULL, "tiny", 1.0, &model, &err), err);
  CHECK(model == NULL);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_load(NULL, "tiny", "/models/x", 1.0, &err), err);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_unload(NULL, "tiny", 0, &err), err);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_status_json(NULL, NULL, &json, &err), err);
  CHECK(json == NULL);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT, warmstart_release(NULL, &err), err);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_model_tensor(NULL, 0, &tensor), NULL);
  CHECK(warmstart_model_tensor_count(NULL) == 0);
  CHECK(warmstart_model_name(NULL) == NULL);
  CHECK(warmstart_model_lease_id(NULL) == NULL);
  warmstart_model_destroy(NULL);
  warmstart_client_destroy(NULL);
  warmstart_free(err);
}

static void TestStatus(warmstart_client* client) {
  char* err = NULL;
  char* json = NULL;
  CHECK_CODE(WARMSTART_OK, warmstart_status_json(client, NULL, &json, &err),
             err);
  CHECK(json != NULL && json[0] == '[');
  CHECK(Contains(json, "\"name\":\"tiny\""));
  warmstart_free(json);
  json = NULL;
  CHECK_CODE(WARMSTART_OK, warmstart_status_json(client, "tiny", &json, &err),
             err);
  CHECK(json != NULL && json[0] == '{');
  CHECK(Contains(json, "\"state\":\"ready\""));
  CHECK(Contains(json, "\"bytes_total\":10000"));
  CHECK(Contains(json, "\"bytes_loaded\":10000"));
  CHECK(Contains(json, "\"leases\":"));
  CHECK(Contains(json, "\"tensor_count\":2"));
  CHECK(Contains(json, "\"devices\":[\"host\"]"));
  warmstart_free(json);
  json = (char*)&failures; /* Overwritten. */
  CHECK_CODE(WARMSTART_NOT_FOUND,
             warmstart_status_json(client, "absent", &json, &err), err);
  CHECK(json == NULL);
  CHECK(Contains(err, "absent"));
  warmstart_free(err);
}

static void TestAcquire(warmstart_client* client) {
  char* err = NULL;
  warmstart_model* model = NULL;

  CHECK_CODE(WARMSTART_NOT_FOUND,
             warmstart_acquire(client, "absent", 5.0, &model, &err), err);
  CHECK(model == NULL);
  CHECK(Contains(err, "absent"));

  CHECK_CODE(WARMSTART_OK, warmstart_acquire(client, "tiny", 5.0, &model, &err),
             err);
  REQUIRE(model != NULL);
  CHECK(strcmp(warmstart_model_name(model), "tiny") == 0);
  CHECK(strlen(warmstart_model_lease_id(model)) > 0);
  REQUIRE(warmstart_model_tensor_count(model) == 2);

  int seen_a = 0;
  int seen_b = 0;
  for (size_t i = 0; i < warmstart_model_tensor_count(model); ++i) {
    warmstart_tensor t;
    memset(&t, 0, sizeof(t));
    CHECK_CODE(WARMSTART_OK, warmstart_model_tensor(model, i, &t), NULL);
    CHECK(t.on_host == 1);
    CHECK(t.read_only == 1);
    CHECK(strcmp(t.device_uuid, "host") == 0);
    REQUIRE(warmstart_model_tensor_role(model, i) != NULL);
    if (strcmp(t.name, "a") == 0) {
      seen_a = 1;
      CHECK(strcmp(warmstart_model_tensor_role(model, i), "parameter") == 0);
      CHECK(strcmp(t.dtype, "F32") == 0);
      CHECK(t.ndim == 2 && t.shape[0] == 4 && t.shape[1] == 4);
      CHECK(t.nbytes == 64);
      CHECK(HoldsPattern(&t, 0));
    } else if (strcmp(t.name, "b") == 0) {
      seen_b = 1;
      CHECK(strcmp(warmstart_model_tensor_role(model, i), "") == 0);
      CHECK(strcmp(t.dtype, "U8") == 0);
      CHECK(t.ndim == 1 && t.shape[0] == 100);
      CHECK(t.nbytes == 100);
      CHECK(HoldsPattern(&t, 256));
    }
  }
  CHECK(seen_a && seen_b);
  CHECK(warmstart_model_tensor_role(model, 2) == NULL);
  CHECK(warmstart_model_tensor_role(NULL, 0) == NULL);
  CHECK(warmstart_model_metadata_json(NULL) == NULL);
  CHECK(strcmp(warmstart_model_metadata_json(model), "{\"format\":\"pt\"}") ==
        0);
  warmstart_tensor past;
  CHECK_CODE(WARMSTART_OUT_OF_RANGE, warmstart_model_tensor(model, 2, &past),
             NULL);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT, warmstart_model_tensor(model, 0, NULL),
             NULL);

  /* Release: no tensors any more, the name stays; releasing again is
   * fine, and so is destroying. */
  CHECK_CODE(WARMSTART_OK, warmstart_release(model, &err), err);
  CHECK(warmstart_model_tensor_count(model) == 0);
  CHECK_CODE(WARMSTART_OUT_OF_RANGE, warmstart_model_tensor(model, 0, &past),
             NULL);
  CHECK(strcmp(warmstart_model_name(model), "tiny") == 0);
  CHECK(strcmp(warmstart_model_metadata_json(model), "{\"format\":\"pt\"}") ==
        0);
  CHECK(warmstart_model_tensor_role(model, 0) == NULL);
  CHECK_CODE(WARMSTART_OK, warmstart_release(model, &err), err);
  warmstart_model_destroy(model);

  /* Destroying without releasing releases. */
  model = NULL;
  CHECK_CODE(WARMSTART_OK, warmstart_acquire(client, "tiny", 5.0, &model, &err),
             err);
  warmstart_model_destroy(model);
  warmstart_free(err);
}

/* The whole table in one call agrees with warmstart_model_tensor, row by
 * row, and is empty after release. */
static void TestTensorTable(warmstart_client* client) {
  char* err = NULL;
  warmstart_model* model = NULL;
  warmstart_tensor_table table;
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_model_tensor_table(NULL, &table, &err), err);
  CHECK_CODE(WARMSTART_OK, warmstart_acquire(client, "tiny", 5.0, &model, &err),
             err);
  REQUIRE(model != NULL);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_model_tensor_table(model, NULL, &err), err);
  memset(&table, 0, sizeof(table));
  CHECK_CODE(WARMSTART_OK, warmstart_model_tensor_table(model, &table, &err),
             err);
  REQUIRE(table.count == warmstart_model_tensor_count(model));
  const char* name = table.names;
  const char* dtype = table.dtypes;
  const char* device = table.device_uuids;
  for (size_t i = 0; i < table.count; ++i) {
    warmstart_tensor t;
    CHECK_CODE(WARMSTART_OK, warmstart_model_tensor(model, i, &t), NULL);
    CHECK(strcmp(name, t.name) == 0);
    CHECK(strcmp(dtype, t.dtype) == 0);
    CHECK(strcmp(device, t.device_uuid) == 0);
    CHECK(table.nbytes[i] == t.nbytes);
    CHECK(table.data[i] == (uint64_t)(uintptr_t)t.data);
    CHECK(table.on_host[i] == t.on_host);
    CHECK(table.read_only[i] == t.read_only);
    REQUIRE(table.shape_starts[i + 1] - table.shape_starts[i] == t.ndim);
    for (size_t d = 0; d < t.ndim; ++d) {
      CHECK(table.shapes[table.shape_starts[i] + d] == t.shape[d]);
    }
    name += strlen(name) + 1;
    dtype += strlen(dtype) + 1;
    device += strlen(device) + 1;
  }
  CHECK(name == table.names + table.names_bytes);
  CHECK(dtype == table.dtypes + table.dtypes_bytes);
  CHECK(device == table.device_uuids + table.device_uuids_bytes);
  /* A second call gives the same table. */
  warmstart_tensor_table again;
  CHECK_CODE(WARMSTART_OK, warmstart_model_tensor_table(model, &again, &err),
             err);
  CHECK(again.names == table.names && again.count == table.count);

  CHECK_CODE(WARMSTART_OK, warmstart_release(model, &err), err);
  CHECK_CODE(WARMSTART_OK, warmstart_model_tensor_table(model, &table, &err),
             err);
  CHECK(table.count == 0 && table.names_bytes == 0);
  warmstart_model_destroy(model);
  warmstart_free(err);
}

/* A model outlives the client that acquired it. */
static void TestModelOutlivesClient(const char* socket_path) {
  char* err = NULL;
  warmstart_client* client = NULL;
  warmstart_model* model = NULL;
  CHECK_CODE(WARMSTART_OK,
             warmstart_connect(socket_path, 5.0, 0, &client, &err), err);
  REQUIRE(client != NULL);
  CHECK_CODE(WARMSTART_OK, warmstart_acquire(client, "tiny", 5.0, &model, &err),
             err);
  REQUIRE(model != NULL);
  warmstart_client_destroy(client);
  warmstart_tensor t;
  CHECK_CODE(WARMSTART_OK, warmstart_model_tensor(model, 1, &t), NULL);
  CHECK(HoldsPattern(&t, strcmp(t.name, "b") == 0 ? 256 : 0));
  CHECK_CODE(WARMSTART_OK, warmstart_release(model, &err), err);
  warmstart_model_destroy(model);
  warmstart_free(err);
}

struct ThreadArgs {
  warmstart_client* client;
  int failures;
};

static void* AcquireReleaseLoop(void* opaque) {
  struct ThreadArgs* args = (struct ThreadArgs*)opaque;
  for (int i = 0; i < 20; ++i) {
    warmstart_model* model = NULL;
    char* err = NULL;
    if (warmstart_acquire(args->client, "tiny", 10.0, &model, &err) !=
        WARMSTART_OK) {
      fprintf(stderr, "acquire in a thread: %s\n", err);
      ++args->failures;
    } else {
      warmstart_tensor t;
      if (warmstart_model_tensor(model, 0, &t) != WARMSTART_OK ||
          !HoldsPattern(&t, strcmp(t.name, "b") == 0 ? 256 : 0)) {
        ++args->failures;
      }
      if (warmstart_release(model, &err) != WARMSTART_OK) ++args->failures;
    }
    warmstart_model_destroy(model);
    warmstart_free(err);
  }
  return NULL;
}

/* One client from several threads at once. */
static void TestThreads(warmstart_client* client) {
  enum { kThreads = 4 };
  pthread_t threads[kThreads];
  struct ThreadArgs args[kThreads];
  for (int i = 0; i < kThreads; ++i) {
    args[i].client = client;
    args[i].failures = 0;
    REQUIRE(pthread_create(&threads[i], NULL, AcquireReleaseLoop, &args[i]) ==
            0);
  }
  for (int i = 0; i < kThreads; ++i) {
    pthread_join(threads[i], NULL);
    CHECK(args[i].failures == 0);
  }
}

static void TestLoadAndUnload(warmstart_client* client) {
  char* err = NULL;
  warmstart_model* model = NULL;
  /* The fake "loads" the models it has and knows no files. */
  CHECK_CODE(
      WARMSTART_OK,
      warmstart_load(client, "tiny", "/models/tiny.safetensors", 5.0, &err),
      err);
  CHECK_CODE(WARMSTART_NOT_FOUND,
             warmstart_load(client, "other", "/models/other", -1.0, &err), err);
  CHECK(Contains(err, "/models/other"));
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_load(client, "tiny", NULL, 5.0, &err), err);
  CHECK_CODE(WARMSTART_INVALID_ARGUMENT,
             warmstart_unload(client, NULL, 0, &err), err);
  CHECK_CODE(WARMSTART_OK, warmstart_unload(client, "tiny", 1, &err), err);
  CHECK_CODE(WARMSTART_NOT_FOUND, warmstart_unload(client, "tiny", 0, &err),
             err);
  CHECK_CODE(WARMSTART_NOT_FOUND,
             warmstart_acquire(client, "tiny", 5.0, &model, &err), err);
  warmstart_free(err);
}

int main(int argc, char** argv) {
  const char* fake = argc > 1 ? argv[1] : "tests/doubles/fake_daemon_main";
  REQUIRE(mkdtemp(dir) != NULL);

  TestVersion();
  TestMissingDaemon();
  TestNullArguments();

  StartFake(fake);
  char socket_path[128];
  snprintf(socket_path, sizeof(socket_path), "%s/ws.sock", dir);
  warmstart_client* client = NULL;
  char* err = NULL;
  CHECK_CODE(WARMSTART_OK,
             warmstart_connect(socket_path, 10.0, 1, &client, &err), err);
  REQUIRE(client != NULL);
  TestStatus(client);
  TestAcquire(client);
  TestTensorTable(client);
  TestModelOutlivesClient(socket_path);
  TestThreads(client);
  TestLoadAndUnload(client);
  warmstart_client_destroy(client);
  warmstart_free(err);

  StopFake();
  if (failures != 0) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  printf("all checks passed\n");
  return 0;
}
