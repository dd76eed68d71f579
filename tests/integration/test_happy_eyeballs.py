"""Happy Eyeballs (RFC 8305) for names the proxy resolves: connect listener, real sockets.

Everything runs in a private network namespace (netns_fixtures.NetNs) holding only `lo` with
documentation addresses; the test's main thread enters it, so the proxy, dnsmasq and the servers
live there. Upstreams listen on port 443 of:
  [2001:db8::10], 192.0.2.10    working
  [2001:db8::66], 192.0.2.66    black-holed: a server listens, but an nft (or ip6tables/iptables)
                                rule drops every SYN sent to them, so a connect only times out
  [2001:db8::77]                nothing listens: the kernel answers RST (refused)
  203.0.113.10                  listening, but outside the allowed ranges (never to be dialled)
dnsmasq serves A and AAAA records for names under he.example; a scripted UDP DNS server
(harness.UdpDnsServer) answers the AAAA query later than the A query.
"""

import http.client
import os
import socket
import struct
import threading
import time
import unittest

import harness
from netns_fixtures import NetNs

V6_UP, V4_UP = "2001:db8::10", "192.0.2.10"
V6_HOLE, V4_HOLE = "2001:db8::66", "192.0.2.66"
V6_REFUSED = "2001:db8::77"
V4_DENIED = "203.0.113.10"
PORT = 443

NAMES = {
    "v6-holed.he.example": [V6_HOLE, V4_UP],
    "v4-holed.he.example": [V6_UP, V4_HOLE],
    "both-holed.he.example": [V6_HOLE, V4_HOLE],
    "v6-refused.he.example": [V6_REFUSED, V4_UP],
    "denied-among.he.example": [V4_DENIED, V4_UP],
}


def endpoint(address):
    return f"[{address}]:{PORT}" if ":" in address else f"{address}:{PORT}"


class LateAaaaDns(harness.UdpDnsServer):
    """UDP DNS on 127.0.0.1: for a name in `script` ({name: (A list, AAAA list, AAAA delay s)})
    the A query is answered at once and the AAAA query after its delay (TTL 1); other names
    REFUSED."""

    def __init__(self, script):
        self.script = script
        self.timers = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        super().__init__(sock)

    def respond(self, query, peer):
        name, end = harness.dns_question(query)
        if end is None:
            return None
        qtype = struct.unpack("!H", query[end - 4:end - 2])[0]
        entry = self.script.get((name or "").lower())
        if entry is None:
            return harness.dns_reply(query, end, 5)
        v4, v6, delay = entry
        records = []
        if qtype == 1:
            for address in v4:
                records.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) +
                               socket.inet_aton(address))
        elif qtype == 28:
            for address in v6:
                records.append(struct.pack("!HHHIH", 0xC00C, 28, 1, 1, 16) +
                               socket.inet_pton(socket.AF_INET6, address))
        reply = harness.dns_reply(query, end, 0, records, authoritative=True)
        if qtype == 28 and delay > 0:
            timer = threading.Timer(delay, self._send, (reply, peer))
            timer.daemon = True
            self.timers.append(timer)
            timer.start()
            return None
        return reply

    def _send(self, reply, peer):
        try:
            self.sock.sendto(reply, peer)
        except OSError:
            pass

    def stop(self):
        for timer in self.timers:
            timer.cancel()
        super().stop()


class HappyEyeballsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for a network namespace and packet filters")
        cls.ns = NetNs([V6_UP, V4_UP, V6_HOLE, V4_HOLE, V6_REFUSED, V4_DENIED])
        cls.addClassCleanup(cls.ns.destroy)
        cls.ns.create()
        cls.black_hole([V6_HOLE, V4_HOLE])
        cls.ns.enter()
        cls.addClassCleanup(cls.ns.leave)
        cls.servers = {}
        for address in (V6_UP, V4_UP, V6_HOLE, V4_HOLE, V4_DENIED):
            server = harness.RawServer(address, PORT)
            cls.addClassCleanup(server.stop)
            cls.servers[address] = server
        cls.dns = harness.Dnsmasq(NAMES)
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

    @classmethod
    def black_hole(cls, addresses):
        """Drops every SYN to `addresses` port 443 arriving in the namespace."""
        v4 = ", ".join(a for a in addresses if ":" not in a)
        v6 = ", ".join(a for a in addresses if ":" in a)
        ruleset = f"""
table inet acr_he_test {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ip daddr {{ {v4} }} tcp dport {PORT} tcp flags & (syn | ack) == syn drop
    ip6 daddr {{ {v6} }} tcp dport {PORT} tcp flags & (syn | ack) == syn drop
  }}
}}
"""
        if cls.ns.run(["nft", "-f", "-"], check=False, input_text=ruleset).returncode == 0:
            return
        for address in addresses:
            tool = "ip6tables" if ":" in address else "iptables"
            cls.ns.run([tool, "-A", "INPUT", "-d", address, "-p", "tcp", "--dport", str(PORT),
                        "--syn", "-j", "DROP"])

    def start_proxy(self, *extra, dns=None):
        self.port = harness.free_port("127.0.0.1")
        self.admin_port = harness.free_port("127.0.0.1")
        args = ["--connect", f"127.0.0.1:{self.port}", "--allow-host", "*.he.example",
                "--allow-cidr", "192.0.2.0/24", "--allow-cidr", "2001:db8::/32",
                "--dns-server", (dns or self.dns).address, "--workers", "1",
                "--admin", f"127.0.0.1:{self.admin_port}"] + list(extra)
        proxy = harness.Proxy(args)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def timed_connect(self, name):
        """CONNECT name:443; returns (status, seconds to the response head)."""
        started = time.monotonic()
        status, _, _, sock = harness.connect_via_proxy(("127.0.0.1", self.port),
                                                       f"{name}:{PORT}", timeout=20)
        elapsed = time.monotonic() - started
        sock.close()
        return status, elapsed

    @staticmethod
    def explain(proxy):
        time.sleep(0.5)
        return proxy.stderr_text() + "\n".join(str(e) for e in proxy.access_log())

    def log_for(self, proxy, name):
        return proxy.wait_for_log(lambda e: e.get("target") == name)

    def metrics(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    # IPv6 black-holed, IPv4 working: the tunnel is up within the delay plus a little (not after
    # half the connect budget), carried by IPv4, and the log names the abandoned IPv6 attempt;
    # /metrics counts both outcomes by family.
    def test_ipv6_black_holed_falls_back_after_the_delay(self):
        proxy = self.start_proxy()
        status, elapsed = self.timed_connect("v6-holed.he.example")
        self.assertEqual(status, 200, self.explain(proxy))
        self.assertGreaterEqual(elapsed, 0.2)  # the IPv6 attempt had its 250 ms first
        self.assertLess(elapsed, 1.5)  # was 5.0 s (half of --connect-timeout 10s)
        entry = self.log_for(proxy, "v6-holed.he.example")
        self.assertEqual(entry["dialled"], endpoint(V4_UP), entry)
        self.assertEqual(entry["attempts"],
                         [f"{endpoint(V6_HOLE)} cancelled", f"{endpoint(V4_UP)} connected"], entry)
        text = self.metrics()
        self.assertIn('acr_egress_upstream_connect_total{family="ipv6",outcome="cancelled"} 1\n',
                      text)
        self.assertIn('acr_egress_upstream_connect_total{family="ipv4",outcome="connected"} 1\n',
                      text)

    # IPv4 black-holed, IPv6 working: IPv6 goes first and carries the tunnel at once; the
    # black-holed IPv4 address is never needed.
    def test_ipv4_black_holed_ipv6_carries(self):
        proxy = self.start_proxy()
        status, elapsed = self.timed_connect("v4-holed.he.example")
        self.assertEqual(status, 200, self.explain(proxy))
        self.assertLess(elapsed, 1.5)
        entry = self.log_for(proxy, "v4-holed.he.example")
        self.assertEqual(entry["dialled"], endpoint(V6_UP), entry)
        self.assertEqual(entry["attempts"], [f"{endpoint(V6_UP)} connected"], entry)

    # Both families black-holed: every address is tried, and the client gets 504 once the whole
    # connect budget (shared by all attempts) is spent, not before and not much after.
    def test_both_black_holed_is_504_after_the_budget(self):
        proxy = self.start_proxy("--connect-timeout", "2s")
        status, elapsed = self.timed_connect("both-holed.he.example")
        self.assertEqual(status, 504, self.explain(proxy))
        self.assertGreaterEqual(elapsed, 1.9)
        self.assertLess(elapsed, 4.0)
        entry = self.log_for(proxy, "both-holed.he.example")
        self.assertEqual(entry["reason"], "upstream_timeout", entry)
        self.assertEqual(entry["attempts"],
                         [f"{endpoint(V6_HOLE)} timeout", f"{endpoint(V4_HOLE)} timeout"], entry)

    # IPv6 refused (RST): IPv4 is dialled at once, without waiting for the delay (2 s here).
    def test_ipv6_refused_falls_back_at_once(self):
        proxy = self.start_proxy("--happy-eyeballs-delay", "2s")
        status, elapsed = self.timed_connect("v6-refused.he.example")
        self.assertEqual(status, 200, self.explain(proxy))
        self.assertLess(elapsed, 1.0)
        entry = self.log_for(proxy, "v6-refused.he.example")
        self.assertEqual(entry["dialled"], endpoint(V4_UP), entry)
        self.assertEqual(entry["attempts"],
                         [f"{endpoint(V6_REFUSED)} refused", f"{endpoint(V4_UP)} connected"],
                         entry)

    # --happy-eyeballs-delay 0 keeps one address at a time: the black-holed IPv6 address gets
    # its equal share of the budget (half of 2 s) before IPv4 is tried.
    def test_zero_delay_dials_one_at_a_time(self):
        proxy = self.start_proxy("--happy-eyeballs-delay", "0ms", "--connect-timeout", "2s")
        status, elapsed = self.timed_connect("v6-holed.he.example")
        self.assertEqual(status, 200, self.explain(proxy))
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 2.5)
        entry = self.log_for(proxy, "v6-holed.he.example")
        self.assertEqual(entry["attempts"],
                         [f"{endpoint(V6_HOLE)} timeout", f"{endpoint(V4_UP)} connected"], entry)

    # A denied address among the answers is never dialled, the allowed one carries the tunnel.
    def test_denied_address_among_answers_is_never_dialled(self):
        proxy = self.start_proxy()
        denied = self.servers[V4_DENIED]
        before = len(denied.connections)
        status, _ = self.timed_connect("denied-among.he.example")
        self.assertEqual(status, 200, self.explain(proxy))
        entry = self.log_for(proxy, "denied-among.he.example")
        self.assertEqual(entry["attempts"], [f"{endpoint(V4_UP)} connected"], entry)
        self.assertEqual(len(denied.connections), before)

    # The sni listener dials the same way: with IPv6 black-holed, the ClientHello reaches the
    # IPv4 upstream within the delay plus a little, and the log names both attempts.
    def test_sni_listener_falls_back_after_the_delay(self):
        sni_port = PORT  # the sni listener dials the port it listens on
        proxy = harness.Proxy(["--sni", f"127.0.0.1:{sni_port}", "--allow-host", "*.he.example",
                               "--allow-cidr", "192.0.2.0/24", "--allow-cidr", "2001:db8::/32",
                               "--dns-server", self.dns.address, "--workers", "1"])
        proxy.start()
        self.addCleanup(proxy.stop)
        server = self.servers[V4_UP]
        index = len(server.connections)
        hello = harness.client_hello("v6-holed.he.example")
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", sni_port), timeout=10) as sock:
            sock.sendall(hello)
            server.wait_for_bytes(len(hello), index=index)
            elapsed = time.monotonic() - started
        self.assertEqual(server.received(index), hello)
        self.assertLess(elapsed, 1.5)
        entry = self.log_for(proxy, "v6-holed.he.example")
        self.assertEqual(entry["listener"], "sni", entry)
        self.assertEqual(entry["dialled"], endpoint(V4_UP), entry)
        self.assertEqual(entry["attempts"],
                         [f"{endpoint(V6_HOLE)} cancelled", f"{endpoint(V4_UP)} connected"], entry)

    # The access log's text format lists the attempts too, as one space-free token.
    def test_text_log_lists_attempts(self):
        proxy = self.start_proxy("--log-format", "text")
        status, _ = self.timed_connect("v6-refused.he.example")
        self.assertEqual(status, 200, self.explain(proxy))
        line = harness.wait_until(
            lambda: next((l for l in proxy.stdout_lines() if "v6-refused.he.example" in l), None),
            message="the text access-log line")
        self.assertIn(f" attempts={endpoint(V6_REFUSED)}/refused,{endpoint(V4_UP)}/connected ",
                      line)

    # The AAAA answer comes 1.5 s after the A answer: the proxy dials IPv4 after the 50 ms
    # resolution delay instead of waiting for both answers, and the late answer does not disturb
    # the tunnel that is relaying by then.
    def test_late_aaaa_answer_does_not_hold_the_dial(self):
        with LateAaaaDns({"late.he.example": ([V4_UP], [V6_UP], 1.5)}) as dns:
            proxy = self.start_proxy("--allow-non-tls", dns=dns)
            server = self.servers[V4_UP]
            index = len(server.connections)
            started = time.monotonic()
            status, _, _, sock = harness.connect_via_proxy(("127.0.0.1", self.port),
                                                           f"late.he.example:{PORT}", timeout=20)
            elapsed = time.monotonic() - started
            self.assertEqual(status, 200, self.explain(proxy))
            self.assertLess(elapsed, 1.0)
            sock.sendall(b"before ")
            server.wait_for_bytes(7, index=index)
            time.sleep(1.8)  # the AAAA answer arrives meanwhile
            sock.sendall(b"after")
            server.wait_for_bytes(12, index=index)
            self.assertEqual(server.received(index), b"before after")
            sock.close()
            entry = self.log_for(proxy, "late.he.example")
            self.assertEqual(entry["decision"], "allow", entry)
            self.assertEqual(entry["dialled"], endpoint(V4_UP), entry)
            self.assertEqual(entry["attempts"], [f"{endpoint(V4_UP)} connected"], entry)

    # The A answer's only address is black-holed and the AAAA answer comes 0.4 s later: dialling
    # starts with IPv4, and the IPv6 address joins the attempts when it arrives and wins.
    def test_late_aaaa_addresses_join_the_attempts(self):
        with LateAaaaDns({"late-v6.he.example": ([V4_HOLE], [V6_UP], 0.4)}) as dns:
            proxy = self.start_proxy(dns=dns)
            status, elapsed = self.timed_connect("late-v6.he.example")
            self.assertEqual(status, 200, self.explain(proxy))
            self.assertGreaterEqual(elapsed, 0.35)
            self.assertLess(elapsed, 2.0)
            entry = self.log_for(proxy, "late-v6.he.example")
            self.assertEqual(entry["dialled"], endpoint(V6_UP), entry)
            self.assertEqual(entry["attempts"],
                             [f"{endpoint(V4_HOLE)} cancelled", f"{endpoint(V6_UP)} connected"],
                             entry)


if __name__ == "__main__":
    unittest.main()
