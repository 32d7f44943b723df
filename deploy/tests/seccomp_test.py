"""deploy/seccomp/warmstartd.json applied to a real warmstartd process with
libseccomp (seccomp_exec.py, the way a container runtime applies a
Localhost profile): the io_uring engine stays in use. Under the container
runtime's default profile (podman's /usr/share/containers/seccomp.json
from Debian's containers-common, which blocks io_uring like containerd's
and Docker's RuntimeDefault), and under ours with the three io_uring
syscalls taken out, the daemon falls back to the pread pool with its one
warning. In every case a client maps the model and its checksums match.
"""
import json
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.environ["WARMSTART_RUNFILES"], "tests"))
import harness  # noqa: E402

WORKDIR_PREFIX = "wssec-"
MODEL_ROOT_FIXTURES = (harness.GGUF,)
RUNFILES = os.environ["WARMSTART_RUNFILES"]
PROFILE = os.path.join(RUNFILES, "deploy/seccomp/warmstartd.json")
LAUNCHER = os.path.join(RUNFILES, "deploy/tests/seccomp_exec.py")
RUNTIME_DEFAULT = "/usr/share/containers/seccomp.json"
IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
FALLBACK_WARNING = "io_uring is unavailable"


class SeccompDaemon(harness.Daemon):
    """harness.Daemon started through seccomp_exec.py PROFILE."""

    def __init__(self, profile, workdir, *args):
        self.profile = profile
        super().__init__(workdir, *args)

    def start(self, wait=True):
        if self.args[0] != "/usr/bin/python3":
            self.args = ["/usr/bin/python3", LAUNCHER, self.profile,
                         *self.args]
        super().start(wait)


def allowed_names(profile):
    return {name for entry in profile["syscalls"]
            if entry["action"] == "SCMP_ACT_ALLOW" and not entry.get("args")
            for name in entry["names"]}


def without_io_uring(profile):
    out = json.loads(json.dumps(profile))
    for entry in out["syscalls"]:
        entry["names"] = [n for n in entry["names"] if n not in IO_URING]
    out["syscalls"] = [e for e in out["syscalls"] if e["names"]]
    return out


@pytest.fixture
def profile():
    with open(PROFILE) as f:
        return json.load(f)


def run_daemon(profile_path, workdir):
    """A ready daemon under `profile_path` with `tiny` preloaded; checks
    the seccomp filter is on and a client's checksums match. Returns
    (daemon, io_uring fds it holds, its log)."""
    root = harness.make_model_root(os.path.join(workdir, "models"),
                                   MODEL_ROOT_FIXTURES)
    model = harness.in_root(root, harness.GGUF)
    daemon = SeccompDaemon(profile_path, workdir, "--model_root", root,
                           "--preload", f"tiny={model}")
    try:
        with open(f"/proc/{daemon.process.pid}/status") as status:
            assert "Seccomp:\t2" in status.read()
        client = daemon.client("--model", "tiny")
        got = harness.event(client)
        assert got["event"] == "acquired", got
        assert got["sha256"] == harness.expected_hashes(harness.GGUF)
        assert client.wait(30) == 0
        fd_dir = f"/proc/{daemon.process.pid}/fd"
        uring_fds = [fd for fd in os.listdir(fd_dir)
                     if "io_uring" in os.readlink(os.path.join(fd_dir, fd))]
        stats = daemon.ctl("stats", "--json")
        assert stats.returncode == 0, stats.stderr
        return daemon, uring_fds, json.loads(stats.stdout)["metrics"]
    except BaseException:
        daemon.stop(signal.SIGKILL)
        raise


def test_profile_is_a_default_deny_list_with_io_uring(profile):
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert IO_URING <= allowed_names(profile)
    # What a container must not do stays out.
    for name in ["mount", "umount2", "unshare", "setns", "pivot_root",
                 "bpf", "perf_event_open", "kexec_load", "init_module",
                 "add_key", "keyctl", "userfaultfd", "reboot", "swapon"]:
        assert name not in allowed_names(profile), name


def test_localhost_profile_keeps_io_uring(workdir):
    daemon, uring_fds, metrics = run_daemon(PROFILE, workdir)
    try:
        assert uring_fds, "the daemon holds no io_uring instance"
        assert FALLBACK_WARNING not in daemon.logs()
        assert metrics.get("warmstart_io_uring_fallback_total", 0) == 0
    finally:
        daemon.stop(signal.SIGTERM)


@pytest.mark.parametrize("which", ["runtime-default", "ours-without-io_uring"])
def test_default_profile_falls_back_to_pread_with_one_warning(
        workdir, profile, which):
    if which == "runtime-default":
        assert os.path.exists(RUNTIME_DEFAULT), (
            "containers-common's default profile is missing: "
            "tools/lib/setup.sh installs podman")
        with open(RUNTIME_DEFAULT) as f:
            assert not IO_URING & allowed_names(json.load(f))
        path = RUNTIME_DEFAULT
    else:
        path = os.path.join(workdir, "no-io_uring.json")
        with open(path, "w") as f:
            json.dump(without_io_uring(profile), f)
    daemon, uring_fds, metrics = run_daemon(path, workdir)
    try:
        assert uring_fds == []
        assert daemon.logs().count(FALLBACK_WARNING) == 1, daemon.logs()
        assert metrics["warmstart_io_uring_fallback_total"] >= 1
    finally:
        daemon.stop(signal.SIGTERM)


@pytest.fixture
def workdir():
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)
