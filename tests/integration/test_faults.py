"""Faults around the proxy and what it does about them (issue 10, section 3): each test is one row
of the README table "Faults and what the proxy does", and measures the row's numbers (status,
access-log reason, time).

Everything runs in a private network namespace (netns_fixtures.NetNs) holding only `lo` with
loopback and documentation addresses; nftables rules inside it black-hole some of them. Names
resolve through `FaultDns`, a UDP (and TCP) DNS server on loopback whose behaviour is chosen by
the name asked (slow, SERVFAIL, truncated, malformed, TTL 0, changing). Upstreams are echo
servers on several loopback / documentation addresses sharing one port. The proxy runs with
--allow-non-tls so the tunnels can carry plain bytes.
"""

import contextlib
import os
import signal
import socket
import struct
import threading
import time
import unittest

import harness
from netns_fixtures import NetNs

ECHO_IP = "127.0.0.2"  # echo upstream
ECHO2_IP = "127.0.0.7"  # a second echo upstream (answers that change)
RESET_IP = "127.0.0.4"  # sends 256 KiB, then resets
STALL_IP = "127.0.0.5"  # accepts and never reads nor writes
CLOSED_IP = "127.0.0.6"  # nothing listens: the kernel answers RST
DROP_V4 = "198.51.100.10"  # every packet to it is dropped (nftables, in the namespace)
DUAL_V4 = "198.51.100.11"  # echo upstream, reached by IPv4
DROP_V6 = "2001:db8::10"  # dropped, the IPv6 address of the dual-stack name
RESOLV_A = "127.0.0.53"  # resolv.conf test: the first nameserver (port 53)
RESOLV_B = "127.0.0.54"  # ... and the one it is rewritten to

# name -> A addresses (AAAA: DNS_AAAA) of the names FaultDns answers normally.
DNS_A = {
    "echo.azurecr.io": [ECHO_IP],
    "reset.azurecr.io": [RESET_IP],
    "stall.azurecr.io": [STALL_IP],
    "refused.azurecr.io": [CLOSED_IP],
    "blackhole.azurecr.io": [DROP_V4],
    "dual.azurecr.io": [DUAL_V4],
    "slow.azurecr.io": [ECHO_IP],
    "veryslow.azurecr.io": [ECHO_IP],
    "ttl0.azurecr.io": [ECHO_IP],
    "tc.azurecr.io": [ECHO_IP],
}
DNS_AAAA = {"dual.azurecr.io": [DROP_V6]}
SLOW_DELAY = 1.0  # slow.*: each answer this late (inside the 2 s --dns-timeout)
VERYSLOW_DELAY = 4.0  # veryslow.*: later than the --dns-timeout
DNS_TIMEOUT = 2.0
CONNECT_TIMEOUT = 3.0


def _record(qtype, ttl, address):
    """An answer RR for the question's name (a compression pointer to offset 12)."""
    family = socket.AF_INET6 if qtype == 28 else socket.AF_INET
    data = socket.inet_pton(family, address)
    return struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, len(data)) + data


class FaultDns(harness.UdpDnsServer):
    """A DNS server on (host, port) over UDP, and over TCP on the same port, whose answer depends
    on the name: the names of DNS_A/DNS_AAAA are answered (TTL `ttl`), 'slow.*' and
    'veryslow.*' late, 'servfail.*' with SERVFAIL, 'tc.*' over UDP with only the TC bit (the
    answer comes over TCP), 'malformed.*' with an answer count of 1 and a cut record,
    'changing.*' with `changing` addresses in turn (TTL 0); anything else NXDOMAIN. `.log` lists
    (transport, name, qtype) of every query."""

    def __init__(self, host="127.0.0.1", port=0, ttl=60, a=None, changing=()):
        self.ttl = ttl
        self.a = dict(DNS_A if a is None else a)
        self.changing = list(changing)
        self._turn = 0
        self.log = []
        self._log_lock = threading.Lock()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        self.host, self.port = sock.getsockname()[:2]
        self.address = f"{self.host}:{self.port}"
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((self.host, self.port))
        self.tcp.listen(16)
        self.tcp.settimeout(0.2)
        self._timers = []
        super().__init__(sock)
        self._tcp_thread = threading.Thread(target=self._serve_tcp, daemon=True)
        self._tcp_thread.start()

    def queries(self, name=None, transport=None):
        with self._log_lock:
            return [q for q in self.log
                    if (name is None or q[1] == name) and (transport is None or q[0] == transport)]

    def reply(self, query, transport):
        """(delay in seconds, reply bytes or None) for `query`."""
        name, end = harness.dns_question(query)
        if end is None:
            return 0, None
        name = name.lower()
        qtype = struct.unpack("!H", query[end - 4:end - 2])[0]
        with self._log_lock:
            self.log.append((transport, name, qtype))
        label = name.split(".", 1)[0]
        if label == "servfail":
            return 0, harness.dns_reply(query, end, 2)
        if label == "malformed":
            # Claims one answer; the record stops in the middle of its fixed part.
            return 0, harness.dns_reply(query, end, 0, [b"\xc0\x0c\x00\x01\x00"])
        if label == "tc" and transport == "udp":
            reply = bytearray(harness.dns_reply(query, end, 0))
            reply[2] |= 0x02  # TC: truncated, ask again over TCP
            return 0, bytes(reply)
        if label == "changing":
            records = []
            if qtype == 1 and self.changing:
                address = self.changing[self._turn % len(self.changing)]
                self._turn += 1
                records = [_record(1, 0, address)]
            return 0, harness.dns_reply(query, end, 0, records, authoritative=True)
        table = self.a if qtype == 1 else DNS_AAAA if qtype == 28 else {}
        if name not in self.a and name not in DNS_AAAA:
            return 0, harness.dns_reply(query, end, 3)
        ttl = 0 if label == "ttl0" else self.ttl
        records = [_record(qtype, ttl, a) for a in table.get(name, [])]
        delay = SLOW_DELAY if label == "slow" else VERYSLOW_DELAY if label == "veryslow" else 0
        return delay, harness.dns_reply(query, end, 0, records, authoritative=True)

    def respond(self, query, peer):
        """UdpDnsServer's hook: answers at once, or later from a timer (slow names)."""
        delay, reply = self.reply(query, "udp")
        if reply is None or not delay:
            return reply
        timer = threading.Timer(delay, self._send, (reply, peer))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return None

    def _send(self, reply, peer):
        with contextlib.suppress(OSError):
            self.sock.sendto(reply, peer)

    def _serve_tcp(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    for _ in range(16):  # bounded: a few queries per connection
                        head = harness.recv_exact(conn, 2)
                        if len(head) < 2:
                            break
                        query = harness.recv_exact(conn, struct.unpack("!H", head)[0])
                        _, reply = self.reply(query, "tcp")
                        if reply is None:
                            break
                        conn.sendall(struct.pack("!H", len(reply)) + reply)

    def stop(self):
        for timer in self._timers:
            timer.cancel()
        super().stop()
        self._tcp_thread.join(timeout=5)
        self.tcp.close()


def reset_handler(conn, index, record):
    """Sends 256 KiB, then resets the connection (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        conn.sendall(b"r" * (256 * 1024))
        time.sleep(0.3)
        harness.set_rst_on_close(conn)


def stall_handler(conn, index, record):
    """Accepts and then neither reads nor writes, for at most 30 s."""
    time.sleep(30)


class FaultsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for a private network namespace")
        cls.ns = NetNs([DROP_V4, DUAL_V4, DROP_V6])
        cls.ns.create()
        cls.addClassCleanup(cls.ns.destroy)  # first registered: runs last
        cls.ns.enter()
        cls.ns.run(["nft", "-f", "-"], input_text=f"""
table inet acr_faults {{
  chain output {{
    type filter hook output priority 0; policy accept;
    ip daddr {DROP_V4} drop
    ip6 daddr {DROP_V6} drop
  }}
}}
""")
        cls.port = harness.common_free_port([ECHO_IP, ECHO2_IP, RESET_IP, STALL_IP, DUAL_V4])
        cls.servers = {}
        for ip, handler in ((ECHO_IP, harness.echo_handler), (ECHO2_IP, harness.echo_handler),
                            (DUAL_V4, harness.echo_handler), (RESET_IP, reset_handler),
                            (STALL_IP, stall_handler)):
            server = harness.RawServer(ip, cls.port, handler=handler)
            cls.addClassCleanup(server.stop)
            cls.servers[ip] = server
        cls.dns = FaultDns(changing=[ECHO_IP, ECHO2_IP])
        cls.addClassCleanup(cls.dns.stop)

    # ------------------------------------------------------------------ helpers

    def proxy_args(self, listen, dns=True):
        args = ["--connect", listen, "--allow-host", "*.azurecr.io",
                "--allow-cidr", "127.0.0.0/8", "--allow-cidr", "198.51.100.0/24",
                "--allow-cidr", "2001:db8::/32", "--port", str(self.port), "--allow-non-tls",
                "--workers", "1", "--dns-timeout", f"{int(DNS_TIMEOUT)}s",
                "--connect-timeout", f"{int(CONNECT_TIMEOUT)}s"]
        if dns:
            args += ["--dns-server", self.dns.address]
        return args

    def start_proxy(self, *extra, dns=True, prefix=(), pass_fds=(), listen=None):
        listen = listen or f"127.0.0.1:{harness.free_port()}"
        proxy = harness.Proxy(self.proxy_args(listen, dns) + list(extra), prefix=prefix,
                              pass_fds=pass_fds)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy, listen

    def connect(self, listen, name, timeout=15):
        """CONNECT name:port; returns (status, reason header, seconds, socket). The socket is
        closed at cleanup."""
        started = time.monotonic()
        status, headers, _, sock = harness.connect_via_proxy(listen, f"{name}:{self.port}",
                                                             timeout=timeout)
        elapsed = time.monotonic() - started
        self.addCleanup(sock.close)
        return status, headers.get("x-acr-egress-reason"), elapsed, sock

    def assert_echoes(self, sock, payload=b"ping"):
        sock.sendall(payload)
        self.assertEqual(harness.recv_exact(sock, len(payload)), payload)

    def log_entry(self, proxy, sock):
        """The access-log line of the connection of `sock`, which is closed first (a tunnel's
        line is written when it ends)."""
        client = sock.acr_client
        sock.close()
        return proxy.wait_for_log(lambda e: e.get("client") == client)

    def report(self, row, **numbers):
        """Prints the measured numbers of a README row (visible with -v)."""
        print(f"\n  [fault] {row}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()),
              flush=True)

    # ------------------------------------------------------------------ DNS

    # DNS down: the only server does not exist (its port is closed): 502 dns_failure at once,
    # the proxy keeps serving names that need no lookup, and once a server answers on that
    # address again the next lookup succeeds (failures are not cached).
    def test_dns_down_is_502_dns_failure_fast(self):
        closed_port = harness.free_port()
        closed = f"127.0.0.1:{closed_port}"
        listen = f"127.0.0.1:{harness.free_port()}"
        args = [a if a != self.dns.address else closed for a in self.proxy_args(listen)]
        proxy = harness.Proxy(args)
        proxy.start()
        self.addCleanup(proxy.stop)
        status, reason, elapsed, sock = self.connect(listen, "echo.azurecr.io")
        entry = self.log_entry(proxy, sock)
        self.report("dns down", status=status, reason=reason, seconds=f"{elapsed:.2f}")
        self.assertEqual((status, reason), (502, "dns_failure"))
        self.assertEqual((entry["reason"], entry["phase"]), ("dns_failure", "refuse"))
        self.assertLess(elapsed, DNS_TIMEOUT + 1)
        status, _, _, sock = self.connect(listen, f"{ECHO_IP}")  # IP literal: no lookup
        self.assertEqual(status, 200)
        self.assert_echoes(sock)
        back = FaultDns("127.0.0.1", closed_port)
        self.addCleanup(back.stop)
        restored = time.monotonic()

        def served():
            status, _, _, sock = self.connect(listen, "echo.azurecr.io", timeout=5)
            return sock if status == 200 else None
        self.assert_echoes(harness.wait_until(served, 10, 0.2, "a lookup once DNS is back"))
        self.report("dns back", seconds_to_first_tunnel=f"{time.monotonic() - restored:.2f}")

    # Slow DNS inside the budget: the tunnel opens once the answer comes (~1 s); an answer later
    # than --dns-timeout (2 s) is 504 dns_timeout at the budget, not later.
    def test_slow_dns_waits_within_budget_then_504(self):
        proxy, listen = self.start_proxy()
        status, reason, elapsed, sock = self.connect(listen, "slow.azurecr.io")
        self.assertEqual(status, 200, reason)
        self.assert_echoes(sock)
        self.assertGreaterEqual(elapsed, SLOW_DELAY * 0.9)
        self.assertLess(elapsed, SLOW_DELAY + 1.5)
        entry = self.log_entry(proxy, sock)
        self.report("slow dns", status=status, seconds=f"{elapsed:.2f}",
                    dns_ms=entry.get("dns_ms"))
        status, reason, late, sock = self.connect(listen, "veryslow.azurecr.io")
        entry = self.log_entry(proxy, sock)
        self.report("dns slower than --dns-timeout", status=status, reason=reason,
                    seconds=f"{late:.2f}")
        self.assertEqual((status, reason), (504, "dns_timeout"))
        self.assertEqual(entry["reason"], "dns_timeout")
        self.assertGreaterEqual(late, DNS_TIMEOUT * 0.9)
        self.assertLess(late, DNS_TIMEOUT + 1.5)

    # SERVFAIL: 502 dns_failure at once; failures are not cached, so the next client asks again.
    def test_servfail_is_502_dns_failure_not_cached(self):
        proxy, listen = self.start_proxy()
        for attempt in range(2):
            status, reason, elapsed, sock = self.connect(listen, "servfail.azurecr.io")
            self.assertEqual((status, reason), (502, "dns_failure"))
            self.assertLess(elapsed, DNS_TIMEOUT)
            self.assertEqual(self.log_entry(proxy, sock)["reason"], "dns_failure")
        asked = len(self.dns.queries("servfail.azurecr.io"))
        self.report("servfail", status=status, reason=reason, seconds=f"{elapsed:.2f}",
                    queries=asked)
        self.assertGreaterEqual(asked, 4)  # A and AAAA, twice

    # Truncated UDP answer (TC bit): the resolver asks again over TCP and the tunnel opens.
    def test_truncated_answer_is_retried_over_tcp(self):
        proxy, listen = self.start_proxy()
        status, reason, elapsed, sock = self.connect(listen, "tc.azurecr.io")
        self.report("truncated (TC)", status=status, seconds=f"{elapsed:.2f}",
                    tcp_queries=len(self.dns.queries("tc.azurecr.io", "tcp")))
        self.assertEqual(status, 200, reason)
        self.assert_echoes(sock)
        self.assertTrue(self.dns.queries("tc.azurecr.io", "tcp"), self.dns.log)
        self.assertEqual(self.log_entry(proxy, sock)["dialled"].split(":")[0],
                         ECHO_IP)

    # Malformed answer (a record cut short): 502 dns_failure; nothing is dialled.
    def test_malformed_answer_is_502_dns_failure(self):
        proxy, listen = self.start_proxy()
        status, reason, elapsed, sock = self.connect(listen, "malformed.azurecr.io")
        entry = self.log_entry(proxy, sock)
        self.report("malformed answer", status=status, reason=reason, seconds=f"{elapsed:.2f}")
        self.assertEqual((status, reason), (502, "dns_failure"))
        self.assertLess(elapsed, DNS_TIMEOUT + 1)
        self.assertFalse(entry.get("dialled"))
        self.assertTrue(proxy.running())

    # TTL 0: the answer is cached for --dns-min-ttl (here 2 s), not re-asked per connection, and
    # asked again once that passed.
    def test_ttl_zero_is_clamped_to_min_ttl(self):
        proxy, listen = self.start_proxy("--dns-min-ttl", "2s")
        before = len(self.dns.queries("ttl0.azurecr.io", "udp"))
        for _ in range(5):
            status, reason, _, sock = self.connect(listen, "ttl0.azurecr.io")
            self.assertEqual(status, 200, reason)
            sock.close()
        burst = len(self.dns.queries("ttl0.azurecr.io", "udp")) - before
        time.sleep(2.5)
        status, reason, _, sock = self.connect(listen, "ttl0.azurecr.io")
        self.assertEqual(status, 200, reason)
        later = len(self.dns.queries("ttl0.azurecr.io", "udp")) - before
        self.report("ttl 0", queries_for_5_connections=burst, after_min_ttl=later)
        self.assertEqual(burst, 2)  # one A and one AAAA lookup for five connections
        self.assertEqual(later, 4)

    # Answers that change between queries (TTL 0, --dns-min-ttl 1s): each connection dials
    # exactly the address its own lookup returned, and every connection succeeds.
    def test_changing_answers_each_connection_dials_its_answer(self):
        proxy, listen = self.start_proxy("--dns-min-ttl", "1s")
        dialled = []
        for _ in range(3):
            status, reason, _, sock = self.connect(listen, "changing.azurecr.io")
            self.assertEqual(status, 200, reason)
            self.assert_echoes(sock)
            sock.close()
            dialled.append(self.log_entry(proxy, sock)["dialled"].rsplit(":", 1)[0])
            time.sleep(1.3)
        self.report("changing answers", dialled=dialled)
        self.assertEqual(set(dialled), {ECHO_IP, ECHO2_IP})
        self.assertNotEqual(dialled[0], dialled[1])

    # F5: the answer changes while a tunnel to the old one is open: the tunnel is not touched
    # (no re-resolution, no reset), and the next connection dials the new answer.
    def test_answer_change_leaves_open_tunnel_alone_and_next_connection_dials_new(self):
        proxy, listen = self.start_proxy("--dns-min-ttl", "1s")
        status, reason, _, first = self.connect(listen, "changing.azurecr.io")
        self.assertEqual(status, 200, reason)
        self.assert_echoes(first, b"before")
        time.sleep(1.3)  # past the clamped TTL: the next lookup gets the other answer
        status, reason, _, second = self.connect(listen, "changing.azurecr.io")
        self.assertEqual(status, 200, reason)
        self.assert_echoes(second, b"second")
        time.sleep(1.3)
        self.assert_echoes(first, b"after two answer changes")
        dialled = [self.log_entry(proxy, sock)["dialled"].rsplit(":", 1)[0]
                   for sock in (second, first)]
        self.report("answer changes with a tunnel open", dialled=dialled)
        self.assertEqual(set(dialled), {ECHO_IP, ECHO2_IP})

    # /etc/resolv.conf rewritten at run time (the proxy has no --dns-server): within a few
    # seconds new lookups go to the new nameserver, even though the old one is gone.
    def test_resolv_conf_change_is_picked_up(self):
        old = FaultDns(RESOLV_A, 53, ttl=1)
        self.addCleanup(old.stop)
        new = FaultDns(RESOLV_B, 53, ttl=1, a={"echo.azurecr.io": [ECHO2_IP]})
        self.addCleanup(new.stop)
        directory = os.path.join("/etc/netns", self.ns.name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "resolv.conf")
        with open(path, "w") as f:
            f.write(f"nameserver {RESOLV_A}\noptions timeout:1 attempts:1\n")
        # `ip netns exec` bind-mounts this file over /etc/resolv.conf for the proxy alone.
        proxy, listen = self.start_proxy("--dns-min-ttl", "1s", "--dns-max-ttl", "1s", dns=False,
                                         prefix=["ip", "netns", "exec", self.ns.name])
        status, reason, _, sock = self.connect(listen, "echo.azurecr.io")
        self.assertEqual(status, 200, reason)
        self.assertEqual(self.log_entry(proxy, sock)["dialled"].rsplit(":", 1)[0],
                         ECHO_IP)
        old.stop()
        with open(path, "r+") as f:  # in place: the bind mount keeps showing the same inode
            f.truncate(0)
            f.write(f"nameserver {RESOLV_B}\noptions timeout:1 attempts:1\n")
        changed = time.monotonic()
        time.sleep(1.1)  # the cached answer expires (TTL 1 s)

        def served_by_new():
            status, _, _, sock = self.connect(listen, "echo.azurecr.io", timeout=10)
            if status != 200:
                return None
            entry = self.log_entry(proxy, sock)
            return entry if entry["dialled"].startswith(ECHO2_IP) else None
        harness.wait_until(served_by_new, 15, 0.5, "a lookup through the new nameserver")
        elapsed = time.monotonic() - changed
        self.report("resolv.conf changed", seconds_to_new_server=f"{elapsed:.2f}")
        self.assertLess(elapsed, 8)

    # ------------------------------------------------------------------ upstream

    # Upstream refuses (RST to the SYN): 502 upstream_refused at once.
    def test_upstream_refusing_is_502_upstream_refused(self):
        proxy, listen = self.start_proxy()
        status, reason, elapsed, sock = self.connect(listen, "refused.azurecr.io")
        entry = self.log_entry(proxy, sock)
        self.report("upstream refuses", status=status, reason=reason, seconds=f"{elapsed:.2f}")
        self.assertEqual((status, reason), (502, "upstream_refused"))
        self.assertEqual((entry["reason"], entry["phase"]), ("upstream_refused", "refuse"))
        self.assertLess(elapsed, 1.5)

    # Upstream black-holed (every packet dropped): 504 upstream_timeout at --connect-timeout.
    def test_upstream_black_holed_is_504_at_connect_timeout(self):
        proxy, listen = self.start_proxy()
        status, reason, elapsed, sock = self.connect(listen, "blackhole.azurecr.io")
        entry = self.log_entry(proxy, sock)
        self.report("upstream black-holed", status=status, reason=reason,
                    seconds=f"{elapsed:.2f}", connect_ms=entry.get("connect_ms"))
        self.assertEqual((status, reason), (504, "upstream_timeout"))
        self.assertGreaterEqual(elapsed, CONNECT_TIMEOUT * 0.9)
        self.assertLess(elapsed, CONNECT_TIMEOUT + 2)

    # Upstream resets mid-transfer: the client gets the bytes sent before, then a reset; the log
    # says the upstream ended it during the relay.
    def test_upstream_reset_mid_transfer_reaches_client_as_reset(self):
        proxy, listen = self.start_proxy()
        status, reason, _, sock = self.connect(listen, "reset.azurecr.io")
        self.assertEqual(status, 200, reason)
        sock.sendall(b"go")
        data, how = harness.recv_until_closed(sock, 10)
        data = sock.acr_early + data
        entry = self.log_entry(proxy, sock)
        self.report("upstream reset mid-transfer", client_saw=how, bytes=len(data),
                    closed_by=entry.get("closed_by"), reason=entry.get("reason"))
        self.assertEqual(how, "rst")
        self.assertGreater(len(data), 0)
        self.assertEqual((entry["decision"], entry["closed_by"], entry["phase"]),
                         ("allow", "upstream", "relay"))

    # Upstream stalls (accepts, never reads or writes): the client's writes stop once the
    # buffers fill, the proxy's memory stays bounded, and --idle-timeout ends the tunnel.
    def test_upstream_stalling_is_closed_by_idle_timeout(self):
        proxy, listen = self.start_proxy("--idle-timeout", "3s")
        status, reason, _, sock = self.connect(listen, "stall.azurecr.io")
        self.assertEqual(status, 200, reason)
        sock.setblocking(False)
        sent = 0
        started = time.monotonic()
        deadline = started + 5
        how = None
        while time.monotonic() < deadline and sent < (64 << 20):
            try:
                sent += sock.send(b"x" * 65536)
                started = time.monotonic()  # the idle time starts after the last byte moved
            except BlockingIOError:
                time.sleep(0.05)
            except (ConnectionResetError, BrokenPipeError):
                # The idle timeout fired while this loop still knocked (a slow machine filled
                # the buffers early): the proxy's reset is the end being tested.
                how = "rst"
                break
        if how is None:
            sock.setblocking(True)
            _, how = harness.recv_until_closed(sock, 15)
        closed_after = time.monotonic() - started  # since the last byte the client sent
        entry = self.log_entry(proxy, sock)
        self.report("upstream stalls", accepted_bytes=sent, closed_after=f"{closed_after:.2f}",
                    client_saw=how, reason=entry.get("reason"), closed_by=entry.get("closed_by"))
        self.assertLess(sent, 32 << 20)  # backpressure, not an unbounded buffer
        self.assertIn(how, ("fin", "rst"))
        self.assertLess(closed_after, 2 * 3 + 1.5)
        self.assertEqual(entry["closed_by"], "proxy")

    # IPv6 black-holed while IPv4 works: the name has a dropped AAAA and a working A; the tunnel
    # must open well inside the connect budget (~1 s) by falling back to IPv4.
    def test_ipv6_black_holed_falls_back_to_ipv4_within_a_second(self):
        proxy, listen = self.start_proxy()
        status, reason, elapsed, sock = self.connect(listen, "dual.azurecr.io")
        self.report("ipv6 black-holed", status=status, reason=reason, seconds=f"{elapsed:.2f}")
        self.assertEqual(status, 200, reason)
        self.assert_echoes(sock)
        self.assertLess(elapsed, 1.2)
        entry = self.log_entry(proxy, sock)
        self.assertTrue(entry["dialled"].startswith(DUAL_V4), entry)

    # ------------------------------------------------------------------ process

    # Low descriptor limit (prlimit --nofile 160): the proxy sizes itself to it at start (48
    # connections), refuses the next one with 503 overloaded at once, and serves again as soon
    # as one closes. (Lowering the limit under a running proxy: test_limits R5.)
    def test_low_descriptor_limit_refuses_503_and_recovers(self):
        proxy, listen = self.start_proxy(prefix=["prlimit", "--nofile=160:160", "--"])
        self.assertIn("using 48", proxy.stderr_text())
        tunnels = []
        for _ in range(48):
            status, reason, _, sock = self.connect(listen, "echo.azurecr.io")
            self.assertEqual(status, 200, reason)
            tunnels.append(sock)
        self.assert_echoes(tunnels[-1])
        status, reason, elapsed, sock = self.connect(listen, "echo.azurecr.io")
        self.report("low descriptor limit", tunnels=len(tunnels), next_status=status,
                    reason=reason, seconds=f"{elapsed:.2f}")
        self.assertEqual((status, reason), (503, "overloaded"))
        self.assertLess(elapsed, 1.0)
        tunnels.pop().close()

        def served():
            status, _, _, sock = self.connect(listen, "echo.azurecr.io", timeout=5)
            return sock if status == 200 else None
        self.assert_echoes(harness.wait_until(served, 10, 0.2, "a tunnel after one closed"))
        for sock in tunnels:
            sock.close()

    # SIGKILL, then a restart on the same socket-activated listener: the listening socket
    # belongs to the service manager (here the test, which hands it on through
    # systemd-socket-activate as systemd would), so clients that connect while no proxy runs wait
    # in its backlog and are all served by the restarted proxy.
    def test_sigkill_and_restart_keeps_queued_connections(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listen = "127.0.0.1:%d" % listener.getsockname()[1]
        fd = listener.fileno()
        # What systemd does for a .socket unit: fd 3, LISTEN_FDS=1, LISTEN_PID = the service's.
        prefix = ["bash", "-c", f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec '
                  'systemd-socket-activate "$0" "$@"']

        def start():
            # systemd-socket-activate starts its program when the first client arrives.
            first = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
            self.addCleanup(first.close)
            proxy = harness.Proxy(self.proxy_args(listen), prefix=prefix, pass_fds=(fd,))
            proxy.start()
            self.addCleanup(proxy.stop)
            self.assertIn("socket activation", proxy.stderr_text())
            return proxy

        first = start()
        status, reason, _, live = self.connect(listen, "echo.azurecr.io")
        self.assertEqual(status, 200, reason)
        self.assert_echoes(live)
        first.send_signal(signal.SIGKILL)
        self.assertIsNotNone(first.wait(10))
        first.stop()  # collects it (and its sanitizer check)
        _, how = harness.recv_until_closed(live, 5)
        # While no proxy runs: 5 clients connect and send their CONNECT heads.
        queued = []
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", listener.getsockname()[1]), timeout=5)
            self.addCleanup(sock.close)
            sock.sendall(f"CONNECT echo.azurecr.io:{self.port} HTTP/1.1\r\n"
                         f"Host: echo.azurecr.io:{self.port}\r\n\r\n".encode())
            queued.append(sock)
        time.sleep(1.0)
        restarted_at = time.monotonic()
        start()
        served = 0
        for sock in queued:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            if head.startswith(b"HTTP/1.1 200"):
                self.assert_echoes(sock)
                served += 1
        self.report("SIGKILL + restart (socket activation)", open_tunnel=how,
                    queued_served=f"{served}/5",
                    seconds_after_restart=f"{time.monotonic() - restarted_at:.2f}")
        self.assertEqual(served, 5)
        self.assertIn(how, ("fin", "rst"))

    # The access log cannot be written (stdout is /dev/full: ENOSPC on every write): the proxy
    # keeps serving, and says so in the service log.
    def test_log_disk_full_keeps_serving_and_says_so(self):
        proxy, listen = self.start_proxy(prefix=["sh", "-c", 'exec "$0" "$@" >/dev/full'])
        for _ in range(20):
            status, reason, _, sock = self.connect(listen, "echo.azurecr.io")
            self.assertEqual(status, 200, reason)
            self.assert_echoes(sock)
            sock.close()
        status, reason, _, sock = self.connect(listen, "denied.example.com")
        self.assertEqual((status, reason), (403, "host_not_allowed"))
        said = harness.wait_until(
            lambda: [l for l in proxy.stderr_text().splitlines() if "access log" in l], 10, 0.1,
            "a service-log line about the access log")
        self.report("log disk full", served=20, service_log=said[0][:160])
        self.assertTrue(proxy.running())


if __name__ == "__main__":
    unittest.main()
