"""The warmstartd image, built here without pulling anything
(deploy/image/build-rootfs.sh: mmdebstrap, Debian 12's essential set, the
runtime libraries, the binaries; then `podman import`), and run with
podman doing the demo's job: the daemon in a container preloads two models
from a read-only model directory; a client on the host maps them through
the shared socket directory and every tensor's sha256 matches; a second
container, as another user in the daemon's group with the socket directory
mounted read-only (a worker pod of the node overlay), lists them. The
Localhost seccomp profile keeps io_uring; podman's default profile makes
the daemon fall back to pread with its one warning. The daemon stops
cleanly on SIGTERM (podman stop).

The root filesystem and the image are cached (WARMSTART_IMAGE_CACHE,
default /var/cache/warmstart-image, and podman's storage) under a key of
the binaries, the package list and the build script, so only the first
run builds (about 90 s, Debian's mirror needed); older ones are removed.
Skips only where podman is missing.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest

RUNFILES = os.environ["WARMSTART_RUNFILES"]
sys.path.insert(0, os.path.join(RUNFILES, "tests"))
import harness  # noqa: E402

IMAGE_DIR = os.path.join(RUNFILES, "deploy/image")
PACKAGES = os.path.join(IMAGE_DIR, "runtime-packages.txt")
BUILD = os.path.join(IMAGE_DIR, "build-rootfs.sh")
PROFILE = os.path.join(RUNFILES, "deploy/seccomp/warmstartd.json")
CACHE = os.environ.get("WARMSTART_IMAGE_CACHE", "/var/cache/warmstart-image")
PODMAN = shutil.which("podman")
# What works on these machines (no crun: rlimits and hybrid cgroups).
PODMAN_GLOBAL = ["--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs"]
RUN_FLAGS = ["--network=none", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=1024:1024"]
FALLBACK_WARNING = "io_uring is unavailable"
needs_podman = pytest.mark.skipif(
    PODMAN is None, reason="podman is not installed (Debian's podman, runc, "
    "mmdebstrap and uidmap; tools/lib/setup.sh installs them)")


def podman(*args, check=True, timeout=300):
    result = subprocess.run([PODMAN, *PODMAN_GLOBAL, *args],
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def listed_packages():
    with open(PACKAGES) as f:
        return {line.strip() for line in f
                if line.strip() and not line.startswith("#")}


def linked_packages(binaries):
    """The Debian packages of every shared library the binaries load."""
    libraries = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            if "=>" in line and "/" in line.split("=>")[1]:
                libraries.add(line.split("=>")[1].split()[0])
    packages = set()
    for library in libraries:
        found = None
        for path in (os.path.realpath(library), library):
            result = subprocess.run(["dpkg", "-S", path],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                found = result.stdout.split(":")[0]
                break
        assert found, f"no Debian package holds {library}"
        packages.add(found)
    return packages


def test_runtime_packages_are_what_the_binaries_load():
    assert listed_packages() == linked_packages([harness.DAEMON,
                                                 harness.CTL])


def cache_key():
    digest = hashlib.sha256()
    for path in [PACKAGES, BUILD, harness.DAEMON, harness.CTL]:
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def image():
    key = cache_key()
    name = f"localhost/warmstartd-test:{key}"
    if podman("image", "exists", name, check=False).returncode != 0:
        os.makedirs(CACHE, exist_ok=True)
        tar = os.path.join(CACHE, f"rootfs-{key}.tar")
        if not os.path.exists(tar):
            partial = tar + ".partial"
            result = subprocess.run([BUILD, partial, harness.DAEMON,
                                     harness.CTL], capture_output=True,
                                    text=True, timeout=1200)
            assert result.returncode == 0, result.stdout + result.stderr
            os.rename(partial, tar)
        podman("import", "--change", "USER=10001:10001",
               "--change", 'ENTRYPOINT=["/usr/local/bin/warmstartd"]',
               tar, name)
    # Older builds go: one cached root filesystem and image at a time.
    for entry in os.listdir(CACHE) if os.path.isdir(CACHE) else []:
        if entry.startswith("rootfs-") and key not in entry:
            os.remove(os.path.join(CACHE, entry))
    tags = podman("images", "--format", "{{.Repository}}:{{.Tag}}",
                  "localhost/warmstartd-test").stdout.split()
    for tag in tags:
        if tag != name:
            podman("rmi", "--force", tag, check=False)
    return name


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="wsimg-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Container:
    """A detached warmstartd container serving WORKDIR/run (the socket
    directory, owned by 10001) from WORKDIR/models, mounted read-only."""

    def __init__(self, image, workdir, seccomp):
        self.name = "wsimg-" + uuid.uuid4().hex[:12]
        self.run_dir = os.path.join(workdir, "run")
        os.mkdir(self.run_dir)
        os.chown(self.run_dir, 10001, 10001)
        os.chmod(self.run_dir, 0o750)
        self.socket = os.path.join(self.run_dir, "warmstart.sock")
        models = os.path.join(workdir, "models")
        security = ["--security-opt", f"seccomp={seccomp}"] if seccomp else []
        podman("run", "-d", "--name", self.name, *RUN_FLAGS, *security,
               "-v", f"{self.run_dir}:/run/warmstart",
               "-v", f"{models}:/models:ro", image,
               "--socket", "/run/warmstart/warmstart.sock",
               "--model_root", "/models", "--backend", "host",
               "--preload", f"tiny=/models/{os.path.basename(harness.GGUF)}",
               "--preload", "shards=/models/shards.safetensors")

    def wait_ready(self):
        ready = harness.ctl("--socket", self.socket, "wait-ready",
                            "--timeout", "60", env=harness.NATIVE_ENV)
        assert ready.returncode == 0, ready.stderr + self.logs()

    def logs(self):
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def stop(self):
        """SIGTERM (podman stop); the daemon's exit status."""
        podman("stop", "--time", "40", self.name)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}",
                          self.name).stdout.strip())

    def remove(self):
        podman("rm", "--force", self.name, check=False)


def make_models(workdir):
    models = os.path.join(workdir, "models")
    harness.make_model_root(models, [harness.GGUF])
    path = os.path.join(models, "shards.safetensors")
    harness.write_safetensors(path, tensors=4, tensor_bytes=1 << 20, seed=7)
    for entry in os.listdir(models):
        os.chmod(os.path.join(models, entry), 0o644)
    return path


def safetensors_hashes(path):
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = f.read()
    return {name: hashlib.sha256(
        data[spec["data_offsets"][0]:spec["data_offsets"][1]]).hexdigest()
        for name, spec in header.items() if name != "__metadata__"}


def map_and_check(container, model, expected):
    client = subprocess.Popen(
        [harness.CLIENT, "--socket", container.socket, "--model", model],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=harness.NATIVE_ENV)
    got = harness.event(client)
    assert got["event"] == "acquired", got
    assert got["sha256"] == expected
    assert client.wait(30) == 0


@needs_podman
def test_image_does_the_demos_job(image, workdir):
    shards = make_models(workdir)
    container = Container(image, workdir, PROFILE)
    try:
        container.wait_ready()
        map_and_check(container, "tiny", harness.expected_hashes(harness.GGUF))
        map_and_check(container, "shards", safetensors_hashes(shards))

        # A worker container: another user, in the daemon's group, with the
        # socket directory read-only.
        worker = podman("run", "--rm", *RUN_FLAGS, "--user", "10002:10002",
                        "--group-add", "10001",
                        "-v", f"{container.run_dir}:/run/warmstart:ro",
                        "--entrypoint", "/usr/local/bin/warmstartctl", image,
                        "--socket", "/run/warmstart/warmstart.sock", "ls",
                        "--json", check=False)
        assert worker.returncode == 0, worker.stderr
        listed = {m["name"]: m["state"]
                  for m in json.loads(worker.stdout)["models"]}
        assert listed == {"tiny": "ready", "shards": "ready"}
        # Outside the group: refused by the socket's mode.
        outsider = podman("run", "--rm", *RUN_FLAGS, "--user", "10002:10002",
                          "-v", f"{container.run_dir}:/run/warmstart:ro",
                          "--entrypoint", "/usr/local/bin/warmstartctl",
                          image, "--socket", "/run/warmstart/warmstart.sock",
                          "ls", check=False)
        assert outsider.returncode == 3, outsider.stdout + outsider.stderr

        # The Localhost profile leaves io_uring on.
        assert FALLBACK_WARNING not in container.logs()
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()
    size = int(podman("image", "inspect", "--format", "{{.Size}}",
                      image).stdout.strip())
    print(f"image {image}: {size} bytes ({size / 1e6:.1f} MB)")
    assert size < 120_000_000


@needs_podman
def test_podman_default_seccomp_falls_back_to_pread(image, workdir):
    make_models(workdir)
    container = Container(image, workdir, seccomp=None)
    try:
        container.wait_ready()
        map_and_check(container, "tiny", harness.expected_hashes(harness.GGUF))
        assert container.logs().count(FALLBACK_WARNING) == 1, container.logs()
        assert container.stop() == 0
    finally:
        container.remove()
