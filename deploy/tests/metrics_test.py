"""The daemon's Prometheus endpoint, live: per-model and per-device labels,
the histograms and gauges a dashboard needs, checked by Prometheus's own
`promtool check metrics`; and deploy/grafana/warmstart.json, whose every
query must name a metric that this live daemon exports.

A daemon (host backend) preloads the tiny GGUF fixture with the metrics
endpoint on 127.0.0.1, port 0 (the log says which port it got); a
map_model client holds a lease while the endpoint is scraped.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request

import pytest

# tests/harness.py: the daemon and client helpers of the integration tests.
sys.path.insert(0, os.path.join(os.environ["WARMSTART_RUNFILES"], "tests"))
import harness  # noqa: E402

WORKDIR_PREFIX = "wsmet-"
MODEL_ROOT_FIXTURES = (harness.GGUF,)
DASHBOARD = os.path.join(harness.RUNFILES, "deploy/grafana/warmstart.json")
PROMTOOL = "/usr/bin/promtool"


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def promtool_check(text):
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def live():
    """(exposition text, daemon) of a daemon with `tiny` resident and one
    client holding a lease on it."""
    workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir="/tmp")
    root = harness.make_model_root(os.path.join(workdir, "models"),
                                   MODEL_ROOT_FIXTURES)
    config = os.path.join(workdir, "warmstartd.textproto")
    with open(config, "w") as out:
        out.write('listen { metrics_address: "127.0.0.1:0" }\n'
                  f'model_roots: "{root}"\n'
                  f'preloads {{ name: "tiny" '
                  f'path: "{harness.in_root(root, harness.GGUF)}" }}\n')
    daemon = harness.Daemon(workdir, "--config", config)
    client = daemon.client("--model", "tiny", "--hold")
    try:
        assert harness.event(client)["event"] == "acquired"
        port = re.search(r"metrics endpoint listening on \S+ \(port (\d+)\)",
                         daemon.logs()).group(1)
        yield scrape(port), daemon
    finally:
        client.kill()
        client.wait()
        daemon.stop(signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def samples(text):
    """{(name, frozenset of label pairs): value} of an exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)',
                             line)
        assert match, line
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"',
                                      match.group(3) or ""))
        out[(match.group(1), labels)] = float(match.group(4))
    return out


def test_promtool_accepts_the_live_exposition(live):
    text, _ = live
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    # No lint problem either: promtool prints one line per problem.
    assert result.stdout == "" and result.stderr == ""


def test_promtool_catches_a_broken_exposition(live):
    """The check above can fail: promtool rejects a counter without _total
    and a label value whose quote is not escaped."""
    text, _ = live
    broken = text.replace("warmstart_loads_total", "warmstart_loads")
    result = promtool_check(broken)
    assert result.returncode != 0
    assert "warmstart_loads" in result.stdout + result.stderr
    unescaped = text.replace('{model="tiny"}', '{model="ti"ny"}')
    assert unescaped != text
    assert promtool_check(unescaped).returncode != 0


def test_per_model_and_per_device_series(live):
    text, _ = live
    got = samples(text)
    model = frozenset({("model", "tiny")})
    model_host = frozenset({("model", "tiny"), ("device", "host")})
    assert got[("warmstart_model_leases", model)] == 1
    assert got[("warmstart_model_ready", model)] == 1
    assert got[("warmstart_sessions", frozenset())] == 1
    assert got[("warmstart_leases", frozenset())] == 1
    resident = got[("warmstart_model_resident_bytes", model_host)]
    assert resident >= os.path.getsize(
        os.path.join(harness.FIXTURES, harness.GGUF)) - (1 << 20)
    assert got[("warmstart_device_resident_bytes",
                frozenset({("device", "host")}))] == resident
    # One load, one acquire: each histogram has one observation, in its
    # +Inf bucket and every bucket above the value.
    for name, labels in [("warmstart_load_duration_seconds", model_host),
                         ("warmstart_load_read_bytes_per_second", model_host),
                         ("warmstart_acquire_latency_seconds", model)]:
        assert got[(name + "_count", labels)] == 1
        assert got[(name + "_bucket", labels | {("le", "+Inf")})] == 1
        assert f"# TYPE {name} histogram" in text
    assert got[("warmstart_load_read_bytes_per_second_sum", model_host)] > 0


def exported_names(text):
    """Every sample name of an exposition (histograms' _bucket, _sum and
    _count included)."""
    return {name for name, _ in samples(text)}


def dashboard_queries(dashboard):
    """Every PromQL query of a Grafana dashboard: panel targets (nested rows
    included) and templating variables."""
    queries = []

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            queries.append(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict)
                           else query)
    return queries


def unexported(queries, exported):
    """(query, name) for every warmstart_* name in `queries` that is not in
    `exported`, and (query, None) for a query that names none."""
    problems = []
    for query in queries:
        names = re.findall(r"\bwarmstart_[a-zA-Z0-9_:]*", query)
        if not names:
            problems.append((query, None))
        problems += [(query, name) for name in names if name not in exported]
    return problems


def test_every_dashboard_query_names_an_exported_metric(live):
    text, _ = live
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    queries = dashboard_queries(dashboard)
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len(panels) >= 8
    assert all(p.get("targets") for p in panels), "a panel without a query"
    assert unexported(queries, exported_names(text)) == []
    # Each dashboard-worthy family is on the dashboard.
    joined = "\n".join(queries)
    for name in ["warmstart_load_duration_seconds_bucket",
                 "warmstart_acquire_latency_seconds_bucket",
                 "warmstart_load_read_bytes_per_second_bucket",
                 "warmstart_model_leases", "warmstart_sessions",
                 "warmstart_device_resident_bytes"]:
        assert name in joined


def test_a_query_on_a_missing_metric_is_caught(live):
    text, _ = live
    exported = exported_names(text)
    typo = 'sum(rate(warmstart_load_duraton_seconds_bucket[5m])) by (le)'
    assert unexported([typo], exported) == [
        (typo, "warmstart_load_duraton_seconds_bucket")]
    assert unexported(["up"], exported) == [("up", None)]
