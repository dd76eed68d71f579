"""Real registry peers for the integration tests: an OCI image built from random bytes, Debian's
docker-registry (distribution 2.8) with TLS and filesystem storage, nginx in front of it answering
blob GETs with a 307 to a data endpoint (as ACR does), and skopeo run with a hermetic
configuration (no system registries.conf, no auth files, no proxy variables unless given).

Every wait is bounded in count and time; every process is stopped by its own pid.
"""

import ctypes
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import time

REGISTRY_BINARY = "/usr/bin/docker-registry"
SKOPEO_BINARY = "/usr/bin/skopeo"
NGINX_BINARY = "/usr/sbin/nginx"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _layer_tar(files):
    """A reproducible tar (fixed mtime, owner, mode) holding `files` {path: bytes}."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class OciImage:
    """A minimal OCI image layout in `directory` (oci-layout, index.json, blobs/sha256/...) with
    `layer_sizes` gzip layers of random file content, tagged `tag`. Attributes after build():
    layer_digests (["sha256:..."]), config_digest, manifest_digest, blob_digests (all three kinds
    of blob), total_bytes."""

    def __init__(self, directory, tag="test", layer_sizes=(64 * 1024, 1536 * 1024)):
        self.directory = directory
        self.tag = tag
        self.layer_sizes = layer_sizes
        self.layer_digests = []
        self.config_digest = None
        self.manifest_digest = None

    def _write_blob(self, data):
        hexdigest = _sha256(data)
        path = os.path.join(self.directory, "blobs", "sha256", hexdigest)
        with open(path, "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + hexdigest, "size": len(data)}

    def build(self):
        os.makedirs(os.path.join(self.directory, "blobs", "sha256"), exist_ok=True)
        layers, diff_ids = [], []
        for index, size in enumerate(self.layer_sizes):
            # Random bytes do not compress, so the blob is about as big as the file.
            files = {
                f"acr-egress-test/layer{index}/random.bin": os.urandom(size),
                f"acr-egress-test/layer{index}/note.txt": os.urandom(16).hex().encode() + b"\n",
            }
            tar = _layer_tar(files)
            diff_ids.append("sha256:" + _sha256(tar))
            blob = gzip.compress(tar, mtime=0)
            layers.append(dict(mediaType=OCI_LAYER_GZIP, **self._write_blob(blob)))
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "acr-egress integration test"} for _ in layers],
        }
        config_blob = json.dumps(config, sort_keys=True).encode()
        config_ref = dict(mediaType=OCI_CONFIG, **self._write_blob(config_blob))
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_ref,
                    "layers": layers}
        manifest_blob = json.dumps(manifest, sort_keys=True).encode()
        manifest_ref = dict(mediaType=OCI_MANIFEST, **self._write_blob(manifest_blob))
        manifest_ref["annotations"] = {"org.opencontainers.image.ref.name": self.tag}
        with open(os.path.join(self.directory, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(os.path.join(self.directory, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [manifest_ref]}, f)
        self.layer_digests = [layer["digest"] for layer in layers]
        self.config_digest = config_ref["digest"]
        self.manifest_digest = manifest_ref["digest"]
        self.total_bytes = sum(layer["size"] for layer in layers) + config_ref["size"]
        return self

    @property
    def blob_digests(self):
        return self.layer_digests + [self.config_digest]


def dir_blob_digests(out_dir):
    """{digest: sha256 of the file's bytes} for every blob skopeo's dir: transport wrote (files
    named by their hex digest; manifest.json and version are not blobs)."""
    found = {}
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
            found["sha256:" + name] = "sha256:" + file_sha256(path)
    return found


def wait_for_tcp(host, port, timeout=20.0, proc=None):
    """Polls until host:port accepts a TCP connection. Raises RuntimeError on timeout or if
    `proc` exits first."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not open within {timeout} s")


def port_free_on(hosts, port):
    """True if `port` can be bound on every address in `hosts`."""
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def common_free_port(hosts, attempts=50):
    """A TCP port that is free on every address of `hosts` (bounded number of tries)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if port_free_on(hosts, port):
            return port
    raise RuntimeError(f"no common free port on {hosts} after {attempts} tries")


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGTERM it when the test process dies, even by SIGKILL."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class _Process:
    """A child process with its output in a file; stop() ends it by pid (TERM, then KILL)."""

    proc = None
    log_path = None

    def _spawn(self, argv, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env,
                                     preexec_fn=_die_with_parent)

    def log_text(self):
        if self.log_path is None or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Registry(_Process):
    """docker-registry serving TLS on host:port with filesystem storage under `directory`.
    `argv_prefix` (e.g. ["ip", "netns", "exec", NS]) runs it elsewhere; then readiness is
    checked by the caller's namespace, so the caller must be in the same one."""

    def __init__(self, directory, host, port, cert, key, argv_prefix=()):
        self.directory = directory
        self.host = host
        self.port = port
        self.cert = cert
        self.key = key
        self.argv_prefix = list(argv_prefix)

    def start(self, timeout=30.0):
        storage = os.path.join(self.directory, "storage")
        os.makedirs(storage, exist_ok=True)
        config_path = os.path.join(self.directory, "registry.yml")
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        # JSON is YAML; json.dumps quotes every path safely.
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": storage},
                "cache": {"blobdescriptor": "inmemory"},
                "redirect": {"disable": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": address,
                "secret": os.urandom(16).hex(),
                "tls": {"certificate": self.cert, "key": self.key},
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        with open(config_path, "w") as f:
            json.dump(config, f, indent=1)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.directory}
        self._spawn(self.argv_prefix + [REGISTRY_BINARY, "serve", config_path],
                    os.path.join(self.directory, "registry.log"), env=env)
        try:
            wait_for_tcp(self.host, self.port, timeout=timeout, proc=self.proc)
        except RuntimeError as error:
            raise RuntimeError(f"docker-registry did not start: {error}\n{self.log_text()}")
        return self

    def __enter__(self):
        return self.start()

    @property
    def hostport(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Nginx(_Process):
    """nginx with a configuration written by the caller (the `http { ... }` body); every path it
    writes lives under `directory`."""

    def __init__(self, directory, http_body, listen, argv_prefix=()):
        self.directory = directory
        self.http_body = http_body
        self.listen = listen  # [(host, port)] to wait for
        self.argv_prefix = list(argv_prefix)

    def start(self, timeout=20.0):
        d = self.directory
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        conf = f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 128; }}
http {{
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  log_format acr '$server_name $request_method $request_uri $status $body_bytes_sent';
  access_log {d}/access.log acr;
{self.http_body}
}}
"""
        conf_path = os.path.join(d, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        check = subprocess.run([NGINX_BINARY, "-t", "-p", d, "-c", conf_path], capture_output=True,
                               timeout=30)
        if check.returncode != 0:
            raise RuntimeError("nginx rejected its configuration:\n" + check.stderr.decode())
        self._spawn(self.argv_prefix + [NGINX_BINARY, "-p", d, "-c", conf_path,
                                        "-g", "daemon off;"], os.path.join(d, "nginx.out"))
        for host, port in self.listen:
            try:
                wait_for_tcp(host, port, timeout=timeout, proc=self.proc)
            except RuntimeError as error:
                raise RuntimeError(f"nginx did not start: {error}\n{self.error_log()}")
        return self

    def __enter__(self):
        return self.start()

    def access_lines(self):
        path = os.path.join(self.directory, "access.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [line.split() for line in f if line.strip()]

    def error_log(self):
        path = os.path.join(self.directory, "error.log")
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            return f.read()


class Skopeo:
    """skopeo with a hermetic configuration: an accept-anything signature policy, an empty
    registries.conf, HOME and TMPDIR in `directory`, and no proxy variables except the ones
    given to run()."""

    def __init__(self, directory, argv_prefix=()):
        self.directory = directory
        self.argv_prefix = list(argv_prefix)
        os.makedirs(directory, exist_ok=True)
        self.policy = os.path.join(directory, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        self.registries_conf = os.path.join(directory, "registries.conf")
        with open(self.registries_conf, "w") as f:
            f.write('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
        self.tmp = os.path.join(directory, "tmp")
        os.makedirs(self.tmp, exist_ok=True)

    def env(self, extra=None):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.directory,
            "TMPDIR": self.tmp,
            "CONTAINERS_REGISTRIES_CONF": self.registries_conf,
            "REGISTRY_AUTH_FILE": os.path.join(self.directory, "auth.json"),
        }
        env.update(extra or {})
        return env

    def run(self, args, env=None, timeout=120):
        """Runs `skopeo --policy P ARGS...`; returns CompletedProcess (text), never raises on a
        non-zero exit."""
        argv = self.argv_prefix + [SKOPEO_BINARY, "--policy", self.policy,
                                   "--command-timeout", f"{int(timeout) - 5}s"] + list(args)
        return subprocess.run(argv, env=self.env(env), capture_output=True, text=True,
                              timeout=timeout)

    def push_oci(self, oci_dir, tag, dest, cert_dir, timeout=120):
        """Copies oci:DIR:TAG to docker://DEST directly (no proxy), verifying TLS with the CA in
        cert_dir. Raises with skopeo's output on failure."""
        result = self.run(["copy", "--dest-cert-dir", cert_dir, "--dest-no-creds",
                           "--preserve-digests", f"oci:{oci_dir}:{tag}", f"docker://{dest}"],
                          env={"NO_PROXY": "*", "no_proxy": "*"}, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"skopeo push to {dest} failed:\n{result.stdout}{result.stderr}")
        return result


def cert_dir_with_ca(directory, ca_path):
    """A directory holding only the CA certificate as ca.crt: what skopeo's --*-cert-dir reads."""
    os.makedirs(directory, exist_ok=True)
    shutil.copyfile(ca_path, os.path.join(directory, "ca.crt"))
    return directory


def https_get(host, port, path, ca_path, server_hostname, timeout=10.0):
    """GET https://server_hostname{path} connecting to host:port directly (no proxy, no DNS);
    returns (status, body bytes)."""
    context = ssl.create_default_context(cafile=ca_path)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            request = (f"GET {path} HTTP/1.1\r\nHost: {server_hostname}:{port}\r\n"
                       "Connection: close\r\n\r\n").encode()
            tls.sendall(request)
            chunks = []
            for _ in range(100000):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def acr_front_http_body(cert, key, login_host, login_ip, data_host, data_ip, port, registry):
    """nginx `http {}` body that plays ACR in front of `registry` (a Registry): `login_host` on
    login_ip:port proxies /v2/ to the registry but answers every blob GET with
    `307 Location: https://data_host:port/v2/.../blobs/sha256:...?<SAS-like query>`, and
    `data_host` on data_ip:port serves only blob GETs, from the registry."""
    upstream = f"https://{registry.hostport}"
    blob = r'~ "^/v2/.+/blobs/sha256:[0-9a-f]{64}$"'  # quoted: nginx reads { as a block
    return f"""
  ssl_certificate {cert};
  ssl_certificate_key {key};
  proxy_http_version 1.1;
  proxy_ssl_verify off;
  proxy_buffering off;
  client_max_body_size 0;
  server {{
    listen {login_ip}:{port} ssl;
    server_name {login_host};
    location /v2/ {{
      proxy_pass {upstream};
      proxy_set_header Host $http_host;
    }}
    location {blob} {{
      if ($request_method = GET) {{
        return 307 https://{data_host}:{port}$uri?se=2099-01-01T00%3A00%3A00Z&sig=acr-egress-test;
      }}
      proxy_pass {upstream};
      proxy_set_header Host $http_host;
    }}
  }}
  server {{
    listen {data_ip}:{port} ssl;
    server_name {data_host};
    location {blob} {{
      limit_except GET {{ deny all; }}
      proxy_pass {upstream};
      proxy_set_header Host {registry.hostport};
    }}
    location / {{
      return 404;
    }}
  }}
"""
