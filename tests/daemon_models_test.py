"""The real warmstartd with real client processes over its unix socket:
loading, leases, unloads, refusals, crashes and restarts, leaks.

Binaries come from the test's runfiles ($WARMSTART_RUNFILES); every daemon
runs with the host backend on sockets and model roots under /tmp.
"""
import datetime
import json
import os
import shutil
import signal
import socket as socket_module
import subprocess
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


def json_log(daemon):
    """The entries ({"ts", "level", "component", "msg"}) of a daemon started
    with --log_format json; "ts" is the wall-clock time (seconds since the
    epoch, to the microsecond, as time.time()) at which it logged."""
    return [json.loads(line) for line in daemon.logs().splitlines()
            if line.startswith("{")]


def test_killed_client_loses_its_lease_within_a_second(workdir, root):
    # The release is timed by the daemon's own log line for it, not by
    # polling with warmstartctl: starting a warmstartctl process per poll
    # takes hundreds of ms on a loaded machine, which would time the
    # polling instead of the daemon.
    d = Daemon(workdir, "--model_root", root, "--log_format", "json")
    client = None
    try:
        assert d.ctl("load", "m", in_root(root, GGUF)).returncode == 0
        client = d.client("--model", "m", "--hold")
        assert event(client)["event"] == "acquired"
        assert d.status("m")["leases"] == 1
        client.kill()
        killed_at = time.time()
        client.wait(30)
        released = []

        def logged_release():
            released[:] = [entry for entry in json_log(d)
                           if "closed: released its 1 lease(s)" in
                           entry["msg"]]
            return bool(released)

        assert wait_for(logged_release, 30), d.logs()
        assert d.status("m")["leases"] == 0
        assert len(released) == 1, released
        assert released[0]["ts"] - killed_at < 1.0, (killed_at, released)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        d.stop(signal.SIGKILL)


def test_forced_unload_frees_only_after_the_last_release(daemon, root):
    assert daemon.ctl("load", "m", in_root(root, SAFETENSORS)).returncode == 0
    client = daemon.client("--model", "m", "--hold")
    acquired = event(client)
    refused = daemon.ctl("unload", "m")
    assert refused.returncode == 5
    assert "lease" in refused.stderr
    assert daemon.ctl("unload", "m", "--force").returncode == 0
    # The name is free at once; the memory stays with the lease.
    assert daemon.status("m") is None
    assert resident_bytes(daemon) > 0
    # New leases are refused; the holder still reads the right bytes.
    late = daemon.client("--model", "m")
    assert event(late)["event"] == "error"
    late.wait(30)
    client.send_signal(signal.SIGUSR1)
    assert event(client)["sha256"] == acquired["sha256"]
    client.send_signal(signal.SIGUSR2)
    assert event(client)["event"] == "released"
    assert wait_for(lambda: resident_bytes(daemon) == 0, 30)
    client.send_signal(signal.SIGTERM)
    assert client.wait(30) == 0


def resident_bytes(daemon):
    """The daemon's resident bytes on its one device, from stats."""
    stats = daemon.ctl("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    return json.loads(stats.stdout)["devices"][0]["resident_bytes"]


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


def settled_fds(daemon, quiet=0.5, timeout=30):
    """The daemon's number of open descriptors once it has stayed the same
    for `quiet` seconds (a client that just exited may still have
    descriptors the daemon has yet to close); fails if it never settles
    within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    count = daemon_fds(daemon)
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, (
            f"the daemon's descriptor count still changes after {timeout} s")
        time.sleep(0.02)
        now = daemon_fds(daemon)
        if now != count:
            count, since = now, time.monotonic()
    return count


def test_thousand_acquire_release_cycles_leak_nothing(daemon, root):
    assert daemon.ctl("load", "m", in_root(root, GGUF)).returncode == 0
    warm = daemon.client("--model", "m", "--cycles", "20")
    assert event(warm)["event"] == "cycles"
    assert warm.wait(30) == 0
    assert wait_for(lambda: daemon.status("m")["leases"] == 0, 30)
    # The baseline once the warm-up client's (and warmstartctl's)
    # descriptors are closed: a count taken while the daemon still closes
    # them would be too high for the count after the cycles to come back
    # to.
    fds_before = settled_fds(daemon)
    rss_before = daemon_rss_kib(daemon)
    client = daemon.client("--model", "m", "--cycles", "1000")
    got = event(client, timeout=300)
    assert got == {"event": "cycles", "n": 1000,
                   "fds_before": got["fds_before"],
                   "fds_after": got["fds_before"]}
    assert client.wait(30) == 0
    # Back to the baseline once the daemon has closed the client's
    # session; a leak of even one descriptor per cycle would leave ~1000.
    assert wait_for(lambda: daemon_fds(daemon) <= fds_before, 30), (
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
        holder.wait(30)
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
        # At once: wait-ready says why as soon as the daemon has failed
        # (exit status 5, not its timeout's), well before its timeout of
        # 120 s, even counting the daemon's start on a loaded machine.
        started = time.monotonic()
        result = d.ctl("wait-ready", "--timeout", "120", timeout=180)
        assert result.returncode == 5, result.stderr
        assert "missing.gguf" in result.stderr
        assert "failed to become ready" in result.stderr
        assert time.monotonic() - started < 30
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
                        "ready", 30), d.logs()
        assert d.ctl("wait-ready", "--timeout", "30").returncode == 0
    finally:
        d.stop(signal.SIGKILL)


def test_sigterm_waits_for_leases_then_exits_cleanly(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    # A grace period far longer than the waits below: the daemon exits
    # because the lease was released, never because the grace ran out.
    write_config(config, root, os.path.join(workdir, "d.sock"),
                 [("tiny", in_root(root, GGUF), False)], grace=120)
    d = Daemon(workdir, "--config", config)
    holder = d.client("--model", "tiny", "--hold")
    try:
        assert event(holder)["event"] == "acquired"
        d.process.send_signal(signal.SIGTERM)
        # Shutting down (no longer ready, no new leases) and waiting for
        # the lease: the daemon logs this once it has stopped serving.
        assert wait_for(lambda: "waiting up to 120 s for 1 lease(s)" in
                        d.logs() or d.process.poll() is not None,
                        30), d.logs()
        assert d.process.poll() is None, d.logs()  # Waiting for the lease.
        assert d.ctl("wait-ready", "--timeout", "1").returncode != 0
        holder.send_signal(signal.SIGUSR2)
        assert event(holder)["event"] == "released"
        assert d.process.wait(30) == 0
        assert "still held after" not in d.logs()
        assert not os.path.exists(d.socket)
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGTERM)
            try:
                holder.wait(30)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
        d.stop()


def logged_at(daemon, text):
    """When the daemon (text log format) logged its one line holding
    `text`: a datetime of its local time, to the millisecond."""
    lines = [line for line in daemon.logs().splitlines() if text in line]
    assert len(lines) == 1, (text, daemon.logs())
    return datetime.datetime.strptime(lines[0].split(" ", 1)[0],
                                      "%Y-%m-%dT%H:%M:%S.%f")


def test_sigterm_gives_up_after_the_grace_period(workdir, root):
    config = os.path.join(workdir, "c.textproto")
    write_config(config, root, os.path.join(workdir, "d.sock"),
                 [("tiny", in_root(root, GGUF), False)], grace=1)
    d = Daemon(workdir, "--config", config)
    holder = d.client("--model", "tiny", "--hold")
    assert event(holder)["event"] == "acquired"
    started = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    # The holder never releases: without giving up after the 1 s grace
    # (the default is 30 s) the daemon would not exit in time.
    assert d.process.wait(30) == 0
    assert 0.9 < time.monotonic() - started < 30
    # The grace period itself, timed by the daemon's log (not counting its
    # start of the shutdown and its exit).
    waited = (logged_at(d, "still held after 1 s") -
              logged_at(d, "waiting up to 1 s for 1 lease(s)"))
    assert 0.9 < waited.total_seconds() < 10, d.logs()
    # The client's mapping survives the daemon (host memfd).
    holder.send_signal(signal.SIGUSR1)
    assert event(holder)["sha256"] == expected_hashes(GGUF)
    holder.send_signal(signal.SIGTERM)
    holder.wait(30)
    d.stop()


def free_port():
    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_with_metrics(workdir, root, preloads, attempts=5):
    """A ready daemon (config WORKDIR/c.textproto) with its metrics
    endpoint on a free port of 127.0.0.1, and that HOST:PORT. Another
    process may take the probed port before the daemon binds it: then the
    daemon exits saying so, and this starts it again on another port."""
    config = os.path.join(workdir, "c.textproto")
    log_path = os.path.join(workdir, "daemon.log")
    for _ in range(attempts):
        address = f"127.0.0.1:{free_port()}"
        write_config(config, root, os.path.join(workdir, "d.sock"),
                     preloads, metrics=address)
        logged = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        d = Daemon(workdir, "--config", config, wait=False)

        def new_logs():
            with open(log_path, "rb") as log:
                log.seek(logged)
                return log.read().decode(errors="replace")

        # The metrics endpoint is bound before the daemon says it serves.
        wait_for(lambda: d.process.poll() is not None or
                 " serving on " in new_logs(), 60)
        if (d.process.poll() is not None and
                "address already in use" in new_logs()):
            d.stop()
            continue
        ready = d.ctl("wait-ready", "--timeout", "30")
        if ready.returncode != 0:
            d.stop(signal.SIGKILL)
            raise AssertionError(ready.stderr + d.logs())
        return d, address
    raise AssertionError(f"no free port in {attempts} attempts: " +
                         open(log_path).read())


def test_metrics_endpoint_counts_loads_leases_and_refusals(workdir, root):
    d, address = start_with_metrics(
        workdir, root, [("tiny", in_root(root, GGUF), False)])
    try:
        holder = d.client("--model", "tiny", "--hold")
        assert event(holder)["event"] == "acquired"
        assert d.ctl("load", "x", "/etc/passwd").returncode == 5
        with urllib.request.urlopen(f"http://{address}/metrics",
                                    timeout=30) as response:
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
        holder.wait(30)
    finally:
        d.stop(signal.SIGKILL)
