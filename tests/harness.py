"""Shared helpers of the pytest files that start the real warmstartd
(daemon_models_test, ctl_test, python_client_test): the binaries' paths in
the runfiles, the shared fixtures and their expected hashes, synthetic
checkpoints, a `Daemon` wrapping a warmstartd process, and small waits.

tools/pytest_runner.sh runs each test file from the Bazel runfiles root,
where pytest puts tests/ on sys.path: the tests `import harness`. The
pytest fixtures built on these helpers are in tests/conftest.py.

Binaries come from the test's runfiles ($WARMSTART_RUNFILES), the shared
fixtures from $WARMSTART_FIXTURES; every daemon runs on a socket and model
root under /tmp.
"""
import json
import os
import shutil
import signal
import subprocess
import threading
import time

RUNFILES = os.environ["WARMSTART_RUNFILES"]
FIXTURES = os.environ["WARMSTART_FIXTURES"]
DAEMON = os.path.join(RUNFILES, "daemon/warmstartd")
CTL = os.path.join(RUNFILES, "tools/warmstartctl/warmstartctl")
CLIENT = os.path.join(RUNFILES, "client/examples/map_model")

# Fixtures written by the reference writers, with their expected sha256 per
# tensor in the expected-values files.
GGUF = "gguf/ollama-llama-2-tiny-random.gguf"
GGUF_ALLTYPES = "gguf/ggufpy-v3-alltypes.gguf"
SAFETENSORS = "safetensors/golden_rs_f32.safetensors"
SAFETENSORS_BF16 = "safetensors/golden_py_bf16.safetensors"
TENSORIZER = "tensorizer/module_simple_v1.tensors"

# Under --config=asan, client/python/pytest_runner.sh preloads the
# sanitizer runtime into python (the test process and the client processes
# it starts); the daemon and warmstartctl carry their own and get the
# environment without it. Elsewhere this is just the test's environment.
NATIVE_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
if "WARMSTART_TEST_ASAN_OPTIONS" in os.environ:
    NATIVE_ENV["ASAN_OPTIONS"] = os.environ["WARMSTART_TEST_ASAN_OPTIONS"]


def expected_tensors(fixture):
    """The tensor entries (dicts with "name", "sha256" and a type) of the
    expected-values file of `fixture`, a path under FIXTURES."""
    path = os.path.join(FIXTURES, fixture)
    if fixture.endswith(".gguf"):
        with open(path[:-len(".gguf")] + ".json") as values:
            return json.load(values)["tensors"]
    with open(path + ".json") as values:
        doc = json.load(values)
    if fixture.endswith(".safetensors"):
        return doc["independent_parse"]["tensors"]
    return doc["expected"]["tensors"]


def expected_hashes(fixture):
    """name -> sha256 of every tensor of `fixture`."""
    return {t["name"]: t["sha256"] for t in expected_tensors(fixture)}


def expected(fixture):
    """name -> (dtype, sha256) of every tensor of `fixture`; the dtype is
    None where the expected-values file gives none."""
    if fixture.endswith(".gguf"):
        return {t["name"]: (t["type"], t["sha256"])
                for t in expected_tensors(fixture)}
    return {t["name"]: (t.get("dtype"), t["sha256"])
            for t in expected_tensors(fixture)}


def write_safetensors(path, tensors, tensor_bytes, seed=1):
    """Writes a synthetic U8 checkpoint of a chosen size to `path`:
    `tensors` tensors t0, t1, ... of `tensor_bytes` bytes each, whose bytes
    depend on `seed` (load tests only; format tests use the reference
    writers' files)."""
    header = {}
    offset = 0
    for i in range(tensors):
        header[f"t{i}"] = {"dtype": "U8", "shape": [tensor_bytes],
                           "data_offsets": [offset, offset + tensor_bytes]}
        offset += tensor_bytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(len(text).to_bytes(8, "little"))
        out.write(text)
        block = bytes((seed + i) % 251 for i in range(1 << 16))
        left = offset
        while left:
            out.write(block[:min(left, len(block))])
            left -= min(left, len(block))


def make_model_root(path, fixtures):
    """Creates the directory `path` holding copies of `fixtures` (runfiles
    are symlinks out of the tree, which a model root rightly refuses) and
    returns it."""
    os.mkdir(path)
    for fixture in fixtures:
        shutil.copy(os.path.join(FIXTURES, fixture), path)
    return path


def in_root(root, fixture):
    """The path of the copy of `fixture` in the model root `root`."""
    return os.path.join(root, os.path.basename(fixture))


def ctl(*args, timeout=120, env=None):
    """Runs warmstartctl with `args` (and `env`, else this process's
    environment); returns the CompletedProcess with text output."""
    return subprocess.run([CTL, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


class Daemon:
    """A warmstartd process on WORKDIR/d.sock, logging to
    WORKDIR/daemon.log; stopped (SIGKILL at worst) by stop().

    `args` follow --socket and --backend `backend` on the command line;
    `env` adds variables to the daemon's environment (NATIVE_ENV); `prefix`
    is a command that execs the daemon (["prlimit", "--nofile=256:256",
    "--"], say: the process keeps the daemon's pid). With `wait`, the
    constructor returns once `warmstartctl wait-ready` does.
    """

    def __init__(self, workdir, *args, wait=True, backend="host", env=None,
                 prefix=()):
        self.workdir = workdir
        self.socket = os.path.join(workdir, "d.sock")
        self.args = [*prefix, DAEMON, "--socket", self.socket, "--backend",
                     backend, *args]
        self.env = dict(NATIVE_ENV, **(env or {}))
        self.log_path = os.path.join(workdir, "daemon.log")
        self.start(wait)

    def start(self, wait=True):
        """Starts (or, after stop(), restarts) the process; with `wait`,
        asserts that it becomes ready within 30 s."""
        self.log = open(self.log_path, "a")
        self.process = subprocess.Popen(self.args, stdout=self.log,
                                        stderr=self.log, env=self.env)
        if wait:
            ready = self.ctl("wait-ready", "--timeout", "30")
            assert ready.returncode == 0, ready.stderr + self.logs()

    def logs(self):
        """Everything the daemon has logged so far (across restarts)."""
        with open(self.log_path) as log:
            return log.read()

    def ctl(self, *args, timeout=120):
        """Runs warmstartctl with `args` against this daemon's socket."""
        return ctl(*args, "--socket", self.socket, timeout=timeout,
                   env=NATIVE_ENV)

    def status(self, name):
        """`warmstartctl status NAME --json` as a dict; None if it fails
        (no such model, no daemon)."""
        result = self.ctl("status", name, "--json")
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def leases(self, name):
        """The number of leases on model `name`, which must exist."""
        result = self.ctl("status", name, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["leases"]

    def client(self, *args):
        """Starts client/examples/map_model on this daemon's socket with
        `args`; its stdout and stderr are text pipes (see event())."""
        return subprocess.Popen([CLIENT, "--socket", self.socket, *args],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def stop(self, sig=signal.SIGKILL, timeout=30):
        """Sends `sig` if the process still runs, waits up to `timeout`
        seconds for it (then SIGKILL), closes the log and returns the exit
        status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


def event(process, timeout=60):
    """The next JSON event line of a client process (map_model or a Python
    worker), asserting there is one within `timeout` seconds (else failing
    with its stderr, or with the timeout: a hung client fails the test
    instead of stalling it)."""
    # A reader thread, not select(): the pipe's text layer may already hold
    # the line. On a timeout the thread stays blocked until the client dies.
    lines = []
    reader = threading.Thread(
        target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert lines, f"no event from the client within {timeout} s"
    assert lines[0], process.stderr.read()
    return json.loads(lines[0])


def wait_for(predicate, timeout):
    """Polls `predicate` every 20 ms for up to `timeout` seconds; returns
    whether it became true (checking once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
