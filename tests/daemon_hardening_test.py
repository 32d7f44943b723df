"""The real warmstartd against what a hostile local user or a careless
operator puts in its way (issue 14): FIFOs under a model root, huge tensor
tables, descriptor and session floods, memory limits.

Binaries come from the test's runfiles ($WARMSTART_RUNFILES); every daemon
runs with the host backend on sockets and model roots under /tmp.
"""
import json
import os
import resource
import shutil
import signal
import socket as socket_module
import subprocess
import sys
import time

import pytest

import harness
from harness import (SAFETENSORS, Daemon, event, in_root, wait_for,
                     write_safetensors)

WORKDIR_PREFIX = "wh-"
MODEL_ROOT_FIXTURES = (SAFETENSORS,)


def test_a_fifo_under_a_root_is_refused_and_shutdown_completes(daemon, root):
    # Opening a FIFO for reading blocks until a writer comes: before the
    # fix each LoadModel of one hung a handler thread forever, and SIGTERM
    # never completed. The subprocess timeouts turn a hang into a failure.
    fifo = os.path.join(root, "model.safetensors")
    os.mkfifo(fifo)
    for _ in range(3):
        loaded = daemon.ctl("load", "fifo", fifo, timeout=60)
        assert loaded.returncode == 2, loaded.stderr
        assert f"{fifo}: not a regular file (a FIFO)" in loaded.stderr
    assert daemon.status("fifo") is None
    # A directory holding the FIFO among real weights loads the real ones.
    sub = os.path.join(root, "dir")
    os.mkdir(sub)
    os.mkfifo(os.path.join(sub, "a.safetensors"))
    os.link(in_root(root, SAFETENSORS), os.path.join(sub, "b.safetensors"))
    loaded = daemon.ctl("load", "dir", sub, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    # The daemon still serves, and stops when told.
    assert daemon.ctl("ls").returncode == 0
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    assert "stopped" in daemon.logs()


def write_many_tensors(path, count):
    """A safetensors file of `count` one-byte U8 tensors named as a
    mixture-of-experts checkpoint names its experts (DeepSeek-V3 has 93,696
    tensors)."""
    header = {}
    for i in range(count):
        layer, rest = divmod(i, 2048)
        expert, proj = divmod(rest, 8)
        header[f"model.layers.{layer}.mlp.experts.{expert}.proj{proj}.weight"] = {
            "dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(len(text).to_bytes(8, "little"))
        out.write(text)
        out.write(bytes(i % 251 for i in range(count)))


def rss_anon_kib(pid):
    """The anonymous resident memory of process `pid` in KiB (the arena is
    shared memory and not counted)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_a_model_with_120k_tensors_loads_and_is_acquired(daemon, root):
    # 120,000 tensors make a lease reply of about 8 MB, over gRPC's default
    # 4 MB limit on what a client receives: before the fix the model loaded
    # but every acquire failed with RESOURCE_EXHAUSTED.
    count = 120_000
    path = os.path.join(root, "moe.safetensors")
    write_many_tensors(path, count)
    # The staging pool is resident only while loads use it (and for
    # staging_release_seconds after): a first small load makes it so, so that
    # the measurement below counts the tensors, not the pool.
    small = os.path.join(root, "small.safetensors")
    write_many_tensors(small, 1)
    assert daemon.ctl("load", "small", small).returncode == 0
    before = rss_anon_kib(daemon.process.pid)
    loaded = daemon.ctl("load", "moe", path, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    status = daemon.status("moe")
    assert status["state"] == "ready"
    client = daemon.client("--model", "moe", "--cycles", "2")
    got = event(client, timeout=300)
    assert got["event"] == "cycles", got
    assert got["n"] == 2
    assert client.wait(60) == 0
    # Through the C++ client as warmstartctl and the Python package use it.
    described = daemon.ctl("status", "moe", "--json")
    assert described.returncode == 0, described.stderr
    # What the daemon keeps per tensor (the table, the lease's copy, the
    # allocator's slack), measured after the load and two leases: bounded.
    per_tensor = (rss_anon_kib(daemon.process.pid) - before) * 1024 / count
    print(f"daemon anonymous memory per tensor: {per_tensor:.0f} bytes")
    assert per_tensor < 1536, per_tensor


def open_sessions(handle_socket, count):
    """Opens up to `count` sessions on `handle_socket` from this process;
    returns (the sockets that got a hello, the first refusal's reason or
    None). The first message is a HandleMessage: field 1 is a hello,
    field 3 a refusal (whose field 1 is the reason)."""
    held = []
    for _ in range(count):
        s = socket_module.socket(socket_module.AF_UNIX,
                                 socket_module.SOCK_SEQPACKET)
        s.settimeout(60)
        s.connect(handle_socket)
        first = s.recv(4096)
        if first[:1] == b"\x1a":  # Field 3 (refused), length-delimited.
            body = first[2:]
            reason = body[2:].decode(errors="replace")
            s.close()
            return held, reason
        assert first[:1] == b"\x0a", first  # Field 1, a hello.
        held.append(s)
    return held, None


@pytest.fixture
def limited_daemon(workdir, root):
    """A daemon whose descriptor limit is 1024, soft and hard: it cannot
    raise it, so its caps derive from 1024."""
    d = Daemon(workdir, "--model_root", root,
               prefix=["prlimit", "--nofile=1024:1024", "--"])
    yield d
    d.stop(signal.SIGKILL)


def test_one_process_cannot_take_every_session(limited_daemon, root):
    # Before the fix one process opening ~1,100 sessions put the daemon at
    # its descriptor limit (1024): every other client was locked out, told
    # the daemon restarted. Now one process gets at most 48 (an eighth of
    # the 384 sessions a limit of 1024 allows) and is told which limit.
    daemon = limited_daemon
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    held, reason = open_sessions(daemon.socket + ".handles", 1100)
    try:
        assert reason is not None, f"{len(held)} sessions and no refusal"
        assert "the most one process may hold (48)" in reason, reason
        assert len(held) == 48
        assert "refusing a session from pid" in daemon.logs()
        # Another process still opens a session and acquires.
        loaded = daemon.ctl("load", "m", in_root(root, SAFETENSORS))
        assert loaded.returncode == 0, loaded.stderr
        client = daemon.client("--model", "m", "--cycles", "3")
        got = event(client, timeout=120)
        assert got["event"] == "cycles", got
        assert client.wait(60) == 0
        # Five more processes of this user take 48 each: 288 in all, the
        # most one uid may hold (three quarters of 384). The next client of
        # this uid is refused, through the client library, naming it.
        holders = [subprocess.Popen(
            [sys.executable, "-c", HOLDER, daemon.socket + ".handles"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(5)]
        try:
            for holder in holders:
                assert holder.stdout.readline().strip() == "48"
            client = daemon.client("--model", "m")
            got = event(client, timeout=120)
            assert got["event"] == "error", got
            assert got["code"] == "RESOURCE_EXHAUSTED", got
            assert ("holds 288 sessions, the most one user may hold (288)"
                    in got["message"]), got
            client.wait(60)
        finally:
            for holder in holders:
                holder.stdin.close()
                holder.wait(60)
    finally:
        for s in held:
            s.close()


# A process that opens 48 sessions on argv[1], prints how many it got and
# holds them until its stdin closes.
HOLDER = """
import socket, sys
held = []
for _ in range(48):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(60)
    s.connect(sys.argv[1])
    if s.recv(4096)[:1] != b"\\x0a":
        break
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"""


def test_a_burst_of_grpc_connections_does_not_kill_the_listener(
        limited_daemon):
    # Before the fix ~1,100 connections put the daemon at its descriptor
    # limit; gRPC's accept4 failed with EMFILE and its listener never
    # accepted again: after the burst every new client got "daemon
    # unavailable" while health said SERVING.
    daemon = limited_daemon
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    burst = []
    try:
        for _ in range(1100):
            s = socket_module.socket(socket_module.AF_UNIX,
                                     socket_module.SOCK_STREAM)
            s.connect(daemon.socket)
            burst.append(s)
        # Every connection is accepted (or refused) by the daemon before
        # the burst ends: one more connection after them has been handled
        # once the daemon answers on it or closes it.
        last = socket_module.socket(socket_module.AF_UNIX,
                                    socket_module.SOCK_STREAM)
        last.settimeout(60)
        last.connect(daemon.socket)
        burst.append(last)
        assert wait_for(lambda: "gRPC connection on" in daemon.logs()
                        or "accept" in daemon.logs(), 60)
    finally:
        for s in burst:
            s.close()
    listed = daemon.ctl("ls", timeout=60)
    assert listed.returncode == 0, listed.stderr + daemon.logs()[-2000:]
    # The daemon refused what would eat into its reserve, and said so.
    assert "gRPC connection on" in daemon.logs()
    stats = daemon.ctl("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["metrics"][
        "warmstart_grpc_connections_refused_total"] > 0


def child_memory_cgroup(limit):
    """Creates a memory cgroup below this process's own with `limit` bytes
    (v1's memory controller or v2's, whichever this host has) and returns
    (its cgroup.procs file, a cleanup function); skips the test where the
    cgroup file system is not writable."""
    with open("/proc/self/cgroup") as own:
        lines = own.read().splitlines()
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = "/sys/fs/cgroup/memory" + path
            limit_file = "memory.limit_in_bytes"
            break
    else:
        path = next(l.split(":", 2)[2] for l in lines if l.startswith("0::"))
        base = "/sys/fs/cgroup" + path
        if not os.path.exists(os.path.join(base, "memory.max")):
            base = "/sys/fs/cgroup/unified" + path
        limit_file = "memory.max"
    child = os.path.join(base, f"warmstart-test-{os.getpid()}")
    try:
        os.mkdir(child)
        with open(os.path.join(child, limit_file), "w") as f:
            f.write(str(limit))
    except OSError as error:
        pytest.skip(f"cannot make a memory cgroup under {base}: {error}")

    def cleanup():
        try:
            os.rmdir(child)
        except OSError:
            pass
    return os.path.join(child, "cgroup.procs"), cleanup


def test_a_memory_cgroup_limit_is_an_error_not_an_oom_kill(workdir, root):
    # Before the fix the daemon read only cgroup v2's files at the root of
    # /sys/fs/cgroup: under a v1 limit (this host's layout) or a v2 limit
    # on its own cgroup it saw none, loaded past it and was OOM-killed.
    procs, cleanup = child_memory_cgroup(160 << 20)
    config = os.path.join(workdir, "small.textproto")
    with open(config, "w") as f:
        f.write("staging_bytes: 16777216\nslab_bytes: 4194304\n")
    write_safetensors(os.path.join(root, "a.safetensors"), 64, 1 << 20)
    write_safetensors(os.path.join(root, "b.safetensors"), 96, 1 << 20)
    daemon = Daemon(workdir, "--model_root", root, "--config", config,
                    prefix=["sh", "-c", f'echo $$ > {procs} && exec "$@"',
                            "sh"])
    try:
        loaded = daemon.ctl("load", "a", os.path.join(root, "a.safetensors"))
        assert loaded.returncode == 0, loaded.stderr
        # Leased, `a` cannot be evicted to make room.
        holder = daemon.client("--model", "a", "--hold")
        assert event(holder)["event"] == "acquired"
        loaded = daemon.ctl("load", "b", os.path.join(root, "b.safetensors"))
        assert daemon.process.poll() is None, "the daemon died: " + \
            daemon.logs()[-1500:]
        assert loaded.returncode == 5, loaded.stderr
        assert "bytes are free under the memory cgroup limit" in \
            loaded.stderr, loaded.stderr
        assert daemon.status("a")["state"] == "ready"
        stats = json.loads(daemon.ctl("stats", "--json").stdout)
        assert 0 < stats["devices"][0]["free_bytes"] < 160 << 20
        holder.kill()
        holder.wait()
    finally:
        daemon.stop(signal.SIGKILL)
        cleanup()


def test_control_characters_in_file_names_are_escaped(daemon, root):
    # A file name may hold any byte but '/' and NUL: one with an escape
    # sequence rewrote the terminal of whoever read the log or ran
    # warmstartctl, and a newline forged log lines.
    evil = os.path.join(root, "evil\x1b[2J\ninfo [daemon] forged.safetensors")
    os.link(in_root(root, SAFETENSORS), evil)
    loaded = daemon.ctl("load", "evil", evil)
    assert loaded.returncode == 0, loaded.stderr
    listed = daemon.ctl("ls")
    status = daemon.ctl("status", "evil")
    inspected = daemon.ctl("inspect", evil)
    for output in (listed.stdout, status.stdout, inspected.stdout,
                   inspected.stderr, daemon.logs()):
        assert "\x1b" not in output
        assert "\ninfo [daemon] forged" not in output
    assert "evil\\x1b[2J\\x0ainfo [daemon] forged" in listed.stdout
    assert "evil\\x1b[2J\\x0ainfo [daemon] forged" in daemon.logs()
    # A bad file of that name: the error line is escaped too.
    with open(evil + ".bad.safetensors", "wb") as bad:
        bad.write(b"\x00" * 16)
    refused = daemon.ctl("inspect", evil + ".bad.safetensors")
    assert refused.returncode == 2
    assert "\x1b" not in refused.stderr
    assert refused.stderr.count("\n") == 1


def start_with_authorization(workdir, root, authorization):
    """A daemon whose socket anyone may reach, with `authorization` (the
    config block's fields), and as_user(uid, gid, *args): warmstartctl run
    as that user. The binary is copied where any user can run it (runfiles
    live under /root, which other users cannot enter)."""
    os.chmod(workdir, 0o755)
    os.chmod(root, 0o755)
    config = os.path.join(workdir, "auth.textproto")
    with open(config, "w") as f:
        f.write("listen { socket_mode: 0666 }\n"
                f"authorization {{ {authorization} }}\n")
    ctl_copy = os.path.join(workdir, "warmstartctl")
    shutil.copy(harness.CTL, ctl_copy)
    os.chmod(ctl_copy, 0o755)
    daemon = Daemon(workdir, "--model_root", root, "--config", config)

    def as_user(uid, gid, *args):
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
             ctl_copy, *args, "--socket", daemon.socket],
            capture_output=True, text=True, timeout=120,
            env=harness.NATIVE_ENV)
    return daemon, as_user


def test_only_configured_users_may_load_and_unload(workdir, root):
    # Before there was no authorization model: any local user who could
    # reach the socket could load any file under a root and force-unload
    # others' models. Now authorization { control_uids, control_gids }
    # names who may (root and the daemon's uid always may).
    daemon, as_user = start_with_authorization(
        workdir, root, "control_uids: 4242 control_gids: 4243")
    model = in_root(root, SAFETENSORS)
    try:
        refused = as_user(65534, 65534, "load", "m", model)
        assert refused.returncode == 5, refused.stderr
        assert "uid 65534" in refused.stderr
        assert "may not load models" in refused.stderr
        assert daemon.status("m") is None
        # Listing needs no authority.
        listed = as_user(65534, 65534, "ls")
        assert listed.returncode == 0, listed.stderr
        # A listed uid and a listed group may.
        allowed = as_user(4242, 65534, "load", "m", model)
        assert allowed.returncode == 0, allowed.stderr
        refused = as_user(65534, 65534, "unload", "m")
        assert refused.returncode == 5, refused.stderr
        assert "may not unload models" in refused.stderr
        allowed = as_user(65534, 4243, "unload", "m")
        assert allowed.returncode == 0, allowed.stderr
        # Root may, listed or not.
        assert daemon.ctl("load", "m", model).returncode == 0
    finally:
        daemon.stop(signal.SIGKILL)


def test_a_stopped_holder_cannot_keep_a_model_name(daemon, root):
    # A SIGSTOPped lease holder never releases: before, the model and its
    # name stayed taken forever. `unload --force` frees the name now; the
    # memory goes when the holder's mapping does.
    model = in_root(root, SAFETENSORS)
    assert daemon.ctl("load", "m", model).returncode == 0
    holder = daemon.client("--model", "m", "--hold")
    acquired = event(holder)
    assert acquired["event"] == "acquired"
    holder.send_signal(signal.SIGSTOP)
    try:
        unloaded = daemon.ctl("unload", "m", "--force")
        assert unloaded.returncode == 0, unloaded.stderr
        assert "memory is freed when its 1 leases are released" in \
            unloaded.stdout
        reloaded = daemon.ctl("load", "m", model)
        assert reloaded.returncode == 0, reloaded.stderr
        fresh = daemon.client("--model", "m", "--cycles", "1")
        assert event(fresh)["event"] == "cycles"
        assert fresh.wait(60) == 0
    finally:
        holder.send_signal(signal.SIGCONT)
    # The holder still reads its old mapping, then goes.
    holder.send_signal(signal.SIGUSR1)
    assert event(holder)["sha256"] == acquired["sha256"]
    holder.kill()
    holder.wait(30)


def test_a_path_that_is_not_utf8_gets_a_clear_error(daemon, root):
    # gRPC strings must be UTF-8: before, protobuf refused to serialize the
    # request and warmstartctl printed "warmstartctl: " and nothing else.
    path = os.path.join(root.encode(), b"m\xff.safetensors")
    os.link(in_root(root, SAFETENSORS), path)
    loaded = subprocess.run(
        [harness.CTL, "load", "m", path, "--socket", daemon.socket],
        capture_output=True, timeout=120, env=harness.NATIVE_ENV)
    assert loaded.returncode == 2, loaded.stderr
    assert b"model path" in loaded.stderr
    assert b"is not valid UTF-8" in loaded.stderr
    assert b"m\\xff.safetensors" in loaded.stderr


def test_one_process_cannot_take_every_grpc_connection(workdir, root):
    # Before, gRPC connections had a cap in all but none per peer: one
    # process could hold every connection the daemon accepts and lock
    # everyone else out. Now the acceptor counts each process's and user's
    # open connections (by SO_PEERCRED) and closes the next one, logging
    # which limit it hit and its value.
    config = os.path.join(workdir, "limits.textproto")
    with open(config, "w") as f:
        f.write("client_limits { max_grpc_connections_per_process: 4 }\n")
    daemon = Daemon(workdir, "--model_root", root, "--config", config)
    held = []
    try:
        assert "(4 per process," in daemon.logs()
        for _ in range(4):
            s = socket_module.socket(socket_module.AF_UNIX,
                                     socket_module.SOCK_STREAM)
            s.connect(daemon.socket)
            held.append(s)
        # The acceptor takes connections in order: the fifth is closed at
        # once (EOF) while the first four are open.
        fifth = socket_module.socket(socket_module.AF_UNIX,
                                     socket_module.SOCK_STREAM)
        fifth.settimeout(60)
        fifth.connect(daemon.socket)
        held.append(fifth)
        assert fifth.recv(64) == b""
        assert ("holds 4 gRPC connections, the most one process may hold "
                "(4; client_limits.max_grpc_connections_per_process)"
                in daemon.logs())
        # Another process is not affected.
        listed = daemon.ctl("ls")
        assert listed.returncode == 0, listed.stderr
    finally:
        for s in held:
            s.close()
        daemon.stop(signal.SIGKILL)


def test_clients_at_their_caps_do_not_make_the_daemon_refuse_its_probe(
        workdir, root):
    # The daemon probes its listener over a new connection of its own. The
    # probe runs as the daemon's uid, here the test's: with that uid at its
    # connection cap, the probe was refused like a client's, health went
    # NOT_SERVING, and three rounds later the daemon exited with every
    # model. Its own connections are never refused now.
    config = os.path.join(workdir, "limits.textproto")
    with open(config, "w") as f:
        f.write("client_limits { max_grpc_connections_per_uid: 4 "
                "max_grpc_connections_per_process: 4 }\n")
    daemon = Daemon(workdir, "--model_root", root, "--config", config)
    held = []
    try:
        for _ in range(4):
            s = socket_module.socket(socket_module.AF_UNIX,
                                     socket_module.SOCK_STREAM)
            s.connect(daemon.socket)
            held.append(s)
        deadline = time.time() + 60
        while ("the listeners answer new connections" not in daemon.logs()
               and "NOT_SERVING" not in daemon.logs()
               and time.time() < deadline):
            time.sleep(0.1)
        assert "the listeners answer new connections" in daemon.logs(), \
            daemon.logs()
        assert "NOT_SERVING" not in daemon.logs()
        assert daemon.process.poll() is None
    finally:
        for s in held:
            s.close()
        daemon.stop(signal.SIGKILL)


def test_one_user_cannot_take_every_lease(workdir, root):
    # Before, leases had no cap: one user's processes could pin every
    # model and hold unbounded descriptors. Now a user's (and a process's)
    # sessions together hold at most the configured (or derived) number,
    # and the next acquire is RESOURCE_EXHAUSTED naming the limit.
    config = os.path.join(workdir, "limits.textproto")
    with open(config, "w") as f:
        f.write("client_limits { max_leases_per_uid: 2 }\n")
    daemon = Daemon(workdir, "--model_root", root, "--config", config)
    holders = []
    try:
        loaded = daemon.ctl("load", "m", in_root(root, SAFETENSORS))
        assert loaded.returncode == 0, loaded.stderr
        for _ in range(2):
            holder = daemon.client("--model", "m", "--hold")
            holders.append(holder)
            assert event(holder)["event"] == "acquired"
        refused = daemon.client("--model", "m", "--cycles", "1")
        got = event(refused, timeout=120)
        assert got["event"] == "error", got
        assert got["code"] == "RESOURCE_EXHAUSTED", got
        assert (f"uid {os.getuid()} holds 2 leases, the most one user may "
                "hold (2; client_limits.max_leases_per_uid)"
                in got["message"]), got
        refused.wait(60)
        assert daemon.leases("m") == 2
        # A released lease makes room again.
        holders.pop().kill()
        assert wait_for(lambda: daemon.leases("m") == 1, 60)
        fresh = daemon.client("--model", "m", "--cycles", "1")
        assert event(fresh, timeout=120)["event"] == "cycles"
        assert fresh.wait(60) == 0
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(30)
        daemon.stop(signal.SIGKILL)


def test_a_removed_socket_is_rearmed_and_health_tells_the_truth(daemon):
    # A listener can stop taking new connections while the old ones work:
    # its socket file removed (a tmp cleaner, an operator), its accept
    # loop dead. Before, every new client was told "daemon unavailable"
    # for good while health said SERVING. Now the daemon probes its
    # listeners over new connections, re-arms a unix listener that takes
    # none, and says NOT_SERVING (or exits, for its supervisor) otherwise.
    os.unlink(daemon.socket)
    assert wait_for(lambda: daemon.ctl("ls").returncode == 0, 120), \
        daemon.logs()[-2000:]
    logs = daemon.logs()
    assert f"the unix listener takes no new connection (connect " \
           f"{daemon.socket}: No such file or directory" in logs, logs
    assert "is re-armed and answers" in logs
    ready = daemon.ctl("wait-ready", "--timeout", "60")
    assert ready.returncode == 0, ready.stderr
    assert daemon.process.poll() is None


def test_only_the_loader_or_an_operator_may_force_unload(workdir, root):
    # Before, anyone allowed to unload could force-unload a model another
    # client leases, pulling it from under its owner. Now --force needs the
    # uid that loaded the model, or an operator (root, the daemon's uid,
    # authorization's admin_uids / admin_gids).
    daemon, as_user = start_with_authorization(
        workdir, root, "admin_uids: 4244 admin_gids: 4245")
    model = in_root(root, SAFETENSORS)
    holders = []
    try:
        for name in ("a", "b", "c"):
            loaded = as_user(4242, 4242, "load", name, model)
            assert loaded.returncode == 0, loaded.stderr
            holder = daemon.client("--model", name, "--hold")
            holders.append(holder)
            assert event(holder)["event"] == "acquired"
        refused = as_user(65534, 65534, "unload", "a", "--force")
        assert refused.returncode == 5, refused.stderr
        assert ("uid 65534" in refused.stderr
                and "may not force-unload a: only uid 4242, who loaded it"
                in refused.stderr), refused.stderr
        assert daemon.status("a")["state"] == "ready"
        assert "refused a forced unload" in daemon.logs()
        # The loader may; so may an operator by uid and by group.
        assert as_user(4242, 4242, "unload", "a", "--force").returncode == 0
        assert as_user(4244, 65534, "unload", "b", "--force").returncode == 0
        assert as_user(65534, 4245, "unload", "c", "--force").returncode == 0
        for name in ("a", "b", "c"):
            assert daemon.status(name) is None
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(30)
        daemon.stop(signal.SIGKILL)


def test_a_gpu_budget_is_what_was_free_at_start(workdir, root):
    # Before, a GPU had no budget beyond its configured one: the daemon
    # filled memory other processes on the GPU were about to need, and a
    # load that did not fit failed deep in the driver. Now the budget is
    # the least of the configured one and what cuMemGetInfo reported free
    # at start (re-checked at each reservation), and a load past it is
    # RESOURCE_EXHAUSTED with the figures. On the simulated driver: 64 MiB,
    # 32 of them used by another process.
    write_safetensors(os.path.join(root, "a.safetensors"), 12, 1 << 20)
    write_safetensors(os.path.join(root, "b.safetensors"), 24, 1 << 20)
    write_safetensors(os.path.join(root, "c.safetensors"), 4, 1 << 20)
    sim = os.path.join(harness.RUNFILES, "tests/doubles/libcuda_sim.so")
    daemon = Daemon(workdir, "--model_root", root, "--preload",
                    "a=" + os.path.join(root, "a.safetensors"),
                    backend="cuda",
                    env={"WARMSTART_LIBCUDA": sim,
                         "WARMSTART_SIM_MEMORY_BYTES": str(64 << 20),
                         "WARMSTART_SIM_OTHERS_MEMORY_BYTES": str(32 << 20)})
    try:
        assert "budget 33554432 bytes (configured none; cuMemGetInfo on " \
            "GPU-" in daemon.logs()
        stats = json.loads(daemon.ctl("stats", "--json").stdout)
        assert stats["devices"][0]["budget_bytes"] == 32 << 20
        refused = daemon.ctl("load", "b", os.path.join(root, "b.safetensors"))
        assert refused.returncode == 5, refused.stderr
        assert "the budget is 33554432 bytes" in refused.stderr, \
            refused.stderr
        assert daemon.status("a")["state"] == "ready"
        loaded = daemon.ctl("load", "c", os.path.join(root, "c.safetensors"))
        assert loaded.returncode == 0, loaded.stderr
    finally:
        daemon.stop(signal.SIGKILL)
