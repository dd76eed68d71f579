#!/usr/bin/env python3
"""Soak run of acr-egress (issue 10, section 5): mixed traffic for --duration seconds under a
reload every 5 seconds (a third of them invalid), asserting zero crashes, zero unexpected
outcomes, and memory (RSS), descriptors and CPU flat.

Traffic (each operation's expected outcome is fixed by its kind; anything else is a failure):
  allowed      CONNECT to an allowed name over the IPv4 listener: 200, 1-16 KiB echoed intact
  ipv6         CONNECT over the [::1] listener to a name with only an AAAA (::1): 200, echo
  flip         CONNECT to the name that valid configs allow in turn: 200 + echo, or 403
               host_not_allowed (which one depends on the config in force)
  denied       CONNECT to a name no config allows: 403 host_not_allowed
  bad_head     a malformed CONNECT head from a fixed list: its own 400/405 status and reason
  bad_hello    a malformed ClientHello to the sni listener: closed (FIN or RST), no byte back
  sni          a real ClientHello for an allowed name to the sni listener: echoed back intact
  slow         the CONNECT head dribbled over ~1 s, then 200 and echo
  stalled      a tunnel whose client stops reading for 3 s with 512 KiB in flight, then reads it
  bulk         8 MiB each way at once through one tunnel, SHA-256 compared both ways

Every second the proxy's RSS (/proc/PID/status), open descriptors (/proc/PID/fd) and CPU share
(/proc/PID/stat) are sampled; a least-squares line over the second half of the run must have a
rise (drift) within the bounds given; after the traffic stops, the descriptors must be back
to the idle count measured after the warm-up. The proxy must still be running at the end, exit 0
on SIGTERM and show no sanitizer report.

Network: everything is on loopback, inside a private network namespace when run as root (so the
ports are clear of anything else on the machine). Every loop is bounded in count and time; the
proxy, dnsmasq, the upstreams and the namespace are stopped and removed at the end.

Usage: ACR_BINARY=build/release/proxy/acr-egress tests/soak/soak.py --duration 600 \\
          --json /tmp/soak.json [--chart tests/soak/soak-10min.png]
"""

import argparse
import errno
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402

UPSTREAM_V4 = "127.0.0.2"
UPSTREAM_V6 = "::1"
STABLE = "ok.azurecr.io"
STABLE_V6 = "ok6.azurecr.io"
ALPHA = "alpha.azurecr.io"  # allowed by even valid configs
BETA = "beta.azurecr.io"  # allowed by odd valid configs
DENIED = "evil.example.com"
RELOAD_INTERVAL = 5.0
STALL_SECONDS = 3.0
STALL_BYTES = 512 * 1024
BULK_BYTES = 8 * 1024 * 1024
OP_TIMEOUT = 30.0

# (weight, kind)
MIX = [(30, "allowed"), (10, "ipv6"), (5, "flip"), (10, "denied"), (10, "bad_head"),
       (10, "bad_hello"), (6, "sni"), (6, "slow"), (4, "stalled"), (2, "bulk")]

# Malformed CONNECT heads and the (status, reason) each must get.
BAD_HEADS = [
    (b"GET http://ok.azurecr.io/ HTTP/1.1\r\nHost: ok.azurecr.io\r\n\r\n", 405, "connect_only"),
    (b"CONNECT ok.azurecr.io HTTP/1.1\r\nHost: ok.azurecr.io\r\n\r\n", 400, None),
    (b"CONNECT ok.azurecr.io:443 HTTP/1.1\nHost: ok.azurecr.io:443\n\n", 400, "bare_lf"),
    (b"CONNECT ok.azurecr.io:99999 HTTP/1.1\r\nHost: ok.azurecr.io:99999\r\n\r\n", 400, None),
    (b"CONNECT ok.azurecr.io:443 HTTP/1.1\r\n\r\n", 400, "missing_host"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "http2_preface"),
    (b"CONNECT \x00\x01\x02:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
]


class Failure(Exception):
    pass


def payload_bytes(size):
    """Random tunnel bytes that do not start like a TLS record: with --allow-non-tls the proxy
    still judges a first byte of 0x14..0x17 as TLS (and refuses a broken record, bad_record)."""
    return b"SOAK" + os.urandom(size - 4)


def recv_exact(sock, count, timeout=OP_TIMEOUT):
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failure(f"timed out with {len(out)}/{count} bytes")
        sock.settimeout(remaining)
        chunk = sock.recv(min(1 << 20, count - len(out)))
        if not chunk:
            raise Failure(f"closed after {len(out)}/{count} bytes")
        out += chunk
    return bytes(out)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {}  # kind -> {"ok": n, "fail": n}
        self.failures = []  # (time, kind, detail), at most 50 kept
        self.failure_count = 0
        self.samples = []
        self.reloads = []  # (time, variant, outcome)
        self.t0 = None
        self.captures = list(harness.read_captures().values())

    # ------------------------------------------------------------------ setup

    def start(self, tmp):
        self.tmp = tmp
        self.echo_port = harness.common_free_port([UPSTREAM_V4, UPSTREAM_V6])
        self.sni_port = harness.common_free_port(["127.0.0.1", UPSTREAM_V4])
        self.servers = [harness.RawServer(UPSTREAM_V4, self.echo_port, handler=_echo, backlog=512),
                        harness.RawServer(UPSTREAM_V6, self.echo_port, handler=_echo, backlog=512),
                        harness.RawServer(UPSTREAM_V4, self.sni_port, handler=_echo, backlog=512)]
        self.dns = harness.Dnsmasq({STABLE: [UPSTREAM_V4], STABLE_V6: [UPSTREAM_V6],
                                    ALPHA: [UPSTREAM_V4], BETA: [UPSTREAM_V4]}, ttl=5)
        self.dns.start()
        self.config = os.path.join(tmp, "soak.toml")
        self.variant = 0
        self.write_config(0)
        self.connect4 = f"127.0.0.1:{harness.free_port()}"
        self.connect6 = f"[::1]:{harness.free_port('::1')}"
        self.sni = ("127.0.0.1", self.sni_port)
        env = {}
        asan = os.environ.get("ASAN_OPTIONS", "detect_leaks=1")
        # A bounded quarantine: ASan's default (256 MiB) would read as a memory climb.
        env["ASAN_OPTIONS"] = asan + ":quarantine_size_mb=16:abort_on_error=0"
        self.proxy = harness.Proxy(
            ["--config", self.config, "--connect", self.connect4, "--connect", self.connect6,
             "--sni", f"127.0.0.1:{self.sni_port}", "--allow-non-tls",
             "--dns-server", self.dns.address, "--workers", "2", "--head-timeout", "5s",
             "--idle-timeout", "60s", "--deny-log-rate", "0"], env=env)
        self.proxy.start()

    def close(self):
        """Stops the upstreams and dnsmasq (the proxy is stopped by main())."""
        closers = [s.stop for s in getattr(self, "servers", [])]
        if getattr(self, "dns", None):
            closers.append(self.dns.stop)
        for closer in closers:
            try:
                closer()
            except Exception as e:  # cleanup goes on
                print(f"soak: cleanup: {e}", file=sys.stderr)

    def write_config(self, variant):
        """variant % 3 == 2: invalid (garbage TOML or an unknown service tag, in turn); else a
        valid policy allowing STABLE, STABLE_V6 and ALPHA (even valid count) or BETA (odd)."""
        if variant % 3 == 2:
            if (variant // 3) % 2 == 0:
                text = "[policy\nallow_hosts = ['unterminated\n"
            else:
                text = (f"[policy]\nallow_hosts = [\"{STABLE}\"]\n"
                        f"service_tags_file = \"{harness.shared_dir()}/data/"
                        "ServiceTags_Public.json\"\nservice_tags = [\"AzureContainerRegistryy\"]\n")
            valid = False
        else:
            flip = ALPHA if (variant - variant // 3) % 2 == 0 else BETA
            text = (f"[policy]\nallow_hosts = [\"{STABLE}\", \"{STABLE_V6}\", \"{flip}\"]\n"
                    f"ports = [{self.echo_port}, {self.sni_port}]\n"
                    f"allow_cidrs = [\"{UPSTREAM_V4}/32\", \"{UPSTREAM_V6}/128\"]\n")
            valid = True
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config)
        return valid

    # ------------------------------------------------------------------ traffic

    def tunnel(self, listen, name, port=None, head=None):
        status, headers, body, sock = harness.connect_via_proxy(
            listen, f"{name}:{port or self.echo_port}", head=head, timeout=OP_TIMEOUT)
        return status, headers.get("x-acr-egress-reason"), sock

    def echo(self, sock, size):
        payload = payload_bytes(size)
        sock.sendall(payload)
        got = sock.acr_early + recv_exact(sock, size - len(sock.acr_early))
        if got != payload:
            raise Failure(f"echo of {size} bytes differs")

    def op_allowed(self, listen=None, name=STABLE):
        status, reason, sock = self.tunnel(listen or self.connect4, name)
        with sock:
            if status != 200:
                raise Failure(f"{name}: {status} {reason}")
            self.echo(sock, self.rng.randint(1024, 16384))

    def op_ipv6(self):
        self.op_allowed(self.connect6, STABLE_V6)

    def op_flip(self):
        name = self.rng.choice([ALPHA, BETA])
        status, reason, sock = self.tunnel(self.connect4, name)
        with sock:
            if status == 200:
                self.echo(sock, 1024)
            elif (status, reason) != (403, "host_not_allowed"):
                raise Failure(f"{name}: {status} {reason}")

    def op_denied(self):
        status, reason, sock = self.tunnel(self.connect4, DENIED)
        sock.close()
        if (status, reason) != (403, "host_not_allowed"):
            raise Failure(f"{DENIED}: {status} {reason}")

    def op_bad_head(self):
        head, want_status, want_reason = self.rng.choice(BAD_HEADS)
        status, reason, sock = self.tunnel(self.connect4, "x", head=head)
        sock.close()
        if status != want_status or (want_reason and reason != want_reason):
            raise Failure(f"{head[:40]!r}: {status} {reason}, want {want_status} {want_reason}")

    def bad_hello(self):
        """A malformed first flight: a real hello cut short then closed, random bytes under a
        TLS record header, a hello with a corrupted length, or plain HTTP."""
        hello = self.rng.choice(self.captures)
        choice = self.rng.randrange(4)
        if choice == 0:
            return hello[:self.rng.randint(6, max(7, len(hello) - 1))], True
        if choice == 1:
            body = os.urandom(self.rng.randint(1, 300))
            return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body, False
        if choice == 2:
            broken = bytearray(hello)
            broken[6:9] = b"\xff\xff\xff"  # handshake length far past the record
            return bytes(broken), True
        return b"GET / HTTP/1.1\r\nHost: ok.azurecr.io\r\n\r\n", False

    def op_bad_hello(self):
        data, half_close = self.bad_hello()
        with socket.create_connection(self.sni, timeout=OP_TIMEOUT) as sock:
            try:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)  # a cut hello: the client has nothing more
            except (BrokenPipeError, ConnectionResetError, OSError) as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise
                # The proxy refused before all was sent: that is a close, and the read says how.
            got, how = harness.recv_until_closed(sock, 15)
        if got or how not in ("fin", "rst"):
            raise Failure(f"bad hello: got {len(got)} bytes, ended {how}")

    def op_sni(self):
        hello = harness.client_hello(STABLE)
        with socket.create_connection(self.sni, timeout=OP_TIMEOUT) as sock:
            sock.sendall(hello)
            got = recv_exact(sock, len(hello))
        if got != hello:
            raise Failure("sni: the hello did not come back intact")

    def op_slow(self):
        head = (f"CONNECT {STABLE}:{self.echo_port} HTTP/1.1\r\nHost: {STABLE}:{self.echo_port}"
                "\r\n\r\n").encode()
        host, port = harness._split_addr(self.connect4)
        with socket.create_connection((host, port), timeout=OP_TIMEOUT) as sock:
            harness.send_dribbled(sock, head, chunk=4, delay=1.0 / (len(head) / 4),
                                  max_seconds=5)
            response = b""
            while b"\r\n\r\n" not in response and len(response) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                response += chunk
            if not response.startswith(b"HTTP/1.1 200"):
                raise Failure(f"slow: {response[:60]!r}")
            rest = response.split(b"\r\n\r\n", 1)[1]
            payload = payload_bytes(2048)
            sock.sendall(payload)
            if rest + recv_exact(sock, len(payload) - len(rest)) != payload:
                raise Failure("slow: echo differs")

    def op_stalled(self):
        status, reason, sock = self.tunnel(self.connect4, STABLE)
        with sock:
            if status != 200:
                raise Failure(f"stalled: {status} {reason}")
            payload = payload_bytes(STALL_BYTES)
            sender = threading.Thread(target=_send_quietly, args=(sock, payload), daemon=True)
            sender.start()
            time.sleep(STALL_SECONDS)  # reads nothing while the echo backs up
            got = recv_exact(sock, len(payload))
            sender.join(OP_TIMEOUT)
            if got != payload:
                raise Failure("stalled: bytes differ")

    def op_bulk(self):
        status, reason, sock = self.tunnel(self.connect4, STABLE)
        with sock:
            if status != 200:
                raise Failure(f"bulk: {status} {reason}")
            payload = payload_bytes(BULK_BYTES)
            sender = threading.Thread(target=_send_quietly, args=(sock, payload, True),
                                      daemon=True)
            sender.start()
            got = recv_exact(sock, len(payload), timeout=60)
            sender.join(OP_TIMEOUT)
            if hashlib.sha256(got).digest() != hashlib.sha256(payload).digest():
                raise Failure("bulk: digest differs")

    def run_op(self, kind):
        try:
            getattr(self, "op_" + kind)()
            ok, detail = True, None
        except (Failure, OSError) as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        with self.lock:
            entry = self.counts.setdefault(kind, {"ok": 0, "fail": 0})
            entry["ok" if ok else "fail"] += 1
            if not ok:
                self.failure_count += 1
                if len(self.failures) < 50:
                    self.failures.append((round(time.monotonic() - self.t0, 1), kind, detail))
        return ok

    def worker(self, seed):
        rng = random.Random(seed)
        kinds = [k for w, k in MIX for _ in range(w)]
        for _ in range(1_000_000):  # bounded; the deadline ends it long before
            if self.stop.is_set():
                return
            self.run_op(rng.choice(kinds))
            self.stop.wait(rng.uniform(0, self.args.pause))

    # ------------------------------------------------------------------ reloads and samples

    def reloader(self):
        for _ in range(100_000):
            if self.stop.wait(RELOAD_INTERVAL):
                return
            self.variant += 1
            valid = self.write_config(self.variant)
            self.proxy.send_signal(signal.SIGHUP)
            self.reloads.append((round(time.monotonic() - self.t0, 1), self.variant, valid))

    def sample(self, last):
        pid = self.proxy.pid
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        now = time.monotonic()
        share = None
        if last:
            share = 100.0 * (cpu - last[0]) / max(1e-3, now - last[1])
        with self.lock:
            ops = sum(c["ok"] + c["fail"] for c in self.counts.values())
        return {"t": round(now - self.t0, 2), "rss_kib": rss, "fds": fds,
                "cpu_pct": None if share is None else round(share, 1), "ops": ops}, (cpu, now)

    def sampler(self):
        last = None
        for _ in range(1_000_000):
            if not self.proxy.running():
                with self.lock:
                    self.failure_count += 1
                    self.failures.append((round(time.monotonic() - self.t0, 1), "proxy",
                                          "the proxy is no longer running"))
                self.stop.set()
                return
            sample, last = self.sample(last)
            if sample["cpu_pct"] is not None:
                self.samples.append(sample)
            if self.stop.wait(1.0):
                return

    # ------------------------------------------------------------------ the run

    def warm_up(self):
        for kind in ("allowed", "ipv6", "denied", "bad_head", "bad_hello", "sni", "flip"):
            if not self.run_op(kind):
                raise SystemExit(f"soak: warm-up {kind} failed: {self.failures[-1]}")
        time.sleep(1.0)
        return len(os.listdir(f"/proc/{self.proxy.pid}/fd"))

    def run(self):
        self.t0 = time.monotonic()
        idle_fds = self.warm_up()
        with self.lock:
            self.counts.clear()
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.sampler, daemon=True),
                   threading.Thread(target=self.reloader, daemon=True)]
        threads += [threading.Thread(target=self.worker, args=(self.args.seed + i,), daemon=True)
                    for i in range(self.args.clients)]
        for t in threads:
            t.start()
        self.stop.wait(self.args.duration)
        self.stop.set()
        for t in threads:
            t.join(OP_TIMEOUT + 60)
        stuck = [t.name for t in threads if t.is_alive()]
        time.sleep(3.0)  # tunnels closed by the clients are gone from the proxy by now
        end_fds = len(os.listdir(f"/proc/{self.proxy.pid}/fd")) if self.proxy.running() else None
        return idle_fds, end_fds, stuck


def _echo(conn, index, record):
    """An echo upstream that does not record (a soak moves gigabytes)."""
    try:
        for _ in range(10_000_000):
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
    except OSError:
        return


def _send_quietly(sock, payload, half_close=False):
    try:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def slope(points):
    """Least-squares slope of [(x, y)] (per unit of x); 0 for fewer than 2 points."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def summarise(soak, idle_fds, end_fds, stuck, args, reload_log):
    half = [s for s in soak.samples if s["t"] >= args.duration / 2]
    series = {key: [(s["t"], s[key]) for s in half] for key in ("rss_kib", "fds", "cpu_pct")}
    slopes = {key: round(slope(points), 4) for key, points in series.items()}
    values = {key: [s[key] for s in soak.samples] for key in ("rss_kib", "fds", "cpu_pct")}
    stats = {key: {"min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 1)}
             for key, v in values.items() if v}
    valid = sum(1 for r in soak.reloads if r[2])
    return {
        "binary": harness.binary_path(), "duration_s": args.duration, "clients": args.clients,
        "seed": args.seed, "ops": {k: v for k, v in sorted(soak.counts.items())},
        "ops_total": sum(c["ok"] + c["fail"] for c in soak.counts.values()),
        "unexpected": soak.failure_count, "failures": soak.failures,
        "reloads": {"total": len(soak.reloads), "valid": valid,
                    "invalid": len(soak.reloads) - valid,
                    "applied": reload_log["applied"], "rejected": reload_log["rejected"]},
        "idle_fds_before": idle_fds, "idle_fds_after": end_fds, "stuck_threads": stuck,
        "second_half_slopes_per_s": slopes, "stats": stats,
        "second_half_drift": {key: round(value * args.duration / 2, 2)
                              for key, value in slopes.items()},
        "drift_bounds": {"rss_kib": args.max_rss_drift * 1024, "fds": args.max_fd_drift,
                         "cpu_pct": args.max_cpu_drift},
        "samples": soak.samples, "reload_events": soak.reloads,
    }


def check(summary, proxy_exit, sanitizer_error):
    problems = []
    if summary["unexpected"]:
        problems.append(f"{summary['unexpected']} unexpected outcomes: {summary['failures'][:5]}")
    if summary["stuck_threads"]:
        problems.append(f"threads still running: {summary['stuck_threads']}")
    reloads = summary["reloads"]
    if reloads["applied"] != reloads["valid"] or reloads["rejected"] != reloads["invalid"]:
        problems.append(f"reloads: {reloads}")
    for key, bound in summary["drift_bounds"].items():
        value = summary["second_half_drift"][key]
        if value > bound:
            problems.append(f"{key} rose {value} over the second half (bound {bound})")
    before, after = summary["idle_fds_before"], summary["idle_fds_after"]
    if after is None or after > before + 4:
        problems.append(f"descriptors after the run {after}, idle before {before}")
    if proxy_exit != 0:
        problems.append(f"proxy exit code {proxy_exit} on SIGTERM")
    if sanitizer_error:
        problems.append(sanitizer_error)
    return problems


def draw_chart(json_path, png_path):
    """Draws the chart with Debian's python3-matplotlib (/usr/bin/python3: the interpreter
    running this script may be another one)."""
    subprocess.run(["/usr/bin/python3", os.path.join(HERE, "chart.py"), json_path, png_path],
                   check=True, timeout=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--clients", type=int, default=6, help="concurrent client threads")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="each client's random pause between operations, at most (s)")
    parser.add_argument("--seed", type=int, default=10)
    # Bounds on the drift: the rise of the least-squares line across the second half of the run
    # (its slope times half the duration), so that one bound means the same for any duration.
    parser.add_argument("--max-rss-drift", type=float, default=8.0, help="MiB (default 8)")
    parser.add_argument("--max-fd-drift", type=float, default=6.0, help="descriptors (6)")
    parser.add_argument("--max-cpu-drift", type=float, default=10.0,
                        help="percentage points of one core (10)")
    parser.add_argument("--json", help="write the summary and samples here")
    parser.add_argument("--chart", help="draw the samples as a PNG here (needs --json)")
    args = parser.parse_args()
    if args.duration < 20 or args.duration > 3600:
        parser.error("--duration must be within 20..3600 s")

    ns = None
    if os.geteuid() == 0:
        from netns_fixtures import NetNs
        ns = NetNs([])
        ns.create()
        ns.enter()
    tmp = harness.TempDir(prefix="acr-soak-")
    soak = Soak(args)
    proxy_exit, sanitizer_error = None, None
    try:
        soak.start(tmp.path)
        idle_fds, end_fds, stuck = soak.run()
        text = soak.proxy.stderr_text()
        reload_log = {"applied": text.count("reloaded the policy"),
                      "rejected": text.count("reload failed")}
        access = {}
        for entry in soak.proxy.access_log():
            key = f"{entry.get('decision')} {entry.get('reason')} {entry.get('phase')}"
            access[key] = access.get(key, 0) + 1
        try:
            proxy_exit = soak.proxy.stop()
        except AssertionError as e:
            sanitizer_error = str(e)[:4000]
            proxy_exit = soak.proxy.returncode
        summary = summarise(soak, idle_fds, end_fds, stuck, args, reload_log)
        summary["access_log"] = dict(sorted(access.items()))
    finally:
        if getattr(soak, "proxy", None) and soak.proxy.running():
            try:
                soak.proxy.stop()
            except AssertionError:
                pass
        soak.close()
        tmp.cleanup()
        if ns:
            ns.destroy()
    problems = check(summary, proxy_exit, sanitizer_error)
    summary["problems"] = problems
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
        if args.chart:
            draw_chart(args.json, args.chart)
    brief = {k: v for k, v in summary.items() if k not in ("samples", "reload_events")}
    print(json.dumps(brief, indent=1))
    if problems:
        print("soak: FAILED:\n  " + "\n  ".join(problems))
        print("0 passed, 1 failed")
        return 1
    print("soak: passed")
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
