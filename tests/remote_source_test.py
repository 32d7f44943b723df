"""Models loaded from URLs by the real warmstartd: nginx (Debian) serving
files over HTTP and HTTPS with Range requests, and moto's S3 server (PyPI)
with authentication enforced. Every tensor a client maps must hash to the
sha256 the reference writers' expected-values files give.

Servers run on 127.0.0.1 under /tmp (tests/remote_servers.py) and are
stopped after the module; each test starts its own daemon.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

import harness
from harness import (FIXTURES, GGUF, SAFETENSORS, TENSORIZER, Daemon,
                     event, expected_hashes, wait_for, write_safetensors)
import remote_servers

FORMATS = [SAFETENSORS, TENSORIZER, GGUF]
SECRET_MARK = "wt19-secret"  # Part of no URL: must appear in no output.


@pytest.fixture(scope="module")
def served():
    """A directory under /tmp holding the shared fixtures (docroot/models/)
    and a sharded checkpoint (docroot/models/sharded/), served by nginx."""
    base = tempfile.mkdtemp(prefix="ws-remote-", dir="/tmp")
    docroot = os.path.join(base, "doc")
    models = os.path.join(docroot, "models")
    os.makedirs(os.path.join(models, "sharded"))
    os.makedirs(os.path.join(docroot, "other"))
    for fixture in FORMATS:
        shutil.copy(os.path.join(FIXTURES, fixture), models)
    shutil.copy(os.path.join(FIXTURES, SAFETENSORS),
                os.path.join(docroot, "other"))
    sharded_hashes = write_sharded(os.path.join(models, "sharded"))
    nginx = remote_servers.Nginx(base, docroot)
    yield {"base": base, "docroot": docroot, "nginx": nginx,
           "sharded_hashes": sharded_hashes}
    nginx.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def moto(served):
    """moto's S3 server with the bucket "models" holding the same files as
    nginx's models/ directory."""
    server = remote_servers.Moto(served["base"])
    s3 = server.client()
    s3.create_bucket(Bucket="models")
    root = os.path.join(served["docroot"], "models")
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            key = "ckpt/" + os.path.relpath(path, root)
            s3.upload_file(path, "models", key)
    yield server
    server.stop()


def write_sharded(directory):
    """A Hugging Face sharded safetensors checkpoint written by the
    safetensors package: two shards and model.safetensors.index.json.
    Returns name -> sha256 of each tensor's bytes."""
    import numpy as np
    from safetensors.numpy import save_file
    rng = np.random.default_rng(19)
    shards = {
        "model-00001-of-00002.safetensors": {
            "a": rng.standard_normal((64, 33)).astype(np.float32),
            "b": rng.integers(0, 255, (1000,), dtype=np.uint8)},
        "model-00002-of-00002.safetensors": {
            "c": rng.standard_normal((3, 5, 7)).astype(np.float16)},
    }
    weight_map = {}
    hashes = {}
    for shard, tensors in shards.items():
        save_file(tensors, os.path.join(directory, shard))
        for name, array in tensors.items():
            weight_map[name] = shard
            hashes[name] = hashlib.sha256(array.tobytes()).hexdigest()
    with open(os.path.join(directory, "model.safetensors.index.json"),
              "w") as out:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map},
                  out)
    return hashes


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="ws-r-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(workdir, *args, env=None):
    """A daemon with no model root: every model comes from a URL."""
    return Daemon(workdir, *args, env=env)


def mapped_hashes(daemon, name):
    client = daemon.client("--model", name)
    got = event(client)
    assert got["event"] == "acquired", got
    assert client.wait(30) == 0
    return got["sha256"]


def stats(daemon):
    result = daemon.ctl("stats", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["metrics"]


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("fixture", FORMATS)
def test_http_load_every_format_hashes_match(served, workdir, fixture):
    nginx = served["nginx"]
    daemon = start(workdir, "--remote_source", nginx.http("models"))
    try:
        url = nginx.http("models/" + os.path.basename(fixture))
        loaded = daemon.ctl("load", "m", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "m") == expected_hashes(fixture)
        # Ranged GETs, not one whole-file download.
        log = nginx.access_log()
        assert f'"GET /models/{os.path.basename(fixture)} HTTP/1.1" 206' in log
    finally:
        daemon.stop(signal.SIGKILL)


def test_https_with_the_test_ca_and_refused_without_it(served, workdir):
    nginx = served["nginx"]
    url = nginx.https("models/" + os.path.basename(SAFETENSORS))
    # The self-signed certificate is not trusted by default: a clear error.
    untrusted = start(os.path.join(workdir), "--remote_source",
                      nginx.https("models"))
    try:
        refused = untrusted.ctl("load", "m", url)
        assert refused.returncode != 0
        assert url in refused.stderr
        assert "certificate" in refused.stderr.lower(), refused.stderr
    finally:
        untrusted.stop(signal.SIGKILL)
    trusted_dir = os.path.join(workdir, "t")
    os.mkdir(trusted_dir)
    daemon = start(trusted_dir, "--remote_source", nginx.https("models"),
                   env={"AWS_CA_BUNDLE": nginx.ca_path})
    try:
        loaded = daemon.ctl("load", "m", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "m") == expected_hashes(SAFETENSORS)
    finally:
        daemon.stop(signal.SIGKILL)


def test_urls_outside_the_remote_sources_are_refused_and_counted(
        served, workdir):
    nginx = served["nginx"]
    daemon = start(workdir, "--remote_source", nginx.http("models"))
    try:
        for url in (nginx.http("other/" + os.path.basename(SAFETENSORS)),
                    nginx.http("models-evil/x.safetensors"),
                    nginx.https("models/" + os.path.basename(SAFETENSORS))):
            refused = daemon.ctl("load", "m", url)
            assert refused.returncode == 5, refused.stderr
            assert "not beneath an allowed remote source" in refused.stderr
        assert stats(daemon)["warmstart_remote_refused_total"] == 3
        # Nothing was requested from the server for them.
        assert "/other/" not in nginx.access_log()
    finally:
        daemon.stop(signal.SIGKILL)
    # And with no --remote_source at all, no URL is allowed.
    bare_dir = os.path.join(workdir, "bare")
    os.mkdir(bare_dir)
    bare = start(bare_dir)
    try:
        refused = bare.ctl("load", "m", nginx.http("models/x.gguf"))
        assert refused.returncode == 5
        assert "none configured" in refused.stderr
    finally:
        bare.stop(signal.SIGKILL)


def test_preload_from_a_url(served, workdir):
    nginx = served["nginx"]
    url = nginx.http("models/" + os.path.basename(GGUF))
    daemon = start(workdir, "--remote_source", nginx.http("models/"),
                   "--preload", f"pre={url}")
    try:
        assert mapped_hashes(daemon, "pre") == expected_hashes(GGUF)
    finally:
        daemon.stop(signal.SIGKILL)


def test_http_sharded_index_hashes_match(served, workdir):
    nginx = served["nginx"]
    daemon = start(workdir, "--remote_source", nginx.http("models"))
    try:
        url = nginx.http("models/sharded/model.safetensors.index.json")
        loaded = daemon.ctl("load", "sharded", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "sharded") == served["sharded_hashes"]
    finally:
        daemon.stop(signal.SIGKILL)


def test_missing_object_is_a_clear_error(served, workdir):
    nginx = served["nginx"]
    daemon = start(workdir, "--remote_source", nginx.http("models"))
    try:
        url = nginx.http("models/absent.safetensors")
        missing = daemon.ctl("load", "m", url)
        assert missing.returncode != 0
        assert url in missing.stderr and "HTTP 404" in missing.stderr
    finally:
        daemon.stop(signal.SIGKILL)


def s3_env(moto, style=None, **extra):
    env = {"AWS_ENDPOINT_URL": moto.endpoint.replace("127.0.0.1",
                                                     "localhost"),
           "AWS_REGION": "us-east-1"}
    if style:
        env["AWS_S3_ADDRESSING_STYLE"] = style
    env.update(extra)
    return env


@pytest.mark.parametrize("style", ["path", "virtual"])
@pytest.mark.parametrize("fixture", FORMATS)
def test_s3_env_credentials_every_format(moto, workdir, style, fixture):
    # Virtual-host addressing sends to models.localhost, which libcurl
    # resolves to loopback itself.
    env = s3_env(moto, style, AWS_ACCESS_KEY_ID=moto.key_id,
                 AWS_SECRET_ACCESS_KEY=moto.secret)
    daemon = start(workdir, "--remote_source", "s3://models/ckpt", env=env)
    try:
        url = "s3://models/ckpt/" + os.path.basename(fixture)
        loaded = daemon.ctl("load", "m", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "m") == expected_hashes(fixture)
    finally:
        daemon.stop(signal.SIGKILL)
    assert moto.secret not in daemon.logs()


def test_s3_shared_credentials_file_and_profile(moto, served, workdir):
    credentials = os.path.join(workdir, "credentials")
    with open(credentials, "w") as out:
        out.write("[default]\naws_access_key_id = AKIANOTKNOWN\n"
                  f"aws_secret_access_key = {SECRET_MARK}\n"
                  f"[loader]\naws_access_key_id = {moto.key_id}\n"
                  f"aws_secret_access_key = {moto.secret}\n")
    env = s3_env(moto, AWS_SHARED_CREDENTIALS_FILE=credentials,
                 AWS_PROFILE="loader")
    daemon = start(workdir, "--remote_source", "s3://models/ckpt/",
                   env=env)
    try:
        url = "s3://models/ckpt/sharded/model.safetensors.index.json"
        loaded = daemon.ctl("load", "sharded", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "sharded") == served["sharded_hashes"]
    finally:
        daemon.stop(signal.SIGKILL)


def test_s3_wrong_keys_are_refused_without_leaking_them(moto, workdir):
    env = s3_env(moto, AWS_ACCESS_KEY_ID=moto.key_id,
                 AWS_SECRET_ACCESS_KEY=SECRET_MARK)
    daemon = start(workdir, "--remote_source", "s3://models", env=env)
    try:
        url = "s3://models/ckpt/" + os.path.basename(SAFETENSORS)
        refused = daemon.ctl("load", "m", url)
        assert refused.returncode == 5, refused.stderr
        assert url in refused.stderr and "HTTP 403" in refused.stderr
        assert SECRET_MARK not in refused.stderr
        metrics = json.dumps(stats(daemon))
        assert SECRET_MARK not in metrics
    finally:
        daemon.stop(signal.SIGKILL)
    assert SECRET_MARK not in daemon.logs()


def test_s3_prefix_with_an_index_and_one_with_weight_files(moto, served,
                                                           workdir):
    s3 = moto.client()
    # A prefix holding one GGUF file (and an object of another kind).
    s3.upload_file(os.path.join(FIXTURES, GGUF), "models",
                   "flat/" + os.path.basename(GGUF))
    s3.put_object(Bucket="models", Key="flat/README.md", Body=b"not weights")
    env = s3_env(moto, AWS_ACCESS_KEY_ID=moto.key_id,
                 AWS_SECRET_ACCESS_KEY=moto.secret)
    daemon = start(workdir, "--remote_source", "s3://models", env=env)
    try:
        loaded = daemon.ctl("load", "sharded", "s3://models/ckpt/sharded/")
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "sharded") == served["sharded_hashes"]
        loaded = daemon.ctl("load", "flat", "s3://models/flat/")
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "flat") == expected_hashes(GGUF)
        empty = daemon.ctl("load", "none", "s3://models/nothing/")
        assert empty.returncode != 0
        assert "s3://models/nothing/: no weight files" in empty.stderr
    finally:
        daemon.stop(signal.SIGKILL)


def test_http_prefix_cannot_be_listed(served, workdir):
    nginx = served["nginx"]
    daemon = start(workdir, "--remote_source", nginx.http("models"))
    try:
        refused = daemon.ctl("load", "m", nginx.http("models/"))
        assert refused.returncode != 0
        assert "HTTP servers cannot list a directory" in refused.stderr
    finally:
        daemon.stop(signal.SIGKILL)


# Faults injected at a real server: each test has its own nginx, which it
# may kill, and a synthetic 64 MiB checkpoint under docroot/slow/ (1 MB/s
# per connection: with 8 connections, about 8 s to read).
# Sockets libcurl may keep: 3 per worker (see resources()), 8 workers.
CURL_SOCKETS = 3 * 8
BIG_TENSORS = 64
BIG_BYTES = 1 << 20


@pytest.fixture
def faulty(workdir):
    docroot = os.path.join(workdir, "doc")
    for sub in ("slow", "burst", "norange", "weak"):
        os.makedirs(os.path.join(docroot, sub))
    write_safetensors(os.path.join(docroot, "slow", "big.safetensors"),
                      BIG_TENSORS, BIG_BYTES, seed=5)
    shutil.copy(os.path.join(FIXTURES, SAFETENSORS),
                os.path.join(docroot, "burst"))
    write_safetensors(os.path.join(docroot, "norange", "big.safetensors"),
                      BIG_TENSORS, BIG_BYTES, seed=7)
    write_safetensors(os.path.join(docroot, "weak", "big.safetensors"),
                      BIG_TENSORS, BIG_BYTES, seed=10)
    nginx = remote_servers.Nginx(workdir, docroot)
    yield nginx
    nginx.stop()


def safetensors_hashes(path):
    """name -> sha256 of each tensor's bytes, read with the safetensors
    package."""
    from safetensors.numpy import load_file
    return {name: hashlib.sha256(array.tobytes()).hexdigest()
            for name, array in load_file(path).items()}


def resources(daemon):
    """(descriptors other than sockets, sockets, resident bytes on host) of
    the daemon: a failed load must leave the first and the last as they
    were. Sockets may grow by what each libcurl worker keeps once it has
    run a transfer: at most one connection and the wakeup socket pair of
    the multi handle curl_easy_perform keeps inside the easy handle."""
    fd_dir = f"/proc/{daemon.process.pid}/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(os.path.join(fd_dir, fd)))
        except FileNotFoundError:
            pass  # Closed while listing.
    sockets = sum(t.startswith("socket:") for t in targets)
    result = daemon.ctl("stats", "--json")
    assert result.returncode == 0, result.stderr
    host = [d for d in json.loads(result.stdout)["devices"]
            if d["uuid"] == "host"]
    return len(targets) - sockets, sockets, host[0]["resident_bytes"]


def start_load(daemon, name, url):
    """`warmstartctl load NAME URL` as a process (it waits for the load)."""
    return subprocess.Popen([harness.CTL, "load", name, url, "--socket",
                             daemon.socket], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=harness.NATIVE_ENV)


def wait_bulk_started(daemon, name):
    """Waits until the load of `name` has landed its first chunk (so the
    bulk transfer is under way)."""
    def started():
        status = daemon.status(name)
        return status is not None and status["bytes_loaded"] > 0
    assert wait_for(started, 60), daemon.logs()


def assert_failed_and_released(daemon, name, before):
    status = daemon.status(name)
    assert status is None or status["state"] != "ready", status
    client = daemon.client("--model", name)
    assert client.wait(30) != 0

    # The server side of the clients' connections closes soon after they
    # do: poll for the state, then assert it exactly.
    def released():
        files, sockets, resident = resources(daemon)
        return ((files, resident) == (before[0], before[2]) and
                sockets <= before[1] + CURL_SOCKETS)
    wait_for(released, 30)
    files, sockets, resident = resources(daemon)
    assert (files, resident) == (before[0], before[2])
    assert sockets <= before[1] + CURL_SOCKETS


def test_503_bursts_are_retried_with_backoff(faulty, workdir):
    daemon = start(workdir, "--remote_source", faulty.http("burst"))
    try:
        url = faulty.http("burst/" + os.path.basename(SAFETENSORS))
        loaded = daemon.ctl("load", "m", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "m") == expected_hashes(SAFETENSORS)
        assert '" 503 ' in faulty.access_log()
        assert stats(daemon)["warmstart_remote_retries_total"] > 0
    finally:
        daemon.stop(signal.SIGKILL)


def test_a_slow_server_still_loads_every_byte(faulty, workdir):
    daemon = start(workdir, "--remote_source", faulty.http("slow"))
    try:
        url = faulty.http("slow/big.safetensors")
        loaded = daemon.ctl("load", "big", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "big") == safetensors_hashes(
            os.path.join(faulty.docroot, "slow", "big.safetensors"))
        # Ranged GETs carrying the ETag (If-Match), in parallel parts.
        gets = [line for line in faulty.access_log().splitlines()
                if line.startswith('"GET /slow/big.safetensors')]
        assert len(gets) >= 8
        assert all(' 206 ' in line and '"bytes=' in line for line in gets)
        assert not any(line.endswith('"-"') for line in gets), gets
    finally:
        daemon.stop(signal.SIGKILL)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_killed_mid_transfer_then_back_resumes(faulty, workdir, scheme):
    url_of = getattr(faulty, scheme)
    daemon = start(workdir, "--remote_source", url_of("slow"),
                   env={"AWS_CA_BUNDLE": faulty.ca_path})
    try:
        loading = start_load(daemon, "big", url_of("slow/big.safetensors"))
        wait_bulk_started(daemon, "big")
        faulty.kill()
        faulty.start()  # Within the retries' backoff.
        out, err = loading.communicate(timeout=300)
        assert loading.returncode == 0, err + daemon.logs()
        assert mapped_hashes(daemon, "big") == safetensors_hashes(
            os.path.join(faulty.docroot, "slow", "big.safetensors"))
        assert stats(daemon)["warmstart_remote_retries_total"] > 0
    finally:
        daemon.stop(signal.SIGKILL)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_killed_mid_transfer_for_good_fails_cleanly(faulty, workdir, scheme):
    url_of = getattr(faulty, scheme)
    daemon = start(workdir, "--remote_source", url_of("slow"),
                   env={"AWS_CA_BUNDLE": faulty.ca_path})
    try:
        before = resources(daemon)
        url = url_of("slow/big.safetensors")
        loading = start_load(daemon, "big", url)
        wait_bulk_started(daemon, "big")
        faulty.kill()
        out, err = loading.communicate(timeout=300)
        assert loading.returncode != 0
        assert url in err and "tries)" in err, err
        assert_failed_and_released(daemon, "big", before)
    finally:
        daemon.stop(signal.SIGKILL)


@pytest.mark.parametrize("change", ["replaced", "truncated"])
def test_object_changed_mid_load_fails_the_load(faulty, workdir, change):
    daemon = start(workdir, "--remote_source", faulty.http("slow"))
    try:
        before = resources(daemon)
        path = os.path.join(faulty.docroot, "slow", "big.safetensors")
        url = faulty.http("slow/big.safetensors")
        loading = start_load(daemon, "big", url)
        wait_bulk_started(daemon, "big")
        if change == "replaced":
            # A new version of the object: same name, other bytes.
            write_safetensors(path + ".new", BIG_TENSORS, BIG_BYTES, seed=6)
            os.replace(path + ".new", path)
        else:
            # Cut short in place: transfers under way end early.
            os.truncate(path, os.path.getsize(path) // 2)
        out, err = loading.communicate(timeout=300)
        assert loading.returncode != 0
        assert url in err
        assert "changed since it was" in err, err
        assert_failed_and_released(daemon, "big", before)
        # The daemon never served a mix: a fresh load gets the new object.
        if change == "replaced":
            loaded = daemon.ctl("load", "big2", url)
            assert loaded.returncode == 0, loaded.stderr
            assert mapped_hashes(daemon, "big2") == safetensors_hashes(path)
    finally:
        daemon.stop(signal.SIGKILL)


def test_inspect_hashes_a_url_like_the_file(served, moto):
    nginx = served["nginx"]
    for fixture in FORMATS:
        url = nginx.http("models/" + os.path.basename(fixture))
        result = harness.ctl("inspect", "--json", "--hash", url)
        assert result.returncode == 0, result.stderr
        files = json.loads(result.stdout)["files"]
        assert [f["path"] for f in files] == [url]
        assert {t["name"]: t["sha256"] for t in files[0]["tensors"]} == \
            expected_hashes(fixture)
    env = dict(harness.NATIVE_ENV, **s3_env(
        moto, AWS_ACCESS_KEY_ID=moto.key_id,
        AWS_SECRET_ACCESS_KEY=moto.secret))
    result = harness.ctl("inspect", "--json", "--hash",
                         "s3://models/ckpt/sharded/model.safetensors"
                         ".index.json", env=env)
    assert result.returncode == 0, result.stderr
    hashes = {t["name"]: t["sha256"]
              for f in json.loads(result.stdout)["files"]
              for t in f["tensors"]}
    assert hashes == served["sharded_hashes"]


def test_bench_a_url_against_a_parallel_download(served):
    nginx = served["nginx"]
    url = nginx.http("models/" + os.path.basename(GGUF))
    result = harness.ctl("bench", "--json", "--runs", "3", url)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["file_bytes"] == os.path.getsize(os.path.join(FIXTURES, GGUF))
    [mode] = out["results"]
    assert mode["mode"] == "remote"
    assert mode["baseline"] == "parallel_ranged_get"
    assert mode["gbps_median"] > 0 and mode["baseline_gbps_median"] > 0
    assert mode["ratio_median"] > 0
    mixed = harness.ctl("bench", url, os.path.join(FIXTURES, GGUF))
    assert mixed.returncode != 0
    assert "not both" in mixed.stderr


def test_a_server_that_ignores_range_is_refused_without_downloading(
        faulty, workdir):
    daemon = start(workdir, "--remote_source", faulty.http("norange"))
    try:
        url = faulty.http("norange/big.safetensors")
        refused = daemon.ctl("load", "big", url)
        assert refused.returncode != 0
        assert url in refused.stderr
        assert "ignored the Range header (HTTP 200)" in refused.stderr
        assert daemon.status("big") is None
    finally:
        daemon.stop(signal.SIGKILL)
    # Each refused GET stopped early in the 64 MiB body (nginx logs the
    # bytes it sent, socket buffers included).
    gets = [line.split() for line in faulty.access_log().splitlines()
            if line.startswith('"GET /norange/')]
    assert gets
    for fields in gets:
        assert fields[3] == "200"
        assert int(fields[4]) < BIG_TENSORS * BIG_BYTES // 2, fields


def moto_free_requests(moto, count):
    """Lets moto's next `count` requests through without a signature
    (moto's /moto-api/reset-auth), then enforces authentication again.
    moto checks signatures on STS AssumeRoleWithWebIdentity too, which AWS
    does not sign: the daemon's STS request is given one of these."""
    import urllib.request
    request = urllib.request.Request(moto.endpoint + "/moto-api/reset-auth",
                                     data=str(count).encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200


IRSA_ROLE = "arn:aws:iam::123456789012:role/irsa-loader"


def test_s3_web_identity_token_and_role_only(moto, served, workdir):
    # The role the token is exchanged for may read S3 (made unsigned: two
    # free requests).
    moto_free_requests(moto, 2)
    import boto3
    iam = boto3.client("iam", endpoint_url=moto.endpoint,
                       region_name="us-east-1",
                       aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_role(RoleName="irsa-loader",
                    AssumeRolePolicyDocument='{"Version": "2012-10-17"}')
    iam.put_role_policy(
        RoleName="irsa-loader", PolicyName="s3-read",
        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": '
                       '"Allow", "Action": "s3:*", "Resource": "*"}]}')
    token = os.path.join(workdir, "token")
    with open(token, "w") as out:
        out.write(SECRET_MARK + "-token\n")
    # No keys anywhere: HOME has no credentials file.
    env = s3_env(moto, AWS_WEB_IDENTITY_TOKEN_FILE=token,
                 AWS_ROLE_ARN=IRSA_ROLE, AWS_ROLE_SESSION_NAME="wt19",
                 HOME=workdir)
    daemon = start(workdir, "--remote_source", "s3://models/ckpt/", env=env)
    try:
        moto_free_requests(moto, 1)  # The STS request; S3 is signed.
        for name, fixture in (("a", SAFETENSORS), ("b", GGUF)):
            url = "s3://models/ckpt/" + os.path.basename(fixture)
            loaded = daemon.ctl("load", name, url)
            assert loaded.returncode == 0, loaded.stderr + daemon.logs()
            assert mapped_hashes(daemon, name) == expected_hashes(fixture)
        # One STS request: the second load used the kept credentials.
        metrics = stats(daemon)
        assert metrics["warmstart_remote_sts_requests_total"] == 1
        assert SECRET_MARK not in json.dumps(metrics)
    finally:
        daemon.stop(signal.SIGKILL)
    assert SECRET_MARK not in daemon.logs()


def test_s3_web_identity_missing_token_file_is_named(moto, workdir):
    token = os.path.join(workdir, "absent-token")
    env = s3_env(moto, AWS_WEB_IDENTITY_TOKEN_FILE=token,
                 AWS_ROLE_ARN=IRSA_ROLE, HOME=workdir)
    daemon = start(workdir, "--remote_source", "s3://models", env=env)
    try:
        url = "s3://models/ckpt/" + os.path.basename(SAFETENSORS)
        refused = daemon.ctl("load", "m", url)
        assert refused.returncode != 0
        assert url in refused.stderr
        assert f"AWS_WEB_IDENTITY_TOKEN_FILE {token}" in refused.stderr
        assert "No such file" in refused.stderr, refused.stderr
        assert stats(daemon).get("warmstart_remote_sts_requests_total",
                                 0) == 0
    finally:
        daemon.stop(signal.SIGKILL)


# S3 faults: moto behind nginx's TLS proxy (1 MB/s per connection), so an
# S3 load over HTTPS is slow enough to kill the server or replace the object
# in the middle of it.
S3_BIG = "s3://models/big/big.safetensors"


@pytest.fixture
def s3_faulty(moto, workdir):
    """(nginx proxying to moto over TLS, the local copy of S3_BIG)."""
    path = os.path.join(workdir, "big.safetensors")
    write_safetensors(path, BIG_TENSORS, BIG_BYTES, seed=8)
    moto.client().upload_file(path, "models", "big/big.safetensors")
    docroot = os.path.join(workdir, "doc")
    os.makedirs(docroot)
    nginx = remote_servers.Nginx(workdir, docroot, s3_upstream=moto.port)
    yield nginx, path
    nginx.stop()


def s3_proxy_env(moto, nginx):
    return {"AWS_ENDPOINT_URL": nginx.s3_endpoint(), "AWS_REGION": "us-east-1",
            "AWS_CA_BUNDLE": nginx.ca_path, "AWS_ACCESS_KEY_ID": moto.key_id,
            "AWS_SECRET_ACCESS_KEY": moto.secret}


def test_s3_over_https_killed_mid_transfer_then_back_resumes(
        moto, s3_faulty, workdir):
    nginx, path = s3_faulty
    daemon = start(workdir, "--remote_source", "s3://models/big",
                   env=s3_proxy_env(moto, nginx))
    try:
        loading = start_load(daemon, "big", S3_BIG)
        wait_bulk_started(daemon, "big")
        nginx.kill()
        nginx.start()  # Within the retries' backoff.
        out, err = loading.communicate(timeout=300)
        assert loading.returncode == 0, err + daemon.logs()
        assert mapped_hashes(daemon, "big") == safetensors_hashes(path)
        assert stats(daemon)["warmstart_remote_retries_total"] > 0
    finally:
        daemon.stop(signal.SIGKILL)
    assert moto.secret not in daemon.logs()


def test_s3_object_replaced_mid_load_fails_the_load(moto, s3_faulty,
                                                     workdir):
    nginx, path = s3_faulty
    daemon = start(workdir, "--remote_source", "s3://models/big",
                   env=s3_proxy_env(moto, nginx))
    try:
        before = resources(daemon)
        loading = start_load(daemon, "big", S3_BIG)
        wait_bulk_started(daemon, "big")
        # A new version of the object, put straight to moto.
        write_safetensors(path, BIG_TENSORS, BIG_BYTES, seed=9)
        moto.client().upload_file(path, "models", "big/big.safetensors")
        out, err = loading.communicate(timeout=300)
        assert loading.returncode != 0
        assert S3_BIG in err
        assert "changed since it was opened" in err, err
        assert_failed_and_released(daemon, "big", before)
        # A fresh load gets the new version whole.
        loaded = daemon.ctl("load", "big2", S3_BIG)
        assert loaded.returncode == 0, loaded.stderr
        assert mapped_hashes(daemon, "big2") == safetensors_hashes(path)
    finally:
        daemon.stop(signal.SIGKILL)


def test_weak_etag_is_checked_with_if_unmodified_since(faulty, workdir):
    # If-Match compares ETags strongly, so nginx answers 412 to If-Match with
    # a weak ETag even for the unchanged file: the reads send the HEAD's
    # Last-Modified as If-Unmodified-Since instead.
    daemon = start(workdir, "--remote_source", faulty.http("weak"))
    try:
        url = faulty.http("weak/big.safetensors")
        loaded = daemon.ctl("load", "big", url)
        assert loaded.returncode == 0, loaded.stderr + daemon.logs()
        assert mapped_hashes(daemon, "big") == safetensors_hashes(
            os.path.join(faulty.docroot, "weak", "big.safetensors"))
    finally:
        daemon.stop(signal.SIGKILL)
    gets = [line for line in faulty.access_log().splitlines()
            if line.startswith('"GET /weak/')]
    assert gets
    for line in gets:
        assert " 206 " in line, line
        assert line.endswith('GMT" "-"'), line  # The date, no If-Match.


def test_weak_etag_object_replaced_mid_load_fails_the_load(faulty, workdir):
    daemon = start(workdir, "--remote_source", faulty.http("weak"))
    try:
        before = resources(daemon)
        path = os.path.join(faulty.docroot, "weak", "big.safetensors")
        url = faulty.http("weak/big.safetensors")
        loading = start_load(daemon, "big", url)
        wait_bulk_started(daemon, "big")
        # Last-Modified has one-second steps: the new version is dated
        # later than the one opened, as any later write would be.
        write_safetensors(path + ".new", BIG_TENSORS, BIG_BYTES, seed=11)
        stat = os.stat(path)
        os.utime(path + ".new", (stat.st_atime + 2, stat.st_mtime + 2))
        os.replace(path + ".new", path)
        out, err = loading.communicate(timeout=300)
        assert loading.returncode != 0
        assert url in err and "changed since it was opened" in err, err
        assert_failed_and_released(daemon, "big", before)
    finally:
        daemon.stop(signal.SIGKILL)
