#!/usr/bin/python3
"""Side-by-side end-to-end bench: acr-egress against HAProxy, nginx stream, sniproxy, Squid and
tinyproxy, under the same load, interleaved round by round (bench/README.md explains the method).

Topology (all addresses from documentation ranges, nothing routes outside the namespaces):
  client ns c<i> 192.0.2.(4i+1)/30 --veth-- 192.0.2.(4i+2)/30 proxy ns p<i>
  proxy ns p<i> 198.51.100.(64+4i+1)/30 --veth-- 198.51.100.(64+4i+2)/30 sink ns
  the sink listens on 198.51.100.10:443 (on the sink namespace's lo).
Each peer gets its own client and proxy namespace; one sink namespace serves them all. The proxy
namespace has a dnsmasq on 127.0.0.1:53 and /etc/netns hosts + resolv.conf naming the sink; the
transparent role's client routes 198.51.100.10 through the proxy namespace, whose PREROUTING
REDIRECTs port 443 to the proxy.

Per peer and round: rate (32 tunnels in flight for --duration s: tunnels/s, p99, proxy CPU per 1k
tunnels), idle (500 tunnels held open: RSS delta per tunnel), bulk (one tunnel of 1 GiB: MB/s,
proxy CPU per GiB) and bulk16 (16 parallel tunnels). CPU is utime+stime of every process in the
proxy namespace except dnsmasq (from /proc/PID/stat); RSS is the sum of VmRSS over the same set.

Usage: bench/e2e/run.py [--build-dir build/bench] [--rounds 3] [--peers a,b] [--smoke]
                        [--json out.json] [--png out.png] [--markdown out.md]
Needs root (namespaces). Cleans up its namespaces, /etc/netns entries and processes on any exit.
"""
import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
SINK_IP = "198.51.100.10"
NS_PREFIX = "acrb-"
NETNS_ETC = "/etc/netns"
GIB = 1 << 30

# Roles: how the client reaches the proxy. sni: to the proxy's address on 443; connect: an HTTP
# CONNECT to the proxy's port; transparent: straight to the sink, redirected in the proxy ns.
PEERS = {
    # name: (role, kind)
    "acr-egress sni": ("sni", "acr"),
    "haproxy sni": ("sni", "haproxy"),
    "nginx sni": ("sni", "nginx"),
    "sniproxy": ("sni", "sniproxy"),
    "acr-egress transparent": ("transparent", "acr"),
    "haproxy transparent": ("transparent", "haproxy"),
    # HAProxy with `option splice-auto` (off by default): it splices a direction whose buffer
    # fills, as acr-egress does, with `maxpipes 64` (acr-egress: 32 per worker; HAProxy's default,
    # maxconn / 4, needs more descriptors than the bench's limit). Not in the default peer list;
    # name it to compare bulk with it.
    "haproxy sni splice": ("sni", "haproxy"),
    "haproxy transparent splice": ("transparent", "haproxy"),
    "acr-egress connect": ("connect", "acr"),
    "squid": ("connect", "squid"),
    "tinyproxy": ("connect", "tinyproxy"),
}
# With --baseline, each acr-egress peer named runs twice per round: once from --build-dir and once
# from the baseline build, under this suffix, in the same namespaces' setup and the same rotation
# as the peers. A/B ratios (new / baseline) are then same-round ratios like the peers'.
BASELINE = " (baseline)"
for _name, (_role, _kind) in list(PEERS.items()):
    if _kind == "acr":
        PEERS[_name + BASELINE] = (_role, "acr")
BINARIES = {"haproxy": "haproxy", "nginx": "nginx", "sniproxy": "sniproxy", "squid": "squid",
            "tinyproxy": "tinyproxy", "acr": None}
PORTS = {"sni": 443, "connect": 3128, "transparent": 8443}

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def installed(kind):
    """Whether a peer can run here (scripts/install-deps --bench installs them all)."""
    if kind == "acr":
        return True
    if kind == "nginx" and not os.path.exists(NGINX_STREAM_MODULE):
        return False  # nginx without libnginx-mod-stream
    return shutil.which(BINARIES[kind]) is not None


# Metric columns: key, header, higher_is_better.
COLUMNS = [
    ("tunnels_per_s", "new tunnels/s", True),
    ("p99_ms", "p99 ms", False),
    ("cpu_ms_per_1k", "proxy CPU ms / 1k tunnels", False),
    ("kib_per_idle", "KiB / idle tunnel", False),
    ("bulk_mb_s", "bulk MB/s, 1 tunnel", True),
    ("cpu_s_per_gib", "CPU s / GiB bulk", False),
    ("bulk16_mb_s", "bulk MB/s, 16 tunnels", True),
]

_started = []  # every Popen this script started, ended by pid at cleanup
_namespaces = []


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def run(argv, timeout=30, check=True, input_text=None):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            input=input_text)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stdout}{result.stderr}")
    return result


def raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def start(argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, stderr=None, cwd=None,
          env=None):
    proc = subprocess.Popen(argv, stdout=stdout, stdin=stdin, stderr=stderr or subprocess.DEVNULL,
                            preexec_fn=raise_nofile, cwd=cwd, env=env)
    _started.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Ns:
    def __init__(self, tag):
        self.name = f"{NS_PREFIX}{os.getpid()}-{tag}"

    def create(self):
        run(["ip", "netns", "add", self.name])
        _namespaces.append(self)
        self.run(["ip", "link", "set", "lo", "up"])
        # Many short tunnels from one client address: wide port range, TIME_WAIT reuse.
        self.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000",
                  "net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=8192",
                  "net.ipv4.tcp_max_syn_backlog=8192"], check=False)
        return self

    def argv(self, command):
        return ["ip", "netns", "exec", self.name] + list(command)

    def run(self, command, **kwargs):
        return run(self.argv(command), **kwargs)

    def pids(self):
        out = run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        return [int(p) for p in out[:10000] if p.isdigit()]

    def write_etc(self, hosts):
        directory = os.path.join(NETNS_ETC, self.name)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n")
            for name, address in hosts.items():
                f.write(f"{address} {name}\n")
        with open(os.path.join(directory, "resolv.conf"), "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def destroy(self):
        for pid in self.pids()[:10000]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(os.path.join(NETNS_ETC, self.name), ignore_errors=True)


def sweep_stale():
    """Namespaces left by a killed earlier run (its pid is gone) and their processes."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines()[:1000]:
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(NS_PREFIX + r"(\d+)-\w+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            ns = Ns("x")
            ns.name = name
            ns.destroy()


def veth(a, a_if, a_addr, b, b_if, b_addr):
    run(["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if,
         "netns", b.name])
    for ns, name, address in ((a, a_if, a_addr), (b, b_if, b_addr)):
        ns.run(["ip", "addr", "add", address, "dev", name])
        ns.run(["ip", "link", "set", name, "up"])


def proc_cpu_split(pids):
    """(user, system) CPU seconds of the processes so far (utime, stime of /proc/PID/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return user / ticks, system / ticks


def tcp_segments(pid):
    """(InSegs, OutSegs) of the TCP stack of PID's network namespace (/proc/PID/net/snmp):
    the segments the proxy's namespace received and sent, every socket of it together."""
    try:
        with open(f"/proc/{pid}/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Tcp:")]
        fields = dict(zip(rows[0][1:], rows[1][1:]))
        return int(fields["InSegs"]), int(fields["OutSegs"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def proc_cpu_seconds(pids):
    return sum(proc_cpu_split(pids))


def proc_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def sni_of(hello):
    """The server_name of a ClientHello record (enough parsing for the bench's captures)."""
    body = hello[5:]
    i = 4 + 2 + 32
    i += 1 + body[i]
    i += 2 + int.from_bytes(body[i:i + 2], "big")
    i += 1 + body[i]
    end = i + 2 + int.from_bytes(body[i:i + 2], "big")
    i += 2
    while i + 4 <= end:
        kind = int.from_bytes(body[i:i + 2], "big")
        size = int.from_bytes(body[i + 2:i + 4], "big")
        if kind == 0:
            n = int.from_bytes(body[i + 7:i + 9], "big")
            return body[i + 9:i + 9 + n].decode()
        i += 4 + size
    raise ValueError("no SNI in the hello")


class Peer:
    """One proxy under test with its client and proxy namespaces and its config."""

    def __init__(self, bench, index, name):
        self.bench = bench
        self.index = index
        self.name = name
        self.role, self.kind = PEERS[name]
        self.client_ip = f"192.0.2.{4 * index + 1}"
        self.proxy_ip = f"192.0.2.{4 * index + 2}"
        self.up_ip = f"198.51.100.{64 + 4 * index + 1}"
        self.sink_side_ip = f"198.51.100.{64 + 4 * index + 2}"
        self.client_ns = Ns(f"c{index}")
        self.proxy_ns = Ns(f"p{index}")
        self.dir = os.path.join(bench.tmp, f"peer{index}")
        self.proc = None
        self.dnsmasq = None
        # The acr-egress binary this peer runs: the baseline build's for a baseline twin.
        self.acr = bench.baseline_acr if name.endswith(BASELINE) else bench.acr

    def setup(self):
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o777)  # squid, sniproxy and tinyproxy may drop privileges
        self.client_ns.create()
        self.proxy_ns.create()
        veth(self.client_ns, f"c{self.index}a", f"{self.client_ip}/30", self.proxy_ns,
             f"c{self.index}b", f"{self.proxy_ip}/30")
        veth(self.proxy_ns, f"s{self.index}a", f"{self.up_ip}/30", self.bench.sink_ns,
             f"s{self.index}b", f"{self.sink_side_ip}/30")
        self.proxy_ns.run(["ip", "route", "add", f"{SINK_IP}/32", "via", self.sink_side_ip])
        self.client_ns.run(["ip", "route", "add", "default", "via", self.proxy_ip])
        self.proxy_ns.write_etc({self.bench.host: SINK_IP})
        if self.role == "transparent":
            self.redirect()
        self.dnsmasq = start(self.proxy_ns.argv([
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
            "--listen-address=127.0.0.1", "--bind-interfaces", "--port=53", "--local=/#/",
            "--pid-file=", "--conf-file=/dev/null", "--user=root", "--cache-size=1000",
            f"--host-record={self.bench.host},{SINK_IP},3600"]))

    def redirect(self):
        port = PORTS["transparent"]
        ruleset = f"""
table ip acr_bench {{
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    iifname "c{self.index}b" tcp dport 443 redirect to :{port}
  }}
}}
"""
        if self.proxy_ns.run(["nft", "-f", "-"], check=False, input_text=ruleset).returncode:
            self.proxy_ns.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-i",
                               f"c{self.index}b", "-p", "tcp", "--dport", "443", "-j",
                               "REDIRECT", "--to-ports", str(port)])

    def target(self):
        if self.role == "transparent":
            return f"{SINK_IP}:443"
        return f"{self.proxy_ip}:{PORTS[self.role]}"

    def pids(self):
        skip = {self.dnsmasq.pid} if self.dnsmasq else set()
        return [p for p in self.proxy_ns.pids() if p not in skip]

    # -- configs ---------------------------------------------------------------------------

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def argv(self):
        d = self.dir
        port = PORTS[self.role]
        host = self.bench.host
        label = host.split(".")[0]
        exact_re = "^" + re.escape(host) + "$"
        data_re = "^" + re.escape(label) + r"\.[a-z0-9-]+\.data\.azurecr\.io$"
        if self.kind == "acr":
            return self.bench.wrap + [
                self.acr, f"--{self.role}", f"{self.proxy_ip}:{port}", "--registry", label,
                "--allow-cidr", f"{SINK_IP}/32", "--dns-server", "127.0.0.1:53",
                "--client-cidr", f"{self.client_ip}/32",
                "--max-connections", "8000", "--workers", str(self.bench.workers)]
        if self.kind == "haproxy":
            bind = f"bind {self.proxy_ip}:{port}"
            server = f"server sink {SINK_IP}:443"
            if self.role == "transparent":
                bind += " transparent"
                server = "server orig 0.0.0.0"  # the connection's original destination
            cfg = f"""global
  maxconn 8000
  nbthread {self.bench.workers}
{"  maxpipes 64" if self.name.endswith(" splice") else ""}
  log stdout format raw local0
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 10s
  timeout client 15m
  timeout server 15m
{"  option splice-auto" if self.name.endswith(" splice") else ""}
frontend fe
  {bind}
  tcp-request inspect-delay 10s
  tcp-request content reject if !{{ req.ssl_hello_type 1 }}
  tcp-request content accept if {{ req.ssl_sni -i {host} }}
  tcp-request content accept if {{ req.ssl_sni -m reg -i {data_re} }}
  tcp-request content reject
  default_backend be
backend be
  {server}
"""
            return ["haproxy", "-db", "-f", self.write("haproxy.cfg", cfg)]
        if self.kind == "nginx":
            cfg = f"""load_module {NGINX_STREAM_MODULE};
worker_processes {self.bench.workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
worker_rlimit_nofile 16384;
events {{ worker_connections 8000; }}
stream {{
  log_format basic '$remote_addr [$time_local] $ssl_preread_server_name $status '
                   '$bytes_sent $bytes_received $session_time';
  access_log {d}/nginx-access.log basic buffer=64k;
  map $ssl_preread_server_name $upstream {{
    {host} {SINK_IP}:443;
    ~{data_re} {SINK_IP}:443;
    default unix:{d}/denied.sock;
  }}
  server {{
    listen {self.proxy_ip}:{port};
    ssl_preread on;
    preread_timeout 10s;
    proxy_pass $upstream;
    proxy_connect_timeout 10s;
    proxy_timeout 15m;
  }}
}}
"""
            return ["nginx", "-e", f"{d}/nginx-error.log", "-c", self.write("nginx.conf", cfg),
                    "-g", "daemon off;"]
        if self.kind == "sniproxy":
            cfg = f"""user nobody
pidfile {d}/sniproxy.pid
error_log {{
  filename {d}/sniproxy-error.log
  priority notice
}}
access_log {{
  filename {d}/sniproxy-access.log
}}
listen {self.proxy_ip}:{port} {{
  proto tls
  table bench
}}
table bench {{
  {exact_re} {SINK_IP}:443
  {data_re} {SINK_IP}:443
}}
"""
            return ["sniproxy", "-f", "-c", self.write("sniproxy.conf", cfg)]
        if self.kind == "squid":
            cfg = f"""http_port {self.proxy_ip}:{port}
visible_hostname acr-bench
pid_filename {d}/squid.pid
cache deny all
cache_mem 8 MB
access_log stdio:{d}/squid-access.log
cache_log {d}/squid-cache.log
cache_store_log none
coredump_dir {d}
dns_nameservers 127.0.0.1
max_filedescriptors 16384
shutdown_lifetime 1 seconds
acl SSL_ports port 443
acl CONNECT method CONNECT
acl allowed dstdomain {host}
acl allowed_re dstdom_regex -i {data_re}
http_access deny !CONNECT
http_access deny CONNECT !SSL_ports
http_access allow CONNECT allowed
http_access allow CONNECT allowed_re
http_access deny all
"""
            return ["squid", "-N", "-f", self.write("squid.conf", cfg)]
        if self.kind == "tinyproxy":
            filt = self.write("tinyproxy.filter", f"{exact_re}\n{data_re}\n")
            cfg = f"""User nobody
Group nogroup
Port {port}
Listen {self.proxy_ip}
Timeout 900
MaxClients 4000
LogFile "{d}/tinyproxy.log"
LogLevel Connect
PidFile "{d}/tinyproxy.pid"
ConnectPort 443
Filter "{filt}"
FilterDefaultDeny Yes
FilterExtended Yes
FilterURLs Off
"""
            return ["tinyproxy", "-d", "-c", self.write("tinyproxy.conf", cfg)]
        raise ValueError(self.kind)

    def start(self):
        out = open(os.path.join(self.dir, "stdout.log"), "ab")
        err = open(os.path.join(self.dir, "stderr.log"), "ab")
        env = dict(os.environ, ACR_EGRESS_CONFIG="")
        self.proc = start(self.proxy_ns.argv(self.argv()), stdout=out, stderr=err, cwd=self.dir,
                          env=env)
        out.close()
        err.close()
        # Ready when one tunnel makes it through (bounded: 20 s).
        deadline = time.monotonic() + 20
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            last = self.bench.load(self, ["--count", "1", "--concurrency", "1", "--duration",
                                          "2", "--timeout", "2"], timeout=10)
            if last and last.get("tunnels") == 1:
                return
            time.sleep(0.2)
        with open(os.path.join(self.dir, "stderr.log"), errors="replace") as f:
            said = f.read()[-600:].strip()  # the directory goes with the run
        raise RuntimeError(f"{self.name} did not come up (exit {self.proc.poll()}, last {last}); "
                           f"its stderr: {said!r}")

    def is_wrapped_proxy(self, pid):
        """The acr-egress process itself under --wrap (valgrind runs it as its tool process)."""
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        return comm not in ("heaptrack", "bash", "sh") and self.acr.encode() in cmdline

    def stop(self):
        # SIGTERM to every process of the peer (a wrapper such as heaptrack's script may not
        # forward it), then SIGKILL whatever outlived the wait.
        for pid in self.pids()[:1000]:
            if self.bench.wrap and not self.is_wrapped_proxy(pid):
                continue  # heaptrack's script, interpreter and compressor finish by themselves
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        stop(self.proc, timeout=120 if self.bench.wrap else 10)
        deadline = time.monotonic() + (60 if self.bench.wrap else 2)
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.pids()[:1000]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None


class Bench:
    def __init__(self, args):
        self.args = args
        build = os.path.abspath(args.build_dir)
        self.acr = os.path.join(build, "proxy", "acr-egress")
        self.load_gen = os.path.join(build, "bench", "e2e", "acr_load_gen")
        self.sink_bin = os.path.join(build, "bench", "e2e", "acr_sink")
        self.baseline_acr = None
        if args.baseline:
            self.baseline_acr = os.path.join(os.path.abspath(args.baseline), "proxy", "acr-egress")
        for path in (self.acr, self.load_gen, self.sink_bin, self.baseline_acr):
            if path is not None and not os.access(path, os.X_OK):
                raise SystemExit(f"run.py: {path} missing: build with -DACR_BUILD_BENCH=ON")
        self.hello_path = os.path.abspath(args.hello)
        with open(self.hello_path, "rb") as f:
            self.host = sni_of(f.read())
        self.workers = args.workers
        self.wrap = shlex.split(args.wrap) if args.wrap else []
        self.perf = args.perf
        self.strace = args.strace
        self.idle_probe_command = args.idle_probe
        self.phases = set(args.phases.split(","))
        self.tmp = tempfile.mkdtemp(prefix="acr-bench-")
        os.chmod(self.tmp, 0o755)
        self.sink_ns = Ns("sink")
        self.sink = None
        self.sink_mode = None
        self.peers = []

    def setup(self, names):
        sweep_stale()
        self.sink_ns.create()
        self.sink_ns.run(["ip", "addr", "add", f"{SINK_IP}/32", "dev", "lo"])
        for i, name in enumerate(names):
            peer = Peer(self, i, name)
            peer.setup()
            self.peers.append(peer)

    def cleanup(self):
        for proc in reversed(_started):
            with contextlib.suppress(Exception):
                stop(proc, timeout=5)
        for ns in reversed(_namespaces):
            with contextlib.suppress(Exception):
                ns.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def set_sink(self, answer, hold=False):
        mode = (answer, hold)
        if self.sink_mode == mode and self.sink and self.sink.poll() is None:
            return
        stop(self.sink)
        argv = [self.sink_bin, "--listen", f"{SINK_IP}:443", "--answer", str(answer),
                "--lifetime", "7200"] + (["--hold"] if hold else [])
        self.sink = start(self.sink_ns.argv(argv), stdout=subprocess.PIPE)
        line = self.sink.stdout.readline()
        if b"sink_ready" not in line:
            raise RuntimeError("sink did not start")
        self.sink_mode = mode

    def load_argv(self, peer, extra):
        argv = [self.load_gen, "--mode", "connect" if peer.role == "connect" else "sni",
                "--target", peer.target(), "--hello", self.hello_path, "--host", self.host]
        return peer.client_ns.argv(argv + list(extra))

    def load(self, peer, extra, timeout):
        try:
            out = run(self.load_argv(peer, extra), timeout=timeout, check=False).stdout
        except subprocess.TimeoutExpired:
            return None
        lines = [l for l in out.splitlines() if l.startswith("{\"mode\"")]
        return json.loads(lines[-1]) if lines else None

    # -- phases ------------------------------------------------------------------------------

    def rate(self, peer, p):
        self.set_sink(p["answer"])
        if p["warmup"]:
            self.load(peer, ["--concurrency", str(p["concurrency"]), "--duration",
                             str(p["warmup"]), "--answer", str(p["answer"])], timeout=30)
        pids = peer.pids()
        perf = self.perf_start(peer, "rate")
        strace = self.strace_start(peer, "")
        segments0 = tcp_segments(pids[0]) if pids else None
        user0, sys0 = proc_cpu_split(pids)
        r = self.load(peer, ["--concurrency", str(p["concurrency"]), "--duration",
                             str(p["duration"]), "--answer", str(p["answer"])],
                      timeout=p["duration"] + 60)
        user1, sys1 = proc_cpu_split(peer.pids())
        segments1 = tcp_segments(pids[0]) if pids else None
        stop(perf, sig=signal.SIGINT, timeout=120)
        stop(strace, sig=signal.SIGINT, timeout=60)
        if not r or not r["tunnels"]:
            return {"errors": (r or {}).get("errors", -1)}
        return {"tunnels": r["tunnels"], "tunnels_per_s": r["tunnels_per_s"],
                "p50_ms": r["p50_ms"],
                "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"],
                "cpu_ms_per_1k": (user1 + sys1 - user0 - sys0) * 1000 / r["tunnels"] * 1000,
                # The same split into user space and kernel (JSON only; PROFILE.md section 9).
                "user_ms_per_1k": (user1 - user0) * 1000 / r["tunnels"] * 1000,
                "sys_ms_per_1k": (sys1 - sys0) * 1000 / r["tunnels"] * 1000,
                # TCP segments the proxy's namespace received and sent per tunnel (JSON only):
                # the packets whose kernel work the proxy's CPU time carries.
                **({"segs_in_per_tunnel": (segments1[0] - segments0[0]) / r["tunnels"],
                    "segs_out_per_tunnel": (segments1[1] - segments0[1]) / r["tunnels"]}
                   if segments0 and segments1 else {}),
                "errors": r["errors"], "error_kinds": r["error_kinds"]}

    def strace_start(self, peer, phase):
        """strace -c of every process of the peer (any peer) during one phase, to
        STRACE-PEER.txt (rate phase) or STRACE-PEER-PHASE.txt: syscalls per tunnel or per byte,
        side by side."""
        if not self.strace:
            return None
        suffix = f"-{phase}" if phase else ""
        argv = ["strace", "-c", "-f", "-o",
                f"{self.strace}-{peer.name.replace(' ', '_')}{suffix}.txt"]
        for pid in peer.pids():
            argv += ["-p", str(pid)]
        strace = start(argv)
        time.sleep(1)
        return strace

    def perf_start(self, peer, phase):
        """perf record (user-space call graphs; DWARF, as the Release build keeps no frame
        pointers) of an acr-egress peer's processes during one phase, to PERF-PHASE.data."""
        if not self.perf or peer.kind != "acr":
            return None
        out = f"{self.perf}-{peer.role}-{phase}.data"
        perf = start(["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,16384",
                      "-o", out, "-p", ",".join(map(str, peer.pids()))])
        time.sleep(1)
        return perf

    def idle(self, peer, p):
        self.set_sink(p["answer"], hold=True)
        time.sleep(p["settle"])
        rss0 = proc_rss_kib(peer.pids())
        self.idle_probe(peer, "before")
        proc = start(self.load_argv(peer, ["--idle", str(p["idle"]), "--hold", "60",
                                           "--answer", str(p["answer"])]),
                     stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        try:
            line = proc.stdout.readline().decode()  # {"idle_ready":N} (bounded by --timeout)
            ready = json.loads(line) if line.startswith("{") else {}
            time.sleep(p["settle"])
            rss1 = proc_rss_kib(peer.pids())
            self.idle_probe(peer, "held")
        finally:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop(proc)
        held = ready.get("idle_ready", 0)
        if not held:
            return {"idle_errors": ready.get("errors", -1)}
        return {"kib_per_idle": (rss1 - rss0) / held, "idle_held": held}

    def idle_probe(self, peer, when):
        """--idle-probe: runs the command with WHEN ("before" or "held") and the peer's pids,
        before the idle tunnels open and while they are held (PROFILE.md section 9)."""
        if self.idle_probe_command:
            subprocess.run(self.idle_probe_command.split() + [when] +
                           [str(pid) for pid in peer.pids()], timeout=30, check=False)

    def bulk(self, peer, size, count, timeout):
        self.set_sink(size)
        perf = self.perf_start(peer, f"bulk{count}")
        strace = self.strace_start(peer, f"bulk{count}")
        cpu0 = proc_cpu_seconds(peer.pids())
        r = self.load(peer, ["--concurrency", str(count), "--count", str(count), "--duration",
                             str(timeout), "--timeout", str(timeout), "--answer", str(size)],
                      timeout=timeout + 30)
        cpu1 = proc_cpu_seconds(peer.pids())
        stop(perf, sig=signal.SIGINT, timeout=120)
        stop(strace, sig=signal.SIGINT, timeout=60)
        if not r or r["tunnels"] != count:
            return None, None
        return r["mb_per_s"], (cpu1 - cpu0) / (r["bytes"] / GIB)

    def measure(self, peer, p):
        result = {}
        self.set_sink(p["answer"])
        peer.start()
        try:
            if "rate" in self.phases:
                result.update(self.rate(peer, p))
            if "idle" in self.phases:
                result.update(self.idle(peer, p))
            if "bulk" in self.phases:
                mb, cpu = self.bulk(peer, p["bulk_bytes"], 1, p["bulk_timeout"])
                if mb is not None:
                    result.update(bulk_mb_s=mb, cpu_s_per_gib=cpu)
            if "bulk16" in self.phases:
                mb16, _ = self.bulk(peer, p["bulk16_bytes"], 16, p["bulk_timeout"])
                if mb16 is not None:
                    result["bulk16_mb_s"] = mb16
        finally:
            peer.stop()
        return result


# -- report -----------------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(names, rounds):
    """Per peer: median per column. Per acr-egress row: per column the median over rounds of
    (acr-egress / best peer of the same role in that round) — same-round ratios, so drift in
    the machine's load cancels out."""
    summary = {}
    for name in names:
        summary[name] = {key: median([r.get(name, {}).get(key) for r in rounds])
                         for key, _, _ in COLUMNS}
        summary[name]["errors"] = sum(r.get(name, {}).get("errors", 0) or 0 for r in rounds)
    ratios = {}
    for name in names:
        role, kind = PEERS[name]
        if kind != "acr":
            continue
        peers = [n for n in names if PEERS[n][0] == role and PEERS[n][1] != "acr"]
        ratios[name] = {}
        for key, _, higher in COLUMNS:
            per_round = []
            for r in rounds:
                mine = r.get(name, {}).get(key)
                theirs = [r.get(n, {}).get(key) for n in peers]
                theirs = [v for v in theirs if v is not None and v > 0]
                if mine is None or not theirs:
                    continue
                best = max(theirs) if higher else min(theirs)
                per_round.append(mine / best)
            ratios[name][key] = median(per_round)
    return summary, ratios


def ab_ratios(names, rounds):
    """Per acr-egress peer with a baseline twin in `names`: per column the median, lowest and
    highest over rounds of (new / baseline) in the same round."""
    ab = {}
    for name in names:
        twin = name + BASELINE
        if twin not in names:
            continue
        ab[name] = {}
        for key, _, _ in COLUMNS:
            per_round = []
            for r in rounds:
                mine, theirs = r.get(name, {}).get(key), r.get(twin, {}).get(key)
                if mine is not None and theirs:
                    per_round.append(mine / theirs)
            if per_round:
                ab[name][key] = (median(per_round), min(per_round), max(per_round))
    return ab


def ab_markdown(ab, rounds_n):
    head = "| A/B: new / baseline | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, columns in ab.items():
        cells = []
        for key, _, _ in COLUMNS:
            value = columns.get(key)
            if value is None:
                cells.append("–")
            else:
                cells.append(f"{value[0]:.3f} ({value[1]:.2f}-{value[2]:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Median of the {rounds_n} same-round ratios (lowest-highest); the baseline ran "
                 "after the new binary in rounds 1, 3, ... and before it in rounds 2, 4, ....")
    return "\n".join(lines)


def fmt(value):
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(names, summary, ratios, meta):
    head = "| role | proxy | " + " | ".join(h for _, h, _ in COLUMNS) + " | errors |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for role in ("sni", "transparent", "connect"):
        for name in [n for n in names if PEERS[n][0] == role]:
            cells = []
            for key, _, _ in COLUMNS:
                cell = fmt(summary[name][key])
                if name in ratios and ratios[name].get(key) is not None:
                    cell = f"**{cell}** ({ratios[name][key]:.2f}x)"
                cells.append(cell)
            lines.append(f"| {role} | {name} | " + " | ".join(cells) +
                         f" | {summary[name]['errors']} |")
    lines.append("")
    lines.append("Ratios (acr-egress rows) are acr-egress / best peer of the same role, per "
                 "column, median of same-round ratios; higher is better for tunnels/s and MB/s, "
                 "lower is better for p99, CPU and memory.")
    lines.append(f"Run: {meta}")
    return "\n".join(lines)


def chart(names, ratios, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing (apt install python3-matplotlib): no PNG")
        return False
    acr = [n for n in names if n in ratios]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(1, len(acr))
    for i, name in enumerate(acr):
        values = []
        for key, _, higher in COLUMNS:
            r = ratios[name].get(key)
            # Plotted as "advantage": > 1 means acr-egress beats the best peer.
            values.append(0 if not r else (r if higher else 1 / r))
        xs = [j + i * width for j in range(len(COLUMNS))]
        bars = ax.bar(xs, values, width, label=name.replace("acr-egress ", "") + " role")
        for x, v in zip(xs, values):
            ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(acr) - 1) / 2 for j in range(len(COLUMNS))])
    ax.set_xticklabels([h for _, h, _ in COLUMNS], fontsize=8, rotation=12)
    ax.set_ylabel("acr-egress advantage over best peer (x)")
    ax.set_title("acr-egress vs best peer per role (> 1: acr-egress better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", default=os.path.join(SOURCE_DIR, "build", "bench"))
    parser.add_argument("--hello", default=os.path.join(
        SOURCE_DIR, "..", "shared", "data", "clienthello", "skopeo-go-default-acr.bin"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default=",".join(
        n for n in PEERS if not n.endswith(" splice") and not n.endswith(BASELINE)))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--answer", type=int, default=1024)
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load before rate")
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--bulk-bytes", type=int, default=GIB)
    parser.add_argument("--bulk16-bytes", type=int, default=GIB)
    parser.add_argument("--bulk-timeout", type=float, default=300,
                        help="seconds a bulk phase may take (per tunnel and in all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run (CI): tiny loads, one round, peers if installed")
    parser.add_argument("--phases", default="rate,idle,bulk,bulk16",
                        help="which measurements to run (comma list)")
    parser.add_argument("--wrap", help="prefix acr-egress's command line (valgrind, heaptrack)")
    parser.add_argument("--perf", metavar="PREFIX",
                        help="perf record acr-egress in each phase to PREFIX-ROLE-PHASE.data")
    parser.add_argument("--idle-probe", metavar="CMD",
                        help="run CMD before|held PID... around the idle phase (heap_probe.c)")
    parser.add_argument("--strace", metavar="PREFIX",
                        help="strace -c each peer in the rate phase to PREFIX-PEER.txt, "
                        "and in the bulk phases to PREFIX-PEER-bulkN.txt")
    parser.add_argument("--json", help="write every round's raw numbers here")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--png", help="draw the ratios here (python3-matplotlib)")
    parser.add_argument("--baseline", metavar="BUILD_DIR",
                        help="also run each acr-egress peer from this build (its proxy/acr-egress) "
                             "in the same rounds, and print new / baseline ratios")
    parser.add_argument("--from-json", metavar="FILE",
                        help="no run: redo the table (and --png) from a --json file")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        names = [n for n in PEERS if any(n in r for r in saved["rounds"])]
        summary, ratios = summarize(names, saved["rounds"])
        table = markdown(names, summary, ratios, saved["meta"])
        ab = ab_ratios(names, saved["rounds"])
        if ab:
            table += "\n\n" + ab_markdown(ab, len(saved["rounds"]))
        print(table)
        if args.png:
            chart(names, ratios, args.png)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run.py: needs root (network namespaces)")
    p = dict(duration=args.duration, concurrency=args.concurrency, answer=args.answer,
             idle=args.idle, bulk_bytes=args.bulk_bytes, bulk16_bytes=args.bulk16_bytes,
             bulk_timeout=max(10, min(args.bulk_timeout, 1800)), warmup=args.warmup, settle=0.5)
    rounds_n = max(1, min(args.rounds, 20))
    if args.smoke:
        p.update(duration=0.5, idle=20, bulk_bytes=16 << 20, bulk16_bytes=1 << 20,
                 bulk_timeout=20, warmup=0, settle=0.1)
        rounds_n = 1
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    for n in names:
        if n not in PEERS:
            raise SystemExit(f"run.py: unknown peer {n!r} (known: {', '.join(PEERS)})")
    if any(n.endswith(BASELINE) for n in names) and not args.baseline:
        raise SystemExit("run.py: a baseline peer needs --baseline BUILD_DIR")
    if args.baseline:
        # Each twin right behind its acr-egress peer; the rounds below swap the two every other
        # round (a pair's first run measures worse here: e2e/PROFILE.md section 14).
        names = [m for n in names for m in (
            [n, n + BASELINE] if PEERS[n][1] == "acr" and not n.endswith(BASELINE) else [n])]
        names = list(dict.fromkeys(names))
    missing = [n for n in names if not installed(PEERS[n][1])]
    if missing:
        log("not installed, left out (scripts/install-deps --bench):", ", ".join(missing))
        names = [n for n in names if n not in missing]

    bench = Bench(args)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    rounds = []
    started = time.time()
    try:
        bench.setup(names)
        peers = bench.peers
        for r in range(rounds_n):
            results = {}
            # Rotate the order each round so no peer always runs first or last.
            order = peers[r % len(peers):] + peers[:r % len(peers)]
            # A baseline twin runs after its peer in rounds 1, 3, ... and before it in 2, 4, ...
            for twin in [q for q in order if q.name.endswith(BASELINE)]:
                mine = next((q for q in order if q.name == twin.name[:-len(BASELINE)]), None)
                if mine is None:
                    continue
                i, j = order.index(mine), order.index(twin)
                if (i > j) != (r % 2 == 1):
                    order[i], order[j] = order[j], order[i]
            for peer in order:
                log(f"round {r + 1}/{rounds_n}: {peer.name}")
                try:
                    results[peer.name] = bench.measure(peer, p)
                except RuntimeError as e:
                    log(f"{peer.name}: {e}")
                    results[peer.name] = {"failed": str(e)}
                log(f"  {json.dumps(results[peer.name])}")
            rounds.append(results)
    finally:
        bench.cleanup()
    summary, ratios = summarize(names, rounds)
    load = os.getloadavg()
    meta = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {rounds_n} round(s), "
            f"{os.cpu_count()} CPUs, load avg at end {load[0]:.1f}, {p['concurrency']} concurrent "
            f"tunnels x {p['duration']} s, hello {os.path.basename(args.hello)} + "
            f"{p['answer']} B answer, {p['idle']} idle tunnels, bulk {p['bulk_bytes'] >> 20} MiB, "
            f"16 x {p['bulk16_bytes'] >> 20} MiB, {args.workers} workers/threads per proxy")
    table = markdown(names, summary, ratios, meta)
    ab = ab_ratios(names, rounds)
    if ab:
        table += "\n\n" + ab_markdown(ab, rounds_n)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "params": p, "rounds": rounds, "summary": summary,
                       "ratios": ratios, "ab": ab}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.png:
        chart(names, ratios, args.png)
    failed = [n for r in rounds for n, v in r.items() if "failed" in v]
    if args.smoke and (failed or any(not summary[n]["tunnels_per_s"] for n in names
                                     if PEERS[n][1] == "acr")):
        log("smoke run failed:", failed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
