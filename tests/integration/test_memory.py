"""Memory bounds under hostile load (issue 10 defect 10, THREATS R8).

Stalled readers: clients that stop reading while their upstream keeps sending. Each tunnel holds
at most one read (64 KiB) per direction, and all tunnels together at most --max-buffer-memory
plus 16 KiB each (past the budget every read is 16 KiB, and a side is read only when none of its
bytes wait, so a reader that keeps up still gets its bytes).
Parked half-requests: unfinished CONNECT heads and ClientHellos together hold at most
--max-handshake-memory; the connection whose bytes would pass it is refused handshake_memory.

Loopback only, in a private namespace when root. ACR_STALLED_TUNNELS (default 512) sets the
stalled-tunnel count; the RSS of the proxy before and after is printed (the issue's 4,096-tunnel
measurement is this test with ACR_STALLED_TUNNELS=4096 ACR_BUFFER_BUDGET=67108864 against a build
without sanitizers; ACR_BUFFER_BUDGET=none runs a binary without the option and only measures).
"""

import os
import resource
import selectors
import socket
import sys
import threading
import time
import unittest

import harness

UPSTREAM_IP = "127.0.0.2"
CHUNK = b"d" * 65536
# Every test socket's maximum segment: Ethernet's, not loopback's 65,483. The kernel sizes a new
# TCP socket's send buffer from its peer's segment size (2 x 10 segments, each rounded up to a
# power of two), so on loopback each of the proxy's sockets toward a stalled client starts with
# 2.5 MiB of room: 512 stalled tunnels then queue 1.3 GiB in the kernel before the proxy holds a
# byte, which brushes tcp_mem's pressure mark on a 24 GiB host (a CI run ended at 365,360 of
# 383,878 pages and the flows slowed until the proxy had buffered only 0.7 of its 8 MiB). With
# 1460-byte segments that room is about 90 KiB, as it would be across a real link.
ETHERNET_MSS = 1460


def tcp_memory_pages():
    """The kernel's TCP memory in use, in pages (/proc/net/sockstat "TCP: ... mem N"): global,
    not per namespace."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return 0


def _read_tcp_memory_pressure():
    try:
        with open("/proc/sys/net/ipv4/tcp_mem") as f:
            return int(f.read().split()[1])
    except OSError:
        return 0  # unknown: no wait, reported as 0


# tcp_mem's middle value, in pages: past it the kernel shrinks every TCP socket's buffers. Read
# at import: the sysctl is global and only the initial network namespace shows it.
TCP_MEMORY_PRESSURE_PAGES = _read_tcp_memory_pressure()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class FloodServer:
    """Accepts on (host, port) and writes to every connection as fast as it drains, from one
    selector thread, until stop()."""

    def __init__(self, host, port):
        self.sock = socket.create_server((host, port), backlog=4096)
        # Small kernel send buffers (inherited by accepted sockets): thousands of stalled
        # loopback flows with autotuned buffers would put the whole TCP stack under memory
        # pressure and slow every flow, the reading client's included.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, ETHERNET_MSS)
        self.sock.setblocking(False)
        self.conns = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is self.sock:
                    while True:
                        try:
                            conn, _ = self.sock.accept()
                        except OSError:  # BlockingIOError, or a connection already aborted
                            break
                        conn.setblocking(False)
                        self.conns.append(conn)
                        sel.register(conn, selectors.EVENT_WRITE)
                    continue
                try:
                    key.fileobj.send(CHUNK)
                except BlockingIOError:
                    pass
                except OSError:
                    sel.unregister(key.fileobj)
        sel.close()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
        for conn in self.conns:
            conn.close()
        self.sock.close()


class MemoryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.isolate_in_netns(cls)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        cls.addClassCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
        cls.port = harness.free_port(UPSTREAM_IP)
        cls.flood = FloodServer(UPSTREAM_IP, cls.port)
        cls.addClassCleanup(cls.flood.stop)

    def start_proxy(self, *extra):
        self.proxy_port = harness.free_port()
        self.admin_port = harness.free_port()
        proxy = harness.Proxy(["--connect", f"127.0.0.1:{self.proxy_port}",
                               "--allow-cidr", f"{UPSTREAM_IP}/32", "--port", str(self.port),
                               "--allow-non-tls", "--workers", "2", "--max-connections", "9000",
                               # ACR_STALLED_TUNNELS may hold more than the per-client default
                               # from this one address.
                               "--max-connections-per-client", "0",
                               "--admin", f"127.0.0.1:{self.admin_port}"] + list(extra),
                              nofile=min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536))
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def scrape(self):
        return harness.curl("-s", "--max-time", "5",
                            f"http://127.0.0.1:{self.admin_port}/metrics").stdout

    def stalled_tunnel(self, rcvbuf=4096):
        """A tunnel to the flood server whose client never reads (small receive buffer)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, ETHERNET_MSS)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.proxy_port))
        target = f"{UPSTREAM_IP}:{self.port}"
        # The tunnel relays once the client's first bytes arrive (not TLS: --allow-non-tls).
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nx".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            self.assertTrue(chunk, "closed before the 200")
            head += chunk
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        return sock

    def wait_stable(self, proxy, seconds=30):
        """Waits until the proxy's RSS has not grown for 2 s (bounded); returns it in KiB."""
        deadline = time.monotonic() + seconds
        last, since = rss_kib(proxy.pid), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < 2:
            time.sleep(0.25)
            now = rss_kib(proxy.pid)
            if now > last + 256:
                last, since = now, time.monotonic()
        return rss_kib(proxy.pid)

    def test_one_stalled_tunnel_holds_at_most_64_kib_per_direction(self):
        """One client that stops reading while its upstream floods: the proxy holds at most
        64 KiB for it (the relay stops reading a side while any of its bytes wait: at most what
        one read could not hand on)."""
        proxy = self.start_proxy()
        sock = self.stalled_tunnel()
        self.addCleanup(sock.close)
        self.wait_stable(proxy, 10)
        time.sleep(1)
        buffered = metric(self.scrape(), "acr_egress_relay_buffered_bytes")
        self.assertIsNotNone(buffered)
        # Stalled: bytes of the last read wait for the client (none would, had it kept up).
        self.assertGreater(buffered, 0, "the tunnel was not stalled")
        self.assertLessEqual(buffered, 64 * 1024)

    def test_stalled_tunnels_stay_under_the_buffer_budget(self):
        """N stalled tunnels (ACR_STALLED_TUNNELS, 512) with --max-buffer-memory 8 MiB hold at
        most 1.25 x the budget plus one 16 KiB read per tunnel, and a new tunnel whose client reads
        still gets 512 KiB within 20 s: the stalled ones stopped being read, not everyone."""
        count = int(os.environ.get("ACR_STALLED_TUNNELS", "512"))
        # With Ethernet segments (ETHERNET_MSS) the 512 stalled flows take about 55,000 pages
        # (215 MiB) of kernel TCP memory here, a seventh of tcp_mem's pressure mark on a 24 GiB
        # host; start only once what earlier tests left is gone (bounded), and report it.
        deadline = time.monotonic() + 30
        while (tcp_memory_pages() > TCP_MEMORY_PRESSURE_PAGES // 4
               and time.monotonic() < deadline):
            time.sleep(0.5)
        tcp_before = tcp_memory_pages()
        # ACR_BUFFER_BUDGET: bytes, or "none" to measure a binary without the option (RSS only).
        budget_env = os.environ.get("ACR_BUFFER_BUDGET", str(8 << 20))
        budget = None if budget_env == "none" else int(budget_env)
        proxy = self.start_proxy(*(["--max-buffer-memory", str(budget)] if budget else []))
        base = self.wait_stable(proxy, 5)
        tunnels = []
        self.addCleanup(lambda: [s.close() for s in tunnels])
        for _ in range(count):
            tunnels.append(self.stalled_tunnel())
        after = self.wait_stable(proxy, 60)
        time.sleep(1)
        text = self.scrape()
        buffered = metric(text, "acr_egress_relay_buffered_bytes")
        state = (f"relay_buffered_bytes {buffered}; kernel TCP memory {tcp_before} -> "
                 f"{tcp_memory_pages()} pages (pressure at {TCP_MEMORY_PRESSURE_PAGES}); flood "
                 f"thread {'alive' if self.flood._thread.is_alive() else 'DEAD'}, "
                 f"{len(self.flood.conns)} connections")
        print(f"\n{count} stalled tunnels: RSS {base} KiB -> {after} KiB "
              f"(+{(after - base) / 1024:.1f} MiB, {(after - base) / count:.1f} KiB/tunnel); "
              f"{state}", file=sys.stderr)
        if budget is None:
            return
        self.assertIsNotNone(buffered)
        self.assertGreater(buffered, budget * 0.9, f"the tunnels did not fill the budget: {state}")
        self.assertLessEqual(buffered, budget * 1.25 + count * (16 * 1024 + 1024))

        reader = self.stalled_tunnel(rcvbuf=None)  # same set-up, but this client reads
        self.addCleanup(reader.close)
        got, deadline = 0, time.monotonic() + 20
        while got < (512 << 10) and time.monotonic() < deadline:
            chunk = reader.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        self.assertGreaterEqual(got, 512 << 10, "a reading client was starved")

    def test_parked_half_heads_are_refused_past_the_handshake_budget(self):
        """R8: 60 connections each parking 7 KiB of an unfinished CONNECT head, with
        --max-handshake-memory 256 KiB: the ones past the budget are refused 503
        handshake_memory, the first ones stay parked, and the gauge stays under the budget."""
        proxy = self.start_proxy("--max-handshake-memory", str(256 * 1024), "--head-timeout",
                                 "30s")
        parked, refused = [], []
        self.addCleanup(lambda: [s.close() for s in parked])
        pad = "CONNECT a.azurecr.io:443 HTTP/1.1\r\nX-Pad: " + "p" * 7000
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=10)
            parked.append(sock)
            sock.sendall(pad.encode())
            time.sleep(0.01)
        for sock in parked:
            sock.settimeout(0.2)
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            if data:
                refused.append(data)
        self.assertTrue(refused, "no connection was refused")
        for data in refused:
            self.assertTrue(data.startswith(b"HTTP/1.1 503 "), data[:100])
            self.assertIn(b"X-Acr-Egress-Reason: handshake_memory\r\n", data)
        self.assertGreaterEqual(60 - len(refused), 256 * 1024 // 7100 - 2)
        held = metric(self.scrape(), "acr_egress_handshake_buffered_bytes")
        self.assertLessEqual(held, 256 * 1024)
        proxy.wait_for_log_count(len(refused), lambda e: e.get("reason") == "handshake_memory")


if __name__ == "__main__":
    unittest.main()
