"""warmstartctl against the real warmstartd: exit statuses and one-line
errors, --socket before or after the subcommand, the --json shapes of
status, watch and stats, and load's progress on a terminal (a bar redrawn
with \\r, through a pty) and in a log (plain lines).

Binaries come from the test's runfiles ($WARMSTART_RUNFILES); every daemon
runs with the host backend on sockets and model roots under /tmp.
"""
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import time

import pytest

from harness import (CTL, FIXTURES, GGUF, SAFETENSORS, Daemon, ctl, event,
                     in_root, make_model_root, write_safetensors)

# Large enough that a load takes a visible while (several progress
# reports, about ten a second), small enough for a test.
BIG_TENSORS = 8
BIG_TENSOR_BYTES = 64 << 20

COMMANDS = ("inspect", "bench", "info", "wait-ready", "load", "watch", "ls",
            "status", "unload", "stats")


def drop_page_cache(path):
    """Makes the next load of `path` read the disk (slower, so that it
    shows progress)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_line_error(result):
    """The stderr of a failed command: exactly one "warmstartctl: " line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("warmstartctl: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def root():
    """A model root (shared by the module's daemons, in place of the
    per-test one of tests/conftest.py) holding copies of two fixtures and
    a synthetic checkpoint big enough to show progress."""
    top = tempfile.mkdtemp(prefix="ws-ctl-", dir="/tmp")
    path = make_model_root(os.path.join(top, "models"), (GGUF, SAFETENSORS))
    write_safetensors(os.path.join(path, "big.safetensors"), BIG_TENSORS,
                      BIG_TENSOR_BYTES)
    yield path
    shutil.rmtree(top, ignore_errors=True)


def big(root):
    return os.path.join(root, "big.safetensors")


def test_help_lists_every_command_and_each_commands_flags():
    for args in (["--help"], ["help"]):
        result = ctl(*args)
        assert result.returncode == 0, result.stderr
        listed = [line.split()[0] for line in result.stdout.splitlines()
                  if line.startswith("  ") and not line.startswith("    ")]
        assert listed == list(COMMANDS), result.stdout
        assert "--socket PATH" in result.stdout
        assert "WARMSTART_SOCKET" in result.stdout
        assert "7 checksum mismatch" in result.stdout
    for command in COMMANDS:
        for args in ([command, "--help"], ["help", command]):
            result = ctl(*args)
            assert result.returncode == 0, (args, result.stderr)
            assert result.stdout.startswith(
                f"usage: warmstartctl {command}"), result.stdout
    assert "--no-wait" in ctl("load", "--help").stdout
    assert "--timeout S" in ctl("watch", "--help").stdout
    assert "--json" in ctl("stats", "--help").stdout
    assert "--force" in ctl("unload", "--help").stdout


def test_usage_errors_are_exit_1_in_one_line(workdir):
    socket = os.path.join(workdir, "none.sock")
    for args in (["frobnicate"], [], ["ls", "--frob"], ["help", "nope"],
                 ["status", "--socket", socket],
                 ["watch", "--socket", socket],
                 ["load", "only-a-name", "--socket", socket],
                 ["stats", "extra", "--socket", socket],
                 ["watch", "m", "--timeout", "soon", "--socket", socket],
                 ["ls", "--socket"]):
        result = ctl(*args)
        assert result.returncode == 1, (args, result.stderr)
        one_line_error(result)


def test_missing_daemon_is_exit_3_in_one_line(workdir):
    socket = os.path.join(workdir, "none.sock")
    for args in (["ls"], ["status", "m"], ["watch", "m"], ["stats"],
                 ["info"], ["unload", "m"], ["load", "m", "/models/m"]):
        result = ctl(*args, "--socket", socket)
        assert result.returncode == 3, (args, result.stderr)
        line = one_line_error(result)
        assert f"daemon unavailable at {socket}" in line
        assert result.stdout == ""


def test_unknown_model_is_exit_4_in_one_line(daemon):
    for command in ("status", "watch", "unload"):
        for json_flag in ([], ["--json"]):
            result = daemon.ctl(command, "absent", *json_flag)
            assert result.returncode == 4, (command, result.stderr)
            assert one_line_error(result) == (
                "warmstartctl: no model named absent")


def test_refused_path_is_exit_5_in_one_line(daemon, root, workdir):
    outside = os.path.join(workdir, "outside.gguf")
    shutil.copy(os.path.join(FIXTURES, GGUF), outside)
    for args in (["x", outside], ["x", outside, "--no-wait"],
                 ["x", "/etc/passwd", "--json"]):
        result = daemon.ctl("load", *args)
        assert result.returncode == 5, (args, result.stderr)
        assert "root" in one_line_error(result)
        assert result.stdout == ""
    assert daemon.status("x") is None


def test_socket_before_or_after_the_subcommand(daemon, root):
    assert daemon.ctl("load", "tiny", in_root(root, GGUF)).returncode == 0
    before = subprocess.run([CTL, "--socket", daemon.socket, "ls"],
                            capture_output=True, text=True, timeout=60)
    after = subprocess.run([CTL, "ls", "--socket", daemon.socket],
                           capture_output=True, text=True, timeout=60)
    assert before.returncode == 0, before.stderr
    assert after.returncode == 0, after.stderr
    assert before.stdout == after.stdout
    assert "tiny" in before.stdout and "ready" in before.stdout
    equals = ctl("status", "tiny", f"--socket={daemon.socket}", "--json")
    assert json.loads(equals.stdout)["state"] == "ready"
    # $WARMSTART_SOCKET stands in for --socket; --socket wins over it.
    env = dict(os.environ, WARMSTART_SOCKET=daemon.socket)
    from_env = ctl("ls", env=env)
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout == before.stdout
    env["WARMSTART_SOCKET"] = "/nonexistent/ws.sock"
    overridden = ctl("--socket", daemon.socket, "ls", env=env)
    assert overridden.returncode == 0, overridden.stderr
    assert ctl("ls", env=env).returncode == 3


def test_status_json_keys(daemon, root):
    assert daemon.ctl("load", "st", in_root(root, SAFETENSORS)).returncode == 0
    result = daemon.ctl("status", "st", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] in ("loading", "ready", "failed", "unloading")
    assert status["state"] == "ready"
    assert isinstance(status["leases"], int) and status["leases"] == 0
    assert isinstance(status["bytes_loaded"], int)
    assert isinstance(status["bytes_total"], int)
    assert status["bytes_loaded"] == status["bytes_total"] > 0
    assert status["name"] == "st"
    assert status["path"] == in_root(root, SAFETENSORS)
    assert status["error"] == ""
    # The other commands' --json output parses too.
    for args in (["ls"], ["info"], ["wait-ready"], ["stats"]):
        out = daemon.ctl(*args, "--json")
        assert out.returncode == 0, (args, out.stderr)
        json.loads(out.stdout)
    unloaded = daemon.ctl("unload", "st", "--json")
    assert unloaded.returncode == 0, unloaded.stderr
    assert json.loads(unloaded.stdout)["name"] == "st"


def test_load_no_wait_then_watch_json_ends_ready(daemon, root):
    drop_page_cache(big(root))
    started = daemon.ctl("load", "big", big(root), "--no-wait", "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["state"] in ("loading", "ready")
    watched = daemon.ctl("watch", "big", "--json")
    assert watched.returncode == 0, watched.stderr
    updates = [json.loads(line) for line in watched.stdout.splitlines()]
    assert updates, watched.stdout
    for update in updates:
        for key in ("state", "bytes_loaded", "bytes_total",
                    "bytes_per_second", "leases", "error"):
            assert key in update, update
        assert update["state"] in ("loading", "ready")
        assert update["bytes_total"] == BIG_TENSORS * BIG_TENSOR_BYTES
    loaded = [update["bytes_loaded"] for update in updates]
    assert loaded == sorted(loaded)
    assert updates[-1]["state"] == "ready"
    assert updates[-1]["bytes_loaded"] == updates[-1]["bytes_total"]
    # Watching a ready model: one update, at once.
    again = daemon.ctl("watch", "big", "--json")
    assert again.returncode == 0
    assert [json.loads(line)["state"]
            for line in again.stdout.splitlines()] == ["ready"]


def test_load_no_wait_then_watch_human(daemon, root):
    drop_page_cache(big(root))
    started = daemon.ctl("load", "big", big(root), "--no-wait")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("big ")
    watched = daemon.ctl("watch", "big")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert "\r" not in watched.stdout  # Not a terminal: lines.
    assert lines[-1].startswith("big: ready, 512.0 MiB, 8 tensors, 0 leases")
    for line in lines[:-1]:
        assert re.fullmatch(r"big: loading [\d.]+/512\.0 MiB "
                            r"[\d.]+ [KMG]?i?B/s ETA (--|\d.*)", line), line


def test_stats_json_counts_models_and_leases(daemon, root):
    assert daemon.ctl("load", "tiny", in_root(root, GGUF)).returncode == 0
    assert daemon.ctl("load", "st", in_root(root, SAFETENSORS)).returncode == 0
    holder = daemon.client("--model", "tiny", "--hold")
    try:
        assert event(holder)["event"] == "acquired"
        result = daemon.ctl("stats", "--json")
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
        assert stats["models"] == 2
        assert stats["leases"] == 1
        assert stats["sessions"] == 1
        host = [d for d in stats["devices"] if d["uuid"] == "host"]
        assert len(host) == 1 and host[0]["resident_bytes"] > 0
        assert stats["metrics"]["warmstart_loads_total"] == 2
        assert stats["metrics"]["warmstart_leases"] == 1
        text = daemon.ctl("stats")
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith("models: 2  leases: 1  sessions: 1\n")
        assert "device host: " in text.stdout
        assert re.search(r"^  warmstart_loads_total +2$", text.stdout,
                         re.MULTILINE), text.stdout
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(10)


def test_load_into_a_log_prints_plain_progress_lines(daemon, root):
    drop_page_cache(big(root))
    result = daemon.ctl("load", "big", big(root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("big ready: 8 tensors, 512.0 MiB in ")
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines, "no progress at all"
    for line in lines:
        assert re.fullmatch(r"loading big: [\d.]+ of 512\.0 MiB "
                            r"\([\d.]+ MiB/s\)", line), line


def read_pty(master, process, timeout=120):
    """Everything written to the pty until the process exits."""
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal.
                break
            if not data:
                break
            output += data
        elif process.poll() is not None:
            break
    return output.decode()


def test_load_on_a_terminal_redraws_a_bar_with_eta(daemon, root):
    drop_page_cache(big(root))
    master, slave = pty.openpty()
    columns = 100
    fcntl.ioctl(slave, termios.TIOCSWINSZ,
                struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(
        [CTL, "load", "big", big(root), "--socket", daemon.socket],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        terminal = read_pty(master, process)
        stdout = process.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
    assert process.returncode == 0, terminal
    assert stdout.startswith("big ready: 8 tensors, 512.0 MiB in ")
    # The terminal turns "\n" into "\r\n"; every other "\r" is a redraw.
    text = terminal.replace("\r\n", "\n")
    assert text.endswith("\n") and text.count("\n") == 1, repr(terminal)
    draws = text[:-1].split("\r")
    assert draws[0] == "", repr(terminal)
    draws = draws[1:]
    # At least the first report and the final, full bar.
    assert len(draws) >= 2, repr(terminal)
    bar = re.compile(r"loading big \[([#.]+)\] [\d.]+/512\.0 MiB "
                     r"[\d.]+ [KMG]?i?B/s ETA (--|\d+s|\d+m\d\ds) *")
    widths = set()
    for draw in draws:
        match = bar.fullmatch(draw)
        assert match, repr(draw)
        widths.add(len(match.group(1)))
        assert len(draw) < columns, repr(draw)
    assert len(widths) == 1  # The bar keeps its width.
    last = bar.fullmatch(draws[-1])
    assert set(last.group(1)) == {"#"}, draws[-1]
    assert "512.0/512.0 MiB" in draws[-1]
    assert last.group(2) == "0s"


def test_wait_ready_retries_until_the_socket_exists(workdir, root):
    socket = os.path.join(workdir, "d.sock")
    quick = ctl("wait-ready", "--timeout", "0.5", "--socket", socket)
    assert quick.returncode == 6, quick.stderr
    one_line_error(quick)
    waiting = subprocess.Popen(
        [CTL, "wait-ready", "--timeout", "60", "--json", "--socket", socket],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert waiting.poll() is None  # Still waiting for the socket.
    d = Daemon(workdir, "--model_root", root, wait=False)
    try:
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err + d.logs()
        assert json.loads(out) == {"state": "ready", "socket": socket}
    finally:
        d.stop(signal.SIGKILL)


def test_bench_reports_the_pages_every_arena_and_the_staging_pool_got(
        workdir):
    # A local checkpoint: one cold and one warm load; each arena's pages
    # are counted as allocated (a hugetlb prediction can fall back).
    path = os.path.join(workdir, "bench.safetensors")
    shutil.copy(os.path.join(FIXTURES, SAFETENSORS), path)
    result = ctl("bench", "--json", "--runs", "1", "--no-peers",
                 "--staging-mib", "16", path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out["arena_pages"]) <= {"hugetlb", "shmem_thp", "4k"}
    assert sum(out["arena_pages"].values()) == 2
    assert out["host_pages"] in out["arena_pages"] or \
        out["host_pages"] == "hugetlb"  # Predicted, then taken meanwhile.
    assert 0 <= out["staging_huge_page_bytes"] <= out["staging_bytes"]
    assert out["staging_huge_page_bytes"] % (2 << 20) == 0
    text = ctl("bench", "--runs", "1", "--no-peers", "--staging-mib", "16",
               path)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^arenas got: (hugetlb|shmem_thp|4k) 2", text.stdout,
                     re.M), text.stdout
    assert re.search(r"^staging pages: \d+ of 16 MiB in 2 MiB pages",
                     text.stdout, re.M), text.stdout
