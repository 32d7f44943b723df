"""Real servers on loopback for the remote-source tests: nginx from Debian
serving a directory over HTTP and HTTPS (with Range requests; the
certificate is made here with openssl), and moto's S3 server from PyPI with
authentication enforced. Each runs under /tmp and is stopped by stop().
"""
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

NGINX = "/usr/sbin/nginx"


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, process, what, timeout=30):
    """Waits until 127.0.0.1:`port` accepts connections; fails when
    `process` exits first or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} in {timeout} s")



def stop_server(process, log):
    """Stops `process` (SIGTERM, SIGKILL after 10 s) and closes its log."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log.close()

class Nginx:
    """nginx serving `docroot` on http://127.0.0.1:{http_port}/ and
    https://127.0.0.1:{https_port}/ with a self-signed certificate for
    127.0.0.1 (its PEM at `ca_path`).

    Faults, by location: files under docroot/slow/ are sent at 1 MB/s per
    connection; requests under docroot/burst/ are limited to 2 a second,
    the others answered 503 at once (bursts of 503s); docroot/norange/
    ignores Range headers (answers 200 with the whole file); docroot/weak/
    is sent at 1 MB/s with a weak ETag. The access log records each
    request's status, body bytes sent, Range, If-Unmodified-Since and
    If-Match.
    HTTPS serves docroot/slow/ at 1 MB/s per connection too.

    With `s3_upstream` (a moto server's port), https://127.0.0.1:{s3_port}/
    is a TLS proxy in front of it, sending at 1 MB/s per connection (S3 over
    HTTPS, slow enough to act on mid-load); the Host header is passed on, so
    SigV4 signatures made for the proxy hold at moto."""

    def __init__(self, workdir, docroot, s3_upstream=None):
        self.dir = os.path.join(workdir, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.docroot = docroot
        self.ca_path = os.path.join(self.dir, "cert.pem")
        key = os.path.join(self.dir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", key, "-out", self.ca_path, "-days", "1",
             "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True)
        self.http_port = free_port()
        self.https_port = free_port()
        self.s3_port = free_port() if s3_upstream else None
        s3_proxy = f"""
  server {{
    listen 127.0.0.1:{self.s3_port} ssl;
    ssl_certificate {self.ca_path};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://127.0.0.1:{s3_upstream};
      proxy_set_header Host $http_host;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      limit_rate 1m;
    }}
  }}""" if s3_upstream else ""
        temp = os.path.join(self.dir, "temp")
        # A root nginx master hands requests to workers of another user,
        # which could not read a 0700 test directory.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as out:
            out.write(f"""{user}
worker_processes 1;
error_log {self.dir}/error.log info;
pid {self.dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  log_format ranges '"$request" $status $body_bytes_sent "$http_range" '
                    '"$http_if_unmodified_since" "$http_if_match"';
  # nginx's own ETag made weak: W/"<mtime>-<size>". nginx's filters that
  # weaken ETags (gzip, sub_filter, ssi) also drop Content-Length and byte
  # ranges, so this is how nginx serves ranges under a weak ETag.
  map $sent_http_etag $weak_etag {{ ~^"(?<tag>.*)"$ 'W/"$tag"'; }}
  access_log {self.dir}/access.log ranges;
  limit_req_zone $server_port zone=burst:1m rate=2r/s;
  client_body_temp_path {temp}; proxy_temp_path {temp};
  fastcgi_temp_path {temp}; uwsgi_temp_path {temp}; scgi_temp_path {temp};
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{self.http_port};
    root {docroot};
    location /slow/ {{ limit_rate 1m; }}
    location /norange/ {{ max_ranges 0; }}
    location /weak/ {{ add_header ETag $weak_etag; limit_rate 1m; }}
    location /burst/ {{
      limit_req zone=burst nodelay;
      limit_req_status 503;
    }}
  }}
  server {{
    listen 127.0.0.1:{self.https_port} ssl;
    ssl_certificate {self.ca_path};
    ssl_certificate_key {key};
    root {docroot};
    location /slow/ {{ limit_rate 1m; }}
  }}{s3_proxy}
}}
""")
        self.conf = conf
        self.start()

    def start(self):
        """Starts (or, after kill(), restarts) nginx on the same ports."""
        self.log = open(os.path.join(self.dir, "stderr.log"), "a")
        self.process = subprocess.Popen(
            [NGINX, "-p", self.dir, "-c", self.conf, "-g", "daemon off;"],
            stdout=self.log, stderr=self.log)
        wait_listening(self.http_port, self.process, "nginx")
        wait_listening(self.https_port, self.process, "nginx")
        if self.s3_port:
            wait_listening(self.s3_port, self.process, "nginx")

    def kill(self):
        """Stops nginx at once: SIGTERM is its fast shutdown, which closes
        every connection mid-transfer."""
        self.stop()

    def http(self, path=""):
        return f"http://127.0.0.1:{self.http_port}/{path}"

    def https(self, path=""):
        return f"https://127.0.0.1:{self.https_port}/{path}"

    def s3_endpoint(self):
        return f"https://127.0.0.1:{self.s3_port}"

    def access_log(self):
        with open(os.path.join(self.dir, "access.log")) as log:
            return log.read()

    def stop(self):
        stop_server(self.process, self.log)


class Moto:
    """moto's S3 server on 127.0.0.1:{port} with authentication enforced
    (INITIAL_NO_AUTH_ACTION_COUNT: the first requests, which make an IAM
    user with an S3 policy and its access key, are free; every later one
    must be signed with a known key). `key_id` and `secret` are that
    user's key."""

    FREE_ACTIONS = 4

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "moto")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ,
                   INITIAL_NO_AUTH_ACTION_COUNT=str(self.FREE_ACTIONS),
                   AWS_DEFAULT_REGION="us-east-1")
        self.log = open(os.path.join(self.dir, "moto.log"), "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
             "-p", str(self.port)],
            stdout=self.log, stderr=self.log, env=env)
        wait_listening(self.port, self.process, "moto")
        import boto3
        iam = boto3.client("iam", endpoint_url=self.endpoint,
                           region_name="us-east-1",
                           aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap")
        iam.create_user(UserName="loader")
        policy = iam.create_policy(
            PolicyName="s3-all",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
                           '[{"Effect": "Allow", "Action": "s3:*", '
                           '"Resource": "*"}]}')
        iam.attach_user_policy(UserName="loader",
                               PolicyArn=policy["Policy"]["Arn"])
        key = iam.create_access_key(UserName="loader")["AccessKey"]
        self.key_id = key["AccessKeyId"]
        self.secret = key["SecretAccessKey"]

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self, key_id=None, secret=None):
        """A boto3 S3 client signed with the user's key (or another)."""
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint,
                            region_name="us-east-1",
                            aws_access_key_id=key_id or self.key_id,
                            aws_secret_access_key=secret or self.secret)

    def stop(self):
        stop_server(self.process, self.log)
