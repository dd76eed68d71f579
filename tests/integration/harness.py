"""Shared harness for the acr-egress integration tests: real peers on loopback, started on free
ports, stopped by their own pid, every wait bounded in count and time.

Environment (set by ctest, see tests/CMakeLists.txt):
  ACR_BINARY      the acr-egress binary under test (an ASan+UBSan build in CI)
  ACR_SHARED_DIR  the shared data folder (ClientHello captures, service tags)
  ACR_SOURCE_DIR  the source tree (fallback for ACR_SHARED_DIR: $ACR_SOURCE_DIR/../shared)

Network discipline: every peer here listens on 127.0.0.0/8 (or ::1, or inside a namespace the
test created) and nothing resolves a name through the machine's resolver. The proxy resolves
through a `Dnsmasq` the test starts (`--dns-server`); curl reaches names only through the proxy
(`-x`) or with `--resolve` / `--connect-to` (see `curl()`).

Public API (other modules depend on it; keep it stable):
  free_port(host='127.0.0.1') -> int
  TempDir                       context manager, .path, .cleanup()
  make_ca_and_cert(dirpath, names, ips) -> {'ca', 'cert', 'key', 'ca_key'} (paths)
  Dnsmasq(records, port=None, ttl=1)    context manager; .port, .address ("127.0.0.1:P"),
                                        .host ("127.0.0.1"), .queries() -> [names asked]
  Proxy(args, env=None)         context manager; .access_log(), .wait_for_log(), .stop(),
                                .stderr_text(), .pid; also .wait_for_log_count(),
                                .listen_address(kind), .send_signal(), .wait(timeout)
  TlsServer(host, port, cert, key, handler='echo'|'http'|callable)  .snis, .port
  RawServer(host, port, reply=None, handler=None)  .received(i), .connections, .wait_for_bytes()
  connect_via_proxy(proxy_addr, target, payload=b'', head=None) -> (status, headers, body, sock)
                                sock is a TunnelSocket: .acr_client ("ip:port", the access
                                log's `client`), .acr_early, .acr_close
  curl(*args, timeout=30) -> subprocess.CompletedProcess
  read_captures() -> {name: bytes}
Helpers for tests: isolate_in_netns(cls), client_hello(server_hostname), hello_sni(data), reframe_hello(data, sizes),
MemoryTlsClient (a real handshake whose first flight the test sends itself), send_dribbled(),
wait_until(predicate, timeout), recv_until_closed(sock, timeout), is_reset(sock, timeout),
set_rst_on_close(sock).
"""

import contextlib
import json
import os
import random
import resource
import shutil
import signal as signal_module
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

DNSMASQ_BINARY = "/usr/sbin/dnsmasq"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


# --------------------------------------------------------------------------------------------
# Paths and small utilities
# --------------------------------------------------------------------------------------------

def binary_path():
    """The acr-egress binary under test ($ACR_BINARY); fails loudly when it is not set."""
    path = os.environ.get("ACR_BINARY")
    if not path:
        raise RuntimeError("ACR_BINARY is not set: point it at the acr-egress binary under test")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"ACR_BINARY={path} is not an executable file")
    return path


def shared_dir():
    """The shared data folder: $ACR_SHARED_DIR, else $ACR_SOURCE_DIR/../shared."""
    path = os.environ.get("ACR_SHARED_DIR")
    if not path:
        source = os.environ.get("ACR_SOURCE_DIR",
                                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                             ".."))
        path = os.path.join(source, "..", "shared")
    return os.path.abspath(path)


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host="127.0.0.1"):
    """A TCP port that is free on `host` right now and whose UDP twin is free too (so the same
    number serves a DNS server). Races with other processes are possible but unlikely."""
    family = _family(host)
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port found on {host} in 50 attempts")


def common_free_port(hosts, attempts=50):
    """A port free (as free_port() means it) on hosts[0] and free for TCP on every other address
    of `hosts`, so that several servers can share one port number (bounded number of tries)."""
    for _ in range(attempts):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket(_family(host), socket.SOCK_STREAM) as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no common free port on {hosts} after {attempts} tries")


def echo_handler(conn, index, record):
    """A RawServer handler that echoes every byte back (and records it) until the peer closes."""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            record += data
            conn.sendall(data)
    except OSError:
        return


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Polls `predicate` until it returns a true value (returned) or `timeout` seconds pass
    (AssertionError naming `message`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def isolate_in_netns(cls):
    """Moves the calling thread (the unittest main thread) into a fresh network namespace that
    holds only `lo` (so 127.0.0.0/8 and ::1 work and nothing routes off the machine) for the
    rest of test class `cls`; processes and threads started afterwards live there too. The
    namespace is left and deleted by a class cleanup registered first, so it runs last. Returns
    True when isolated, False when namespaces are unavailable (not root, no `ip netns`): tests
    that make the proxy face addresses outside loopback should then skip those cases."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    try:
        from netns_fixtures import NetNs
        ns = NetNs([])
        ns.create()
    except Exception:  # no namespace support here: run in the host namespace
        return False
    cls.addClassCleanup(ns.destroy)
    ns.enter()
    return True


class TempDir:
    """A private temporary folder (`.path`), removed by `cleanup()` or on context exit."""

    def __init__(self, prefix="acr-it-"):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def cleanup(self):
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


def _run(argv, timeout=60, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result


def make_ca_and_cert(dirpath, names, ips):
    """Creates, with the openssl CLI, a test CA and a server certificate signed by it whose
    subjectAltName lists DNS `names` and IP `ips` (P-256 keys, valid one day). Returns the paths
    {'ca': ca.pem, 'cert': server.pem, 'key': server.key, 'ca_key': ca.key} in `dirpath`."""
    os.makedirs(dirpath, exist_ok=True)
    p = {k: os.path.join(dirpath, v) for k, v in
         dict(ca="ca.pem", ca_key="ca.key", cert="server.pem", key="server.key",
              csr="server.csr", ext="server.ext").items()}
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", p["ca_key"], "-out", p["ca"], "-days", "2",
          "-subj", "/CN=acr-egress test CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    common = names[0] if names else (ips[0] if ips else "localhost")
    _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", p["key"], "-out", p["csr"], "-subj", f"/CN={common}"])
    sans = [f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips]
    with open(p["ext"], "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                f"subjectAltName={','.join(sans)}\n")
    _run(["openssl", "x509", "-req", "-in", p["csr"], "-CA", p["ca"], "-CAkey", p["ca_key"],
          "-CAcreateserial", "-out", p["cert"], "-days", "1", "-extfile", p["ext"]])
    return {k: p[k] for k in ("ca", "cert", "key", "ca_key")}


# --------------------------------------------------------------------------------------------
# dnsmasq: the proxy's resolver
# --------------------------------------------------------------------------------------------

def _dns_query(name, qtype=1, qid=None):
    qid = random.randrange(1 << 16) if qid is None else qid
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".") if l)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", qtype, 1)


def dns_question(query):
    """(QNAME as a dotted string, offset just past the question) of a DNS query (bytes), or
    (None, None) when it does not parse."""
    labels, i = [], 12
    while i < len(query) and len(labels) < 128:
        length = query[i]
        if length == 0:
            end = i + 1 + 4  # the root label, then QTYPE and QCLASS
            return (".".join(labels), end) if end <= len(query) else (None, None)
        if length > 63:
            return None, None
        labels.append(query[i + 1:i + 1 + length].decode("ascii", errors="replace"))
        i += 1 + length
    return None, None


def dns_reply(query, end, rcode, records=(), authoritative=False):
    """A reply to `query` (its question ending at `end`): same id and question, QR set, RD
    copied, `rcode`, and `records` (packed answer RRs) as the answer section."""
    flags = 0x8000 | (0x0400 if authoritative else 0) | (query[2] << 8 & 0x0100) | rcode
    head = query[:2] + struct.pack("!HHHHH", flags, 1, len(records), 0, 0)
    return head + query[12:end] + b"".join(records)


class UdpDnsServer:
    """A DNS server on an already bound UDP socket, for what dnsmasq will not do: a thread hands
    every datagram to `answer(query)` (subclasses) and sends back what it returns (None: no
    reply). stop() ends it; a context manager too."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, query):
        raise NotImplementedError

    def respond(self, query, peer):
        """The reply to send `peer` now (None: none). Subclasses that answer later override this
        and send with `self.sock.sendto` themselves."""
        return self.answer(query)

    def _serve(self):
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self.respond(query, peer)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, peer)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class ScriptedDns(UdpDnsServer):
    """A misbehaving authoritative server: UDP on 127.0.0.1, every A query for a name in `script`
    ({name: [[IPv4, ...], [IPv4, ...], ...]}) answered with the next address list in turn
    (cycling), TTL 0; AAAA queries get no data; other names REFUSED. `.address` is for
    --dns-server; `.a_queries` counts the A queries answered."""

    def __init__(self, script):
        self.script = {name.lower(): lists for name, lists in script.items()}
        self.a_queries = 0
        self._turn = {}
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        super().__init__(sock)

    def answer(self, query):
        name, end = dns_question(query)
        if end is None:
            return None
        qtype = struct.unpack("!H", query[end - 4:end - 2])[0]
        lists = self.script.get((name or "").lower())
        records = []
        if lists and qtype == 1:
            turn = self._turn.get(name.lower(), 0)
            self._turn[name.lower()] = turn + 1
            self.a_queries += 1
            for address in lists[turn % len(lists)]:
                # A pointer to the question's name, type A, class IN, TTL 0, 4 bytes of address.
                records.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) +
                               socket.inet_aton(address))
        return dns_reply(query, end, 0 if lists else 5, records, authoritative=True)


class Dnsmasq:
    """dnsmasq on 127.0.0.1:port answering `records` {name: [IPv4 or IPv6 address, ...]} with
    TTL `ttl`. A name mapped to [] exists with no A/AAAA record (NOERROR, no answer: the proxy's
    dns_no_addresses); every other name is NXDOMAIN, and dnsmasq never forwards anything
    (--no-resolv and --local=/#/). Every query is logged (--log-queries) so that `queries()`
    lists the names asked, in order. Use `.address` ("127.0.0.1:P") for --dns-server."""

    def __init__(self, records, port=None, ttl=1):
        self.records = {name: list(addrs) for name, addrs in records.items()}
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.address = f"{self.host}:{self.port}"
        self.ttl = ttl
        self._proc = None
        self._log = []
        self._lock = threading.Lock()
        self._reader = None

    def argv(self):
        argv = [DNSMASQ_BINARY, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                f"--listen-address={self.host}", "--bind-interfaces", f"--port={self.port}",
                "--local=/#/", "--pid-file=", "--conf-file=/dev/null", "--user=root",
                "--log-queries", "--log-facility=-", f"--local-ttl={self.ttl}",
                f"--neg-ttl={self.ttl}", "--cache-size=0", "--no-negcache"]
        for name, addrs in self.records.items():
            if not addrs:
                # The name exists (a TXT record) but has no address: NOERROR with no answer.
                argv.append(f'--txt-record={name},"acr-egress test"')
            for addr in addrs:
                argv.append(f"--host-record={name},{addr},{self.ttl}")
        return argv

    def start(self):
        if self._proc is not None:
            return self
        self._proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        # Ready when it answers a query (bounded: 100 attempts, 10 s).
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"dnsmasq exited ({self._proc.returncode}):\n"
                                       + "\n".join(self._log))
                try:
                    s.sendto(_dns_query("ready.acr-egress-test.invalid"), (self.host, self.port))
                    s.recvfrom(512)
                    return self
                except OSError:
                    time.sleep(0.05)
        self.stop()
        raise RuntimeError("dnsmasq did not answer within 10 s:\n" + "\n".join(self._log))

    def _read_log(self):
        for raw in self._proc.stderr:
            with self._lock:
                self._log.append(raw.decode(errors="replace").rstrip("\n"))

    def log_lines(self):
        with self._lock:
            return list(self._log)

    def queries(self):
        """Names queried so far (from dnsmasq's `query[TYPE] NAME from ADDR` lines), in order,
        without the harness's own readiness probe."""
        names = []
        for line in self.log_lines():
            if "query[" in line and " from " in line:
                name = line.split("] ", 1)[1].split(" from ", 1)[0]
                if not name.startswith("ready.acr-egress-test"):
                    names.append(name)
        return names

    def stop(self):
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._reader:
            self._reader.join(timeout=5)
            if not self._reader.is_alive() and self._proc.stderr:
                self._proc.stderr.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# --------------------------------------------------------------------------------------------
# The proxy under test
# --------------------------------------------------------------------------------------------

class Proxy:
    """acr-egress started with `args` (ACR_BINARY). `start()`/`__enter__` waits (20 s at most)
    for the service log's "listening:" line; stdout (the access log, one JSON object per line)
    and stderr (the service log) are collected by threads. `stop()` signals the process, waits
    for it, and fails the test (AssertionError) if a sanitizer reported anything; `__exit__`
    calls it when the test has not. `env` adds to (not replaces) the environment; `nofile`, if
    given, is the process's RLIMIT_NOFILE (soft and hard). `prefix` (argv) is run in front of
    the binary and must exec it, so that `.pid` stays the proxy's (`ip netns exec NS`,
    `prlimit ... --`, `sh -c '... exec "$0" "$@"'`); `pass_fds` are inherited descriptors;
    `wrapper` is an older name for an argv prefix (setpriv), run in front of `prefix`."""

    START_TIMEOUT = 20.0

    def __init__(self, args, env=None, nofile=None, prefix=(), pass_fds=(), wrapper=()):
        self.args = [str(a) for a in args]
        self.wrapper = [str(a) for a in wrapper]  # argv prefix, e.g. setpriv with its options
        self.nofile = nofile
        self.prefix = [str(a) for a in prefix]
        self.pass_fds = tuple(pass_fds)
        self.env = dict(os.environ)
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        # Hermetic: never pick up an installed /etc/acr-egress/acr-egress.toml.
        self.env.setdefault("ACR_EGRESS_CONFIG", "")
        if env:
            self.env.update(env)
        self._proc = None
        self._stdout = []
        self._stderr = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._threads = []
        self.returncode = None
        self._checked = False
        self._signals = []

    @property
    def pid(self):
        return self._proc.pid

    def listen_address(self, kind="connect", index=0):
        """(host, port) of the `index`-th `--kind ADDR:PORT` option on the command line."""
        found = [self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a == f"--{kind}"]
        host, _, port = found[index].rpartition(":")
        return host.strip("[]"), int(port)

    def start(self):
        """Starts the proxy (once: later calls return self) and waits for "listening:"."""
        if self._proc is not None:
            return self
        limit = self.nofile

        def set_limits():
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self._proc = subprocess.Popen(self.wrapper + self.prefix + [binary_path()] + self.args,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=self.env,
                                      preexec_fn=set_limits, pass_fds=self.pass_fds)
        for stream, sink in ((self._proc.stdout, self._stdout),
                             (self._proc.stderr, self._stderr)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + self.START_TIMEOUT
        with self._changed:
            while not any("listening:" in line for line in self._stderr):
                if self._proc.poll() is not None and all(not t.is_alive()
                                                         for t in self._threads):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
            ready = any("listening:" in line for line in self._stderr)
        if not ready:
            code = self._proc.poll()
            if code is None:
                self._proc.kill()
                self._proc.wait(timeout=10)
            raise RuntimeError(f"acr-egress {' '.join(self.args)} did not start (exit {code}):\n"
                               + self.stderr_text())
        return self

    def _pump(self, stream, sink):
        for raw in stream:
            with self._changed:
                sink.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    def stdout_lines(self):
        with self._lock:
            return list(self._stdout)

    def stderr_text(self):
        with self._lock:
            return "\n".join(self._stderr)

    def service_log(self):
        """The stderr lines that parse as JSON objects."""
        return [obj for obj in (_parse_json(l) for l in self.stderr_text().splitlines()) if obj]

    def access_log(self):
        """Every access-log line so far, parsed (lines that are not JSON objects are skipped)."""
        return [obj for obj in (_parse_json(l) for l in self.stdout_lines()) if obj]

    def log_mark(self):
        """The number of stdout lines so far: pass it as wait_for_log(since=) to skip them (the
        kernel reuses client ports, so a client address alone can match an older line)."""
        with self._changed:
            return len(self._stdout)

    def wait_for_log(self, predicate, timeout=10, since=0):
        """The first access-log entry (among stdout lines from index `since` on) for which
        `predicate(entry)` is true, waiting up to `timeout` seconds for it (AssertionError with
        the log so far otherwise)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._stdout[since:]:
                    obj = _parse_json(line)
                    if obj and predicate(obj):
                        return obj
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching access-log line within {timeout}s; "
                                         f"log so far:\n" + "\n".join(self._stdout))
                self._changed.wait(min(remaining, 0.2))

    def wait_for_log_count(self, count, predicate=lambda e: True, timeout=10):
        """Waits until at least `count` entries satisfy `predicate`; returns them."""
        def enough():
            matches = [e for e in self.access_log() if predicate(e)]
            return matches if len(matches) >= count else None
        return wait_until(enough, timeout, 0.05, f"{count} matching access-log lines")

    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def send_signal(self, sig):
        """Sends `sig` without waiting (stop() still collects the exit and checks sanitizers)."""
        self._signals.append(sig)
        self._proc.send_signal(sig)

    def wait(self, timeout):
        """Waits up to `timeout` seconds for the process to exit; returns its exit code, or
        None if it is still running."""
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, signal=signal_module.SIGTERM, timeout=45):
        """Sends `signal` (if still running), waits up to `timeout` seconds (then SIGKILL and
        AssertionError) and returns the exit code. Raises AssertionError if the stderr carries a
        sanitizer report, or if the process ended with a non-zero code although it was only
        ever asked to stop with SIGTERM/SIGINT (a crash, an abort, a failed drain). Idempotent:
        later calls return the same code without checking again."""
        if self._proc is None:
            return None
        if self._checked:
            return self.returncode
        if self._proc.poll() is None:
            self._signals.append(signal)
            self._proc.send_signal(signal)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
                self._join()
                self._checked = True
                raise AssertionError(f"acr-egress did not exit within {timeout}s of signal "
                                     f"{signal}:\n" + self.stderr_text()[-4000:])
        self.returncode = self._proc.returncode
        self._join()
        self.check_sanitizers()
        graceful = all(s in (signal_module.SIGTERM, signal_module.SIGINT) for s in self._signals)
        if graceful and self.returncode != 0:
            raise AssertionError(f"acr-egress exited with code {self.returncode} (signals sent: "
                                 f"{self._signals}):\n" + self.stderr_text()[-4000:])
        return self.returncode

    def _join(self):
        for t in self._threads:
            t.join(timeout=10)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream and not any(t.is_alive() for t in self._threads):
                stream.close()

    def check_sanitizers(self):
        if self._checked:
            return
        self._checked = True
        text = self.stderr_text()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                raise AssertionError(f"sanitizer report in acr-egress stderr ({marker}):\n"
                                     + text[-20000:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def _parse_json(line):
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# --------------------------------------------------------------------------------------------
# Upstream servers
# --------------------------------------------------------------------------------------------

class _Server:
    """A TCP listener thread on (host, port) that runs `_serve(conn, index)` in one thread per
    connection. Accepting stops at `stop()`; connection threads are daemons that end with their
    peer (every blocking call has a timeout)."""

    CONN_TIMEOUT = 60.0

    def __init__(self, host, port, backlog=128):
        self.host = host
        self.sock = socket.socket(_family(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.accepted = 0
        self.peers = []  # the client address of each accepted connection, in order
        self.errors = []
        self._conns = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                index = self.accepted
                self.accepted += 1
                self.peers.append(peer[0])
                self._conns.append(conn)
            conn.settimeout(self.CONN_TIMEOUT)
            threading.Thread(target=self._run_one, args=(conn, index), daemon=True).start()

    def _run_one(self, conn, index):
        try:
            self._serve(conn, index)
        except Exception as e:  # recorded for the test to inspect
            with self._lock:
                self.errors.append(e)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _serve(self, conn, index):
        raise NotImplementedError

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class TlsServer(_Server):
    """A TLS server on (host, port) with `cert`/`key` (Python ssl). `handler`:
      'echo'   echoes every byte until the client closes;
      'http'   answers any request head with `200 OK` and the body `sni=<name>\\n`;
      callable handler(ssl_sock, index) for anything else.
    `.snis` lists the SNI of each completed handshake, in order (None: no SNI)."""

    def __init__(self, host, port, cert, key, handler="echo"):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = self._on_sni
        self.handler = handler
        self.snis = []
        self._sni_by_conn = threading.local()
        super().__init__(host, port)

    def _on_sni(self, sslobj, name, context):
        self._sni_by_conn.name = name
        return None

    def _serve(self, conn, index):
        self._sni_by_conn.name = None
        tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            self._serve_tls(tls, index)
        finally:
            tls.close()

    def _serve_tls(self, tls, index):
        tls.settimeout(self.CONN_TIMEOUT)
        tls.do_handshake()
        sni = self._sni_by_conn.name
        with self._lock:
            self.snis.append(sni)
        if callable(self.handler):
            self.handler(tls, index)
        elif self.handler == "echo":
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                tls.sendall(data)
        elif self.handler == "http":
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = tls.recv(4096)
                if not data:
                    return
                head += data
            body = f"sni={sni}\n".encode()
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            try:
                tls.unwrap()
            except (OSError, ssl.SSLError):
                pass
        else:
            raise ValueError(f"unknown handler {self.handler!r}")


class RawServer(_Server):
    """A plain TCP server on (host, port) that records every byte each connection sends
    (`.received(i)` -> bytes, in accept order) until the peer closes. `reply` (bytes) is sent
    once, after the first bytes arrive. `handler(conn, index, record)` replaces the default loop;
    it must append what it reads to `record` (a bytearray) if the test checks `received()`.
    `.closed[i]` is set when connection i saw EOF ('fin') or a reset ('rst')."""

    def __init__(self, host, port, reply=None, handler=None, backlog=128):
        self.reply = reply
        self.handler = handler
        self._records = []
        self.closed = {}
        self._data_event = threading.Condition(threading.Lock())
        super().__init__(host, port, backlog)

    def _serve(self, conn, index):
        record = bytearray()
        with self._lock:
            while len(self._records) <= index:
                self._records.append(bytearray())
            self._records[index] = record
        if self.handler:
            self.handler(conn, index, record)
            return
        replied = False
        how = "fin"
        while True:
            try:
                data = conn.recv(65536)
            except ConnectionResetError:
                how = "rst"
                break
            except socket.timeout:
                how = "timeout"
                break
            if not data:
                break
            with self._data_event:
                record += data
                self._data_event.notify_all()
            if self.reply is not None and not replied:
                conn.sendall(self.reply)
                replied = True
        with self._data_event:
            self.closed[index] = how
            self._data_event.notify_all()

    def received(self, index=0):
        with self._lock:
            return bytes(self._records[index]) if index < len(self._records) else b""

    @property
    def connections(self):
        """Bytes received so far on each connection, in accept order."""
        with self._lock:
            return [bytes(r) for r in self._records]

    def wait_for_bytes(self, count, index=0, timeout=10):
        """Waits until connection `index` has delivered at least `count` bytes; returns them."""
        return wait_until(lambda: (self.received(index)
                                   if len(self.received(index)) >= count else None),
                          timeout, 0.01, f"{count} bytes on upstream connection {index}")

    def wait_closed(self, index=0, timeout=10):
        """Waits until connection `index` ended; returns 'fin', 'rst' or 'timeout'."""
        return wait_until(lambda: self.closed.get(index), timeout, 0.01,
                          f"upstream connection {index} to close")


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------

def _split_addr(addr):
    if isinstance(addr, tuple):
        return addr
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class TunnelSocket(socket.socket):
    """A socket that can carry attributes: `acr_early` (tunnel bytes read with the response
    head), `acr_close` ('fin'/'rst'/'timeout'/'limit': how a refusal's body ended) and
    `acr_client` ("ip:port" of its local end, as the access log's `client` field shows it)."""
    acr_early = b""
    acr_close = None
    acr_client = None


def connect_via_proxy(proxy_addr, target, payload=b"", head=None, timeout=10):
    """Opens a TCP connection to the proxy (`proxy_addr`: "host:port" or a tuple), sends a
    CONNECT head for `target` ("host:port"; by default the head curl sends) followed by `payload`
    in the same write, and reads the response head. Returns (status, headers, body, sock):
    status is the int code (0 if the connection closed or was reset without a response);
    headers a dict with lower-case names; body for a refusal the bytes up to EOF (at most 64 KiB,
    bounded by `timeout`), for 200 b'' with the socket left open and positioned at the first
    tunnel byte (any tunnel bytes already read are in `sock.acr_early`). The caller closes sock.
    `head` (bytes or str) replaces the whole request head."""
    if head is None:
        head = (f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                f"User-Agent: curl/7.88.1\r\nProxy-Connection: Keep-Alive\r\n\r\n")
    if isinstance(head, str):
        head = head.encode()
    host, port = _split_addr(proxy_addr)
    sock = TunnelSocket(_family(host), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.acr_early = b""
    sock.acr_client = "%s:%d" % sock.getsockname()[:2]
    try:
        sock.sendall(head + payload)
    except (BrokenPipeError, ConnectionResetError):
        return 0, {}, b"", sock
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\r\n\r\n" not in data and len(data) < 65536:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    if b"\r\n\r\n" not in data:
        return 0, {}, data, sock
    head_bytes, rest = data.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    headers[":status-line"] = lines[0]
    if status == 200:
        sock.acr_early = rest
        sock.settimeout(timeout)
        return status, headers, b"", sock
    tail, sock.acr_close = recv_until_closed(sock, max(0.01, deadline - time.monotonic()))
    return status, headers, rest + tail, sock


def recv_exact(sock, count, timeout=10):
    """Up to `count` bytes from `sock`, fewer only if the peer closed or `timeout` ran out."""
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(count - len(got))
        if not chunk:
            break
        got += chunk
    return got


def recv_until_closed(sock, timeout=10, limit=1 << 26):
    """Reads until EOF, reset or `timeout` seconds. Returns (data, how) with how in
    'fin', 'rst', 'timeout', 'limit'."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(data), "timeout"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), "rst"
        except socket.timeout:
            return bytes(data), "timeout"
        if not chunk:
            return bytes(data), "fin"
        data += chunk
    return bytes(data), "limit"


def is_reset(sock, timeout=5):
    """True if reading `sock` ends in a TCP reset (ECONNRESET) within `timeout` seconds."""
    return recv_until_closed(sock, timeout)[1] == "rst"


def _proxy_free_env():
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["CURL_HOME"] = "/nonexistent"  # no ~/.curlrc
    return env


def curl(*args, timeout=30):
    """Runs `curl -q --noproxy '' -sS <args>` with a bounded `timeout` and returns the
    CompletedProcess (text mode). Discipline:
      - `-q` ignores any .curlrc and the proxy variables are removed from the environment, so
        only what the test passes applies;
      - `--noproxy ''` overrides NO_PROXY-style exclusions, so an explicit `-x` proxy is used
        even for loopback targets;
      - curl must never ask the machine's resolver: it reaches names through the proxy (`-x`,
        which resolves them with the test's dnsmasq) or pins them with `--resolve` /
        `--connect-to`. A call with neither is refused here unless every URL's host is an IP
        literal."""
    args = [str(a) for a in args]
    pinned = any(a in ("-x", "--proxy", "--resolve", "--connect-to", "--preproxy")
                 or a.startswith("--proxy=") or a.startswith("-x") for a in args)
    if not pinned:
        for a in args:
            if "://" in a:
                host = a.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
                host = host.rsplit(":", 1)[0] if not host.startswith("[") else host
                if not (host.startswith("[") or host.replace(".", "").isdigit()):
                    raise ValueError(f"curl {a}: a name without -x/--resolve/--connect-to "
                                     "would use the machine's resolver")
    return subprocess.run(["curl", "-q", "--noproxy", "", "-sS"] + args, capture_output=True,
                          text=True, timeout=timeout, env=_proxy_free_env(),
                          stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# ClientHellos
# --------------------------------------------------------------------------------------------

def read_captures():
    """{name: bytes} of every real ClientHello capture in $ACR_SHARED_DIR/data/clienthello
    (name = file name without .bin), in name order."""
    folder = os.path.join(shared_dir(), "data", "clienthello")
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".bin"):
            with open(os.path.join(folder, name), "rb") as f:
                out[name[:-4]] = f.read()
    return out


def client_hello(server_hostname, alpn=None):
    """The first flight (TLS records) of a real Python/OpenSSL client with SNI
    `server_hostname` (None: no SNI extension)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _records(data):
    """[(content_type, version, payload)] of the complete TLS records in `data`."""
    out, i = [], 0
    while i + 5 <= len(data):
        ctype, version, length = struct.unpack("!BHH", data[i:i + 5])
        if i + 5 + length > len(data):
            break
        out.append((ctype, version, data[i + 5:i + 5 + length]))
        i += 5 + length
    return out


def reframe_hello(data, sizes):
    """Re-frames the handshake bytes of `data` (TLS records) into records whose payloads have
    the given `sizes` in turn (the last size repeats), keeping the first record's version.
    The handshake message is unchanged; only the record layer differs."""
    records = _records(data)
    payload = b"".join(p for _, _, p in records)
    version = records[0][1]
    out, i, k = bytearray(), 0, 0
    while i < len(payload):
        size = sizes[min(k, len(sizes) - 1)]
        piece = payload[i:i + size]
        out += struct.pack("!BHH", 22, version, len(piece)) + piece
        i += size
        k += 1
    return bytes(out)


def add_extension(data, ext_type, body):
    """`data` (the first flight of client_hello(): one TLS record holding a whole ClientHello)
    with one more extension appended (type `ext_type`, contents `body`), every length on the way
    (record, handshake, extensions) adjusted. For hellos no real client here sends: ESNI
    (0xffce), ECH (0xfe0d)."""
    ctype, version, length = struct.unpack("!BHH", data[:5])
    msg, rest = data[5:5 + length], data[5 + length:]
    if len(msg) != length or msg[0] != 1 or 4 + int.from_bytes(msg[1:4], "big") != length:
        raise ValueError("add_extension needs one record holding the whole ClientHello")
    hello = msg[4:]
    i = 2 + 32
    i += 1 + hello[i]
    i += 2 + int.from_bytes(hello[i:i + 2], "big")
    i += 1 + hello[i]
    extensions = hello[i + 2:] + struct.pack("!HH", ext_type, len(body)) + body
    hello = hello[:i] + struct.pack("!H", len(extensions)) + extensions
    msg = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return struct.pack("!BHH", ctype, version, len(msg)) + msg + rest


# A well-formed outer encrypted_client_hello body (type outer, HKDF-SHA256/AES-128-GCM,
# config_id 7, 1-byte enc, 2-byte payload): what the parser accepts as ECH.
ECH_OUTER = bytes([0x00, 0x00, 0x01, 0x00, 0x01, 0x07, 0x00, 0x01, 0xee, 0x00, 0x02, 0x12, 0x34])
ESNI_BODY = bytes([0x13, 0x01])


def hello_sni(data):
    """The server_name (str) of the ClientHello in `data` (TLS records), or None without one.
    A minimal parser for test bookkeeping, not a reference implementation."""
    msg = b"".join(p for t, _, p in _records(data) if t == 22)
    if len(msg) < 4 or msg[0] != 1:
        return None
    body = msg[4:4 + int.from_bytes(msg[1:4], "big")]
    i = 2 + 32
    i += 1 + body[i]
    i += 2 + int.from_bytes(body[i:i + 2], "big")
    i += 1 + body[i]
    if i + 2 > len(body):
        return None
    end = i + 2 + int.from_bytes(body[i:i + 2], "big")
    i += 2
    while i + 4 <= end:
        etype, elen = struct.unpack("!HH", body[i:i + 4])
        if etype == 0:
            ext = body[i + 4:i + 4 + elen]
            nlen = int.from_bytes(ext[3:5], "big")
            return ext[5:5 + nlen].decode("ascii", errors="replace")
        i += 4 + elen
    return None


class MemoryTlsClient:
    """A Python/OpenSSL TLS client over an already connected plain socket whose first flight
    the test sends itself (dribbled, re-framed, ...): `first_flight()` returns the ClientHello
    records, the test sends them (or a re-framing of them) on `sock`, then `finish_handshake()`
    completes the handshake over `sock` and `request(data)` sends data and reads until the
    server closes. Certificates are verified against `cafile` when given."""

    def __init__(self, sock, server_hostname, cafile=None, alpn=None):
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self._first = None

    def first_flight(self):
        if self._first is None:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            self._first = self._out.read()
        return self._first

    def _flush(self):
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _feed(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the peer closed during the TLS exchange")
        self._in.write(data)

    def finish_handshake(self, timeout=10):
        self.first_flight()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return self
            except ssl.SSLWantReadError:
                self._flush()
                self._feed(deadline)

    def request(self, data, timeout=10, limit=1 << 24):
        """Sends `data` and returns what the server sends until it closes (bounded)."""
        self.obj.write(data)
        self._flush()
        deadline = time.monotonic() + timeout
        out = bytearray()
        while len(out) < limit:
            try:
                chunk = self.obj.read(65536)
                if not chunk:
                    break
                out += chunk
            except ssl.SSLWantReadError:
                try:
                    self._feed(deadline)
                except ConnectionError:
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        return bytes(out)


def send_dribbled(sock, data, chunk=1, delay=0.005, max_seconds=30):
    """Sends `data` `chunk` bytes per send() with TCP_NODELAY and `delay` seconds between
    sends (bounded: raises if it would take longer than `max_seconds`)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if len(data) / chunk * delay > max_seconds:
        raise ValueError("dribble would exceed its time bound")
    for i in range(0, len(data), chunk):
        sock.sendall(data[i:i + chunk])
        time.sleep(delay)


def set_rst_on_close(sock):
    """SO_LINGER {on, 0}: close() then sends a TCP reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
