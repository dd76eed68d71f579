"""Real registry peers for the integration tests: an OCI image built from random bytes, Debian's
docker-registry (distribution 2.8) with TLS and filesystem storage, nginx in front of it answering
blob GETs with a 307 to a data endpoint (as ACR does), skopeo run with a hermetic configuration
(no system registries.conf, no auth files, no proxy variables unless given), and rootful podman
isolated from the machine (private storage and state, a private mount namespace, and a resolver
trap that records any name podman tried to resolve itself).

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
import threading
import time

import harness

REGISTRY_BINARY = "/usr/bin/docker-registry"
SKOPEO_BINARY = "/usr/bin/skopeo"
PODMAN_BINARY = "/usr/bin/podman"
# Debian's docker.io, by full path: a machine may have another docker CLI earlier in PATH.
DOCKERD_BINARY = "/usr/sbin/dockerd"
DOCKER_BINARY = "/usr/bin/docker"
UNSHARE_BINARY = "/usr/bin/unshare"
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
    layer_digests (["sha256:..."]), diff_ids (the uncompressed layers' digests, in order),
    file_digests ({path in the image's root file system: "sha256:..." of its content}),
    config_digest, manifest_digest, blob_digests (all three kinds of blob), total_bytes."""

    def __init__(self, directory, tag="test", layer_sizes=(64 * 1024, 1536 * 1024)):
        self.directory = directory
        self.tag = tag
        self.layer_sizes = layer_sizes
        self.layer_digests = []
        self.diff_ids = []
        self.file_digests = {}
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
        layers, diff_ids, file_digests = [], [], {}
        for index, size in enumerate(self.layer_sizes):
            # Random bytes do not compress, so the blob is about as big as the file.
            files = {
                f"acr-egress-test/layer{index}/random.bin": os.urandom(size),
                f"acr-egress-test/layer{index}/note.txt": os.urandom(16).hex().encode() + b"\n",
            }
            file_digests.update({path: "sha256:" + _sha256(data) for path, data in files.items()})
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
        self.diff_ids = diff_ids
        self.file_digests = file_digests
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


# Runs in a private mount namespace (unshare --mount --propagation private), then execs "$@" with
# /var/lib an empty tmpfs that vanishes with the namespace.
_PRIVATE_VAR_LIB_SCRIPT = 'mount -t tmpfs -o mode=0755 acr-egress-test /var/lib && exec "$@"'


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
        # Like podman (see _PODMAN_NAMESPACE_SCRIPT), rootful skopeo writes its blob-info cache
        # under /var/lib/containers whatever its flags say: give it a private, empty /var/lib.
        argv = self.argv_prefix + [UNSHARE_BINARY, "--mount", "--propagation", "private", "--",
                                   "sh", "-ec", _PRIVATE_VAR_LIB_SCRIPT, "sh",
                                   SKOPEO_BINARY, "--policy", self.policy,
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


class DnsTrap(harness.UdpDnsServer):
    """A resolver that resolves nothing: UDP on `address`, port 53 (the only port resolv.conf can
    name), answering REFUSED to every query and recording the names asked (`queries()`). A
    client whose /etc/resolv.conf names only this address (see Podman) sends no DNS query off the
    machine, and every name it tried to resolve itself shows up here. The address is random in
    127.53.0.0/16, so that two runs on one machine do not collide (bounded tries). UDP only: a
    REFUSED answer gives a stub resolver no reason to retry over TCP."""

    def __init__(self, attempts=20):
        self._names = []
        self._lock = threading.Lock()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(attempts):
            raw = os.urandom(2)
            address = f"127.53.{raw[0]}.{1 + raw[1] % 254}"
            try:
                sock.bind((address, 53))
                break
            except PermissionError:
                sock.close()
                raise RuntimeError("DnsTrap binds port 53: run as root (podman runs rootful)")
            except OSError:
                continue
        else:
            sock.close()
            raise RuntimeError(f"no free loopback address for port 53 after {attempts} tries")
        self.address = address
        super().__init__(sock)

    def answer(self, query):
        name, end = harness.dns_question(query)
        with self._lock:
            self._names.append(name)
        return None if end is None else harness.dns_reply(query, end, 5)  # REFUSED

    def queries(self):
        """Every query name received so far, in order (None for one that did not parse)."""
        with self._lock:
            return list(self._names)


# Runs in podman's private mount namespace (unshare --mount --propagation private), then execs
# podman: $0 is the resolv.conf to use, "$@" the podman command line. Rootful podman 4.3 writes
# its blob-info cache to /var/lib/containers/cache/blob-info-cache-v1.boltdb whatever --root
# says, so /var/lib is an empty tmpfs there; both mounts vanish with the namespace when podman
# exits, and the machine's mounts never see them (private propagation).
_PODMAN_NAMESPACE_SCRIPT = ('mount -t tmpfs -o mode=0755 acr-egress-test /var/lib && '
                            'mount --bind "$0" /etc/resolv.conf && exec "$@"')


class Podman:
    """Rootful podman isolated from the machine, for pulls only (no container ever runs):
      - storage (vfs driver), runroot, libpod state and tmp, file locks (no /dev/shm segment),
        network configuration, HOME, TMPDIR and XDG_RUNTIME_DIR all live under `directory`;
      - its own containers.conf (CONTAINERS_CONF: no system file is read; no events are logged),
        storage.conf, registries.conf (no search registries, short names disabled), signature
        policy and empty auth file, and no proxy variables except the ones given to run();
      - every command runs in a private mount namespace where /var/lib is an empty tmpfs and
        /etc/resolv.conf names only `nameserver` (a DnsTrap address): podman cannot reach the
        machine's resolver, and a name it tried to resolve itself is recorded by the trap.
    stop() is not needed: every podman command is one bounded subprocess, killed (by its pid, and
    by PR_SET_PDEATHSIG if the test dies) when it overruns its timeout."""

    def __init__(self, directory, nameserver):
        self.directory = directory
        d = {name: os.path.join(directory, name) for name in
             ("root", "runroot", "libpod-tmp", "tmp", "home", "xdg-runtime", "networks")}
        for path in d.values():
            os.makedirs(path, mode=0o700, exist_ok=True)
        self.root, self.runroot = d["root"], d["runroot"]
        self.tmp, self.home, self.xdg_runtime = d["tmp"], d["home"], d["xdg-runtime"]
        q = json.dumps  # TOML basic strings accept JSON string escapes for plain paths
        self.containers_conf = os.path.join(directory, "containers.conf")
        with open(self.containers_conf, "w") as f:
            f.write("[engine]\n"
                    'cgroup_manager = "cgroupfs"\n'
                    'events_logger = "none"\n'
                    'lock_type = "file"\n'
                    f"tmp_dir = {q(d['libpod-tmp'])}\n"
                    f"static_dir = {q(os.path.join(self.root, 'libpod'))}\n"
                    f"volume_path = {q(os.path.join(self.root, 'volumes'))}\n"
                    f"image_copy_tmp_dir = {q(self.tmp)}\n"
                    "[network]\n"
                    f"network_config_dir = {q(d['networks'])}\n")
        self.storage_conf = os.path.join(directory, "storage.conf")
        with open(self.storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\nrunroot = {q(self.runroot)}\n'
                    f"graphroot = {q(self.root)}\n")
        self.registries_conf = os.path.join(directory, "registries.conf")
        with open(self.registries_conf, "w") as f:
            f.write('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
        self.policy = os.path.join(directory, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        self.auth_file = os.path.join(directory, "auth.json")  # podman insists that it exists
        with open(self.auth_file, "w") as f:
            json.dump({"auths": {}}, f)
        self.resolv_conf = os.path.join(directory, "resolv.conf")
        with open(self.resolv_conf, "w") as f:
            f.write(f"nameserver {nameserver}\noptions attempts:1 timeout:1\n")

    def env(self, extra=None):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "TMPDIR": self.tmp,
            "XDG_RUNTIME_DIR": self.xdg_runtime,
            "CONTAINERS_CONF": self.containers_conf,
            "CONTAINERS_STORAGE_CONF": self.storage_conf,
            "CONTAINERS_REGISTRIES_CONF": self.registries_conf,
            "REGISTRY_AUTH_FILE": self.auth_file,
        }
        env.update(extra or {})
        return env

    def run(self, args, env=None, timeout=120):
        """Runs `podman --root R --runroot RR --storage-driver vfs ARGS...` in its private mount
        namespace; returns CompletedProcess (text), never raises on a non-zero exit."""
        argv = [UNSHARE_BINARY, "--mount", "--propagation", "private", "--",
                "sh", "-ec", _PODMAN_NAMESPACE_SCRIPT, self.resolv_conf,
                PODMAN_BINARY, "--root", self.root, "--runroot", self.runroot,
                "--storage-driver", "vfs"] + list(args)
        return subprocess.run(argv, env=self.env(env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent)

    def pull(self, reference, cert_dir, env=None, timeout=120):
        """`podman pull REFERENCE` with `env` (e.g. HTTPS_PROXY), verifying TLS with the CA in
        cert_dir and this instance's signature policy; returns CompletedProcess."""
        return self.run(["pull", "--signature-policy", self.policy, "--cert-dir", cert_dir,
                         reference], env=env, timeout=timeout)

    def _checked(self, args, timeout=60):
        result = self.run(args, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def image_exists(self, reference):
        """True if local storage holds `reference` (podman image exists: 0 yes, 1 no)."""
        result = self.run(["image", "exists", reference], timeout=60)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"podman image exists {reference} failed ({result.returncode}):"
                               f"\n{result.stdout}{result.stderr}")
        return result.returncode == 0

    def inspect(self, reference):
        """`podman image inspect REFERENCE`, parsed (one dict)."""
        return json.loads(self._checked(["image", "inspect", reference]).stdout)[0]

    def image_file_digests(self, reference):
        """{path: "sha256:..."} of every regular file in the image's root file system, read
        through `podman image mount` (with vfs a plain directory in storage, so it outlives the
        namespace) and unmounted afterwards."""
        mountpoint = self._checked(["image", "mount", reference]).stdout.strip()
        try:
            found = {}
            for top, _, names in os.walk(mountpoint):
                for name in names:
                    path = os.path.join(top, name)
                    if os.path.isfile(path) and not os.path.islink(path):
                        found[os.path.relpath(path, mountpoint)] = "sha256:" + file_sha256(path)
            return found
        finally:
            self._checked(["image", "unmount", reference])


# Runs in dockerd's private mount namespace, then execs dockerd: $0 is the resolv.conf to use, $1
# a directory of "HOST:PORT" folders each holding ca.crt, "$@" after shift the dockerd command
# line. dockerd 20.10 keeps its trust key and certs.d under /etc/docker whatever its flags say, so
# /etc/docker is an empty tmpfs there, given the test CA in docker's own certs.d layout.
_DOCKERD_NAMESPACE_SCRIPT = ('mount -t tmpfs -o mode=0755 acr-egress-test /etc/docker && '
                             'cp -r "$1" /etc/docker/certs.d && '
                             'mount --bind "$0" /etc/resolv.conf && shift && exec "$@"')


class Dockerd(_Process):
    """Debian's dockerd (docker.io 20.10) isolated from the machine, for pulls only: data root,
    exec root, pid file and API socket under `directory`; no bridge and no iptables rules; vfs
    storage; a private mount namespace where /etc/docker is a tmpfs holding certs.d with
    `ca_path` for each of `registries` ("host:port"), and /etc/resolv.conf names only
    `nameserver` (a DnsTrap). `env` is the daemon's environment: what a systemd drop-in's
    Environment= lines give it. The containerd it starts lives in its exec root and ends with it.
    """

    def __init__(self, directory, nameserver, ca_path, registries, env):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.socket = os.path.join(directory, "docker.sock")
        self.resolv_conf = os.path.join(directory, "resolv.conf")
        with open(self.resolv_conf, "w") as f:
            f.write(f"nameserver {nameserver}\noptions attempts:1 timeout:1\n")
        self.certs_d = os.path.join(directory, "certs.d")
        for registry in registries:
            os.makedirs(os.path.join(self.certs_d, registry), exist_ok=True)
            shutil.copy(ca_path, os.path.join(self.certs_d, registry, "ca.crt"))
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "HOME": directory, **env}

    def start(self, timeout=60.0):
        argv = [UNSHARE_BINARY, "--mount", "--propagation", "private", "--",
                "sh", "-ec", _DOCKERD_NAMESPACE_SCRIPT, self.resolv_conf, self.certs_d,
                DOCKERD_BINARY, "--host", f"unix://{self.socket}",
                "--data-root", os.path.join(self.directory, "data"),
                "--exec-root", os.path.join(self.directory, "exec"),
                "--pidfile", os.path.join(self.directory, "docker.pid"),
                "--config-file", os.path.join(self.directory, "daemon.json"),
                "--bridge", "none", "--iptables=false", "--ip6tables=false",
                "--storage-driver", "vfs"]
        with open(os.path.join(self.directory, "daemon.json"), "w") as f:
            f.write("{}\n")
        self._spawn(argv, os.path.join(self.directory, "dockerd.log"), env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}):\n" +
                                   self.log_text())
            if self.cli(["version", "--format", "{{.Server.Version}}"], timeout=10).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dockerd not ready within {timeout}s:\n" + self.log_text())

    def cli(self, args, timeout=120):
        """`docker -H unix://SOCKET ARGS...` (the client carries no proxy setting: the daemon
        pulls); returns CompletedProcess (text), never raises on a non-zero exit."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "HOME": self.directory, "DOCKER_CONFIG": os.path.join(self.directory, "cli")}
        return subprocess.run([DOCKER_BINARY, "--host", f"unix://{self.socket}"] + list(args),
                              env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def inspect(self, reference):
        result = self.cli(["image", "inspect", reference], timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"docker image inspect failed:\n{result.stdout}{result.stderr}")
        return json.loads(result.stdout)[0]

    def image_exists(self, reference):
        return self.cli(["image", "inspect", reference], timeout=60).returncode == 0


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
