"""The real warmstartd with real client processes over its unix socket:
loading, leases, unloads, refusals, crashes and restarts, leaks.

Binaries come from the test's runfiles ($WARMSTART_RUNFILES); every daemon
runs with the host backend on sockets and model roots under /tmp.
"""
import os
import shutil
import signal
import socket as socket_module
import time
import urllib.request

import pytest

from harness import (FIXTURES, GGUF, SAFETENSORS, TENSORIZER, Daemon,
                     event, expected_hashes, in_root, wait_for,
                     write_safetensors)

# Copied into each test's model root (tests/conftest.py).
MODEL_ROOT_FIXTURES = (GGUF, SAFETENSORS, TENSORIZER)


@pytest.mark.parametrize("fixture", [GGUF, SAFETENSORS, TENSORIZER])
def test_load_acquire_verify_release_unload(daemon, root, fixture):
    name = "m-" + os.path.basename(fixture).replace(".", "-")
    loaded = daemon.ctl("load", name, in_root(root, fixture))
    assert loaded.returncode == 0, loaded.stderr
    status = daemon.status(name)
    assert status["state"] == "ready"
    assert status["bytes_loaded"] == status["bytes_total"]
    assert status["leases"] == 0

    client = daemon.client("--model", name)
    got = event(client)
    assert got["event"] == "acquired", got
    assert got["sha256"] == expected_hashes(fixture)
    assert client.wait(30) == 0
    assert daemon.status(name)["leases"] == 0

    listed = daemon.ctl("ls", "--json")
    assert listed.returncode == 0
    assert name in listed.stdout
    assert daemon.ctl("unload", name).returncode == 0
    gone = daemon.ctl("status", name)
    assert gone.returncode == 4
    assert "no model named" in gone.stderr


def test_load_reports_progress_until_ready(daemon, root):
    path = os.path.join(root, "big.safetensors")
    write_safetensors(path, 64, 1 << 20)
    loaded = daemon.ctl("load", "big", path)
    assert loaded.returncode == 0, loaded.stderr
    assert "big ready" in loaded.stdout + loaded.stderr
    status = daemon.status("big")
    assert status["bytes_total"] == 64 << 20
    assert status["bytes_loaded"] == status["bytes_total"]


def test_fifty_clients_at_once_cause_one_load(daemon, root):
    path = os.path.join(root, "shared.safetensors")
    write_safetensors(path, 16, 1 << 20, seed=7)
    clients = [daemon.client("--model", "shared", "--load", path)
               for _ in range(50)]
    hashes = []
    for client in clients:
        got = event(client, timeout=120)
        assert got["event"] == "acquired", got
        hashes.append(got["sha256"])
        assert client.wait(60) == 0
    assert all(h == hashes[0] for h in hashes)
    assert len(hashes[0]) == 16
    assert daemon.logs().count("loading model shared from") == 1


def test_killed_client_loses_its_lease_within_a_second(daemon, root):
    assert daemon.ctl("load", "m", in_root(root, GGUF)).returncode == 0
    client = daemon.client("--model", "m", "--hold")
    assert event(client)["event"] == "acquired"
    assert daemon.status("m")["leases"] == 1
    client.kill()
    killed_at = time.monotonic()
    client.wait()
    assert wait_for(lambda: daemon.status("m")["leases"] == 0, 5)
    assert time.monotonic() - killed_at < 1.0


def test_forced_unload_frees_only_after_the_last_release(daemon, root):
    assert daemon.ctl("load", "m", in_root(root, SAFETENSORS)).returncode == 0
    client = daemon.client("--model", "m", "--hold")
    acquired = event(client)
    refused = daemon.ctl("unload", "m")
    assert refused.returncode == 5
    assert "lease" in refused.stderr
    assert daemon.ctl("unload", "m", "--force").returncode == 0
    assert daemon.status("m")["state"] == "unloading"
    # New leases are refused; the holder still reads the right bytes.
    late = daemon.client("--model", "m")
    assert event(late)["event"] == "error"
    late.wait(30)
    client.send_signal(signal.SIGUSR1)
    assert event(client)["sha256"] == acquired["sha256"]
    client.send_signal(signal.SIGUSR2)
    assert event(client)["event"] == "released"
    assert wait_for(lambda: daemon.status("m") is None, 5)
    client.send_signal(signal.SIGTERM)
    assert client.wait(10) == 0


def test_paths_outside_the_roots_are_refused(daemon, root, workdir):
    outside = os.path.join(workdir, "outside")
    os.mkdir(outside)
    shutil.copy(os.path.join(FIXTURES, GGUF), outside)
    escaped = os.path.join(outside, os.path.basename(GGUF))
    os.symlink(escaped, os.path.join(root, "link.gguf"))
    os.symlink("../outside", os.path.join(root, "dir-link"))
    for path in (escaped, os.path.join(root, "link.gguf"),
                 os.path.join(root, "dir-link", os.path.basename(GGUF)),
                 os.path.join(root, "..", "outside",
                              os.path.basename(GGUF))):
        result = daemon.ctl("load", "x", path)
        assert result.returncode == 5, (path, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "root" in result.stderr
    assert "refused to load model x" in daemon.logs()
    assert daemon.status("x") is None


def test_same_name_from_another_path_is_refused(daemon, root):
    assert daemon.ctl("load", "m", in_root(root, GGUF)).returncode == 0
    again = daemon.ctl("load", "m", in_root(root, GGUF))
    assert again.returncode == 0
    other = daemon.ctl("load", "m", in_root(root, SAFETENSORS))
    assert other.returncode == 5
    assert "already loaded from" in other.stderr


def test_malformed_requests_get_clear_errors(daemon, root):
    missing = daemon.client("--model", "absent")
    got = event(missing)
    assert got["event"] == "error" and got["code"] == "NOT_FOUND"
    assert "no model named absent" in got["message"]
    for name in ("", "x" * 100000, "a/b", "bad name"):
        result = daemon.ctl("load", name, in_root(root, GGUF))
        assert result.returncode == 2, result.stderr[:200]
        assert "model name" in result.stderr
        assert len(result.stderr) < 400
    huge_path = "/" + "p" * 100000
    result = daemon.ctl("load", "m", huge_path)
    assert result.returncode == 2
    assert "bytes" in result.stderr
    assert daemon.ctl("status", "absent").returncode == 4
    assert daemon.ctl("unload", "absent").returncode == 4
    bad_file = os.path.join(root, "bad.safetensors")
    with open(bad_file, "wb") as out:
        out.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    result = daemon.ctl("load", "bad", bad_file)
    assert result.returncode == 2
    assert "bad.safetensors" in result.stderr


def test_client_cannot_write_shared_weights(daemon, root):
    assert daemon.ctl("load", "m", in_root(root, GGUF)).returncode == 0
    client = daemon.client("--model", "m", "--try-write")
    assert event(client)["event"] == "acquired"
    assert event(client)["event"] == "writing"
    assert client.wait(30) == -signal.SIGSEGV
    # The daemon's copy is intact.
    check = daemon.client("--model", "m")
    assert event(check)["sha256"] == expected_hashes(GGUF)
    check.wait(30)


def daemon_fds(daemon):
    return len(os.listdir(f"/proc/{daemon.process.pid}/fd"))


def daemon_rss_kib(daemon):
    with open(f"/proc/{daemon.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_thousand_acquire_release_cycles_leak_nothing(daemon, root):
    assert daemon.ctl("load", "m", in_root(root, GGUF)).returncode == 0
    warm = daemon.client("--model", "m", "--cycles", "20")
    assert event(warm)["event"] == "cycles"
    warm.wait(30)
    fds_before = daemon_fds(daemon)
    rss_before = daemon_rss_kib(daemon)
    client = daemon.client("--model", "m", "--cycles", "1000")
    got = event(client, timeout=300)
    assert got == {"event": "cycles", "n": 1000,
                   "fds_before": got["fds_before"],
                   "fds_after": got["fds_before"]}
    assert client.wait(30) == 0
    assert wait_for(lambda: daemon_fds(daemon) == fds_before, 5), (
        fds_before, daemon_fds(daemon))
    # Counted: 1000 leases granted and released, none left.
    assert daemon.status("m")["leases"] == 0
    # Allocator noise only: well under a kilobyte per cycle.
    assert daemon_rss_kib(daemon) - rss_before < 1024


def test_restarted_daemon_reloads_preloads_and_clients_reconnect(workdir,
                                                                 root):
    path = in_root(root, GGUF)
    d = Daemon(workdir, "--model_root", root, "--preload", f"tiny={path}")
    try:
        assert d.status("tiny")["state"] == "ready"
        holder = d.client("--model", "tiny", "--hold")
        assert event(holder)["event"] == "acquired"
        d.stop(signal.SIGKILL)
        down = d.ctl("ls")
        assert down.returncode == 3
        assert "daemon unavailable" in down.stderr
        # Host memory outlives the daemon in the client that maps it.
        holder.send_signal(signal.SIGUSR1)
        assert event(holder)["sha256"] == expected_hashes(GGUF)
        d.start()
        assert d.status("tiny")["state"] == "ready"
        again = d.client("--model", "tiny")
        assert event(again)["sha256"] == expected_hashes(GGUF)
        again.wait(30)
        holder.send_signal(signal.SIGTERM)
        holder.wait(10)
    finally:
        d.stop(signal.SIGKILL)


def write_config(path, root, socket, preloads, grace=30, metrics=""):
    lines = [f'listen {{ unix_socket: "{socket}" '
             f'metrics_address: "{metrics}" }}',
             f'model_roots: "{root}"',
             f"shutdown_grace_seconds: {grace}"]
    for name, file, optional in preloads:
        lines.append(f'preloads {{ name: "{name}" path: "{file}" '
                     f'optional: {"true" if optional else "false"} }}')
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


def test_required_preload_failure_is_reported_at_once(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    missing = os.path.join(root, "missing.gguf")
    write_config(config, root, os.path.join(workdir, "d.sock"),
                 [("gone", missing, False)])
    d = Daemon(workdir, "--config", config, wait=False)
    try:
        started = time.monotonic()
        result = d.ctl("wait-ready", "--timeout", "30")
        assert result.returncode == 5, result.stderr
        assert "missing.gguf" in result.stderr
        assert time.monotonic() - started < 10
    finally:
        d.stop(signal.SIGKILL)


def test_optional_preload_failure_still_becomes_ready(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    write_config(config, root, os.path.join(workdir, "d.sock"),
                 [("gone", os.path.join(root, "missing.gguf"), True),
                  ("tiny", in_root(root, GGUF), False)])
    d = Daemon(workdir, "--config", config)
    try:
        assert d.status("tiny")["state"] == "ready"
        assert d.status("gone") is None
        assert "optional" in d.logs()
    finally:
        d.stop(signal.SIGKILL)


def test_sighup_rereads_the_preload_list(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    socket = os.path.join(workdir, "d.sock")
    write_config(config, root, socket, [("tiny", in_root(root, GGUF), False)])
    d = Daemon(workdir, "--config", config)
    try:
        assert d.status("st") is None
        write_config(config, root, socket,
                     [("tiny", in_root(root, GGUF), False),
                      ("st", in_root(root, SAFETENSORS), False)])
        d.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: (d.status("st") or {}).get("state") ==
                        "ready", 10), d.logs()
        assert d.ctl("wait-ready", "--timeout", "10").returncode == 0
    finally:
        d.stop(signal.SIGKILL)


def test_sigterm_waits_for_leases_then_exits_cleanly(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    write_config(config, root, os.path.join(workdir, "d.sock"),
                 [("tiny", in_root(root, GGUF), False)], grace=20)
    d = Daemon(workdir, "--config", config)
    holder = d.client("--model", "tiny", "--hold")
    assert event(holder)["event"] == "acquired"
    d.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert d.process.poll() is None  # Waiting for the lease.
    assert d.ctl("wait-ready", "--timeout", "1").returncode != 0
    holder.send_signal(signal.SIGUSR2)
    assert event(holder)["event"] == "released"
    assert d.process.wait(10) == 0
    assert not os.path.exists(d.socket)
    holder.send_signal(signal.SIGTERM)
    holder.wait(10)
    d.stop()


def test_sigterm_gives_up_after_the_grace_period(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    write_config(config, root, os.path.join(workdir, "d.sock"),
                 [("tiny", in_root(root, GGUF), False)], grace=1)
    d = Daemon(workdir, "--config", config)
    holder = d.client("--model", "tiny", "--hold")
    assert event(holder)["event"] == "acquired"
    started = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(15) == 0
    assert 0.9 < time.monotonic() - started < 10
    assert "still held after 1 s" in d.logs()
    # The client's mapping survives the daemon (host memfd).
    holder.send_signal(signal.SIGUSR1)
    assert event(holder)["sha256"] == expected_hashes(GGUF)
    holder.send_signal(signal.SIGTERM)
    holder.wait(10)
    d.stop()


def free_port():
    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_endpoint_counts_loads_leases_and_refusals(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    address = f"127.0.0.1:{free_port()}"
    write_config(config, root, os.path.join(workdir, "d.sock"),
                 [("tiny", in_root(root, GGUF), False)], metrics=address)
    d = Daemon(workdir, "--config", config)
    try:
        holder = d.client("--model", "tiny", "--hold")
        assert event(holder)["event"] == "acquired"
        assert d.ctl("load", "x", "/etc/passwd").returncode == 5
        with urllib.request.urlopen(f"http://{address}/metrics",
                                    timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.split()
                values[name] = float(value)
        assert values["warmstart_loads_total"] == 1
        assert values["warmstart_models"] == 1
        assert values["warmstart_leases"] == 1
        assert values["warmstart_sessions"] == 1
        assert values["warmstart_refused_paths_total"] == 1
        assert values["warmstart_resident_bytes"] > 0
        holder.send_signal(signal.SIGTERM)
        holder.wait(10)
    finally:
        d.stop(signal.SIGKILL)
