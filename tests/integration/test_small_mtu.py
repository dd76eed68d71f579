"""Small-MTU paths and PMTU black holes (THREATS 6.6 D8, 6.1 P4).

Five network namespaces joined by veth pairs, addresses from the documentation ranges only:

    client --lan-- proxy --wan-- r1 --mid-- r2 --up-- upstream
    192.0.2.2      192.0.2.1     198.51.100.2  203.0.113.2   203.0.113.66
                   198.51.100.1  203.0.113.1   203.0.113.65  2001:db8:7::66
                   2001:db8:5::1 2001:db8:6::1 2001:db8:6::2

  * lan has MTU 576 (IPv4 only: IPv6 needs 1280): every ClientHello larger than 536 bytes reaches
    the proxy in several TCP segments;
  * mid has MTU 1280 (the IPv6 minimum) while every endpoint has 1500: the endpoints' MSS (1460)
    is too large for the path, so the transfer depends on path-MTU discovery (ICMP
    frag-needed / ICMPv6 packet-too-big from r1 and r2);
  * "black hole": r1 and r2 drop the ICMP they generate (nftables output chain), the classic
    firewall mistake; "clamping": r1 and r2 rewrite the MSS of forwarded SYNs to the route's MTU
    (`tcp option maxseg size set rt mtu`), what README "Small MTU paths" tells operators to do.

acr-egress runs in `proxy` with a connect listener (--allow-non-tls, for plain bulk streams) and an
sni listener (towards a TLS server in `upstream`), --idle-timeout 4s so that a black-holed
transfer ends within seconds. Before each test the PMTU caches of every namespace are flushed, so
what one test learned cannot help the next.
"""

import hashlib
import os
import socket
import ssl
import threading
import time
import unittest

import harness
import test_relay
from netns_fixtures import NetNs, veth

MIB = 1 << 20
HOST4 = "up4.azurecr.io"  # A 203.0.113.66
HOST6 = "up6.azurecr.io"  # AAAA 2001:db8:7::66
TLS_HOST = "tls.azurecr.io"  # A 203.0.113.66 (the TLS server)
UP4, UP6 = "203.0.113.66", "2001:db8:7::66"
LAN_MTU, MID_MTU = 576, 1280
IDLE = 4


def _ns_run_all(namespaces, argv):
    for ns in namespaces:
        ns.run(argv, check=False)


class SmallMtuTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for network namespaces")
        names = ("client", "proxy", "r1", "r2", "upstream")
        cls.ns = {name: NetNs() for name in names}
        for ns in cls.ns.values():
            cls.addClassCleanup(ns.destroy)
            ns.create()
        n = cls.ns
        veth(n["client"], "eth0", ["192.0.2.2/24"], n["proxy"], "lan", ["192.0.2.1/24"])
        veth(n["proxy"], "wan", ["198.51.100.1/24", "2001:db8:5::1/64"],
             n["r1"], "west", ["198.51.100.2/24", "2001:db8:5::2/64"])
        veth(n["r1"], "east", ["203.0.113.1/26", "2001:db8:6::1/64"],
             n["r2"], "west", ["203.0.113.2/26", "2001:db8:6::2/64"])
        veth(n["r2"], "east", ["203.0.113.65/26", "2001:db8:7::65/64"],
             n["upstream"], "eth0", ["203.0.113.66/26", "2001:db8:7::66/64"])
        for ns, name in ((n["client"], "eth0"), (n["proxy"], "lan")):
            ns.run(["ip", "link", "set", name, "mtu", str(LAN_MTU)])
        for ns, name in ((n["r1"], "east"), (n["r2"], "west")):
            ns.run(["ip", "link", "set", name, "mtu", str(MID_MTU)])
        n["proxy"].run(["ip", "route", "add", "default", "via", "198.51.100.2"])
        n["proxy"].run(["ip", "-6", "route", "add", "default", "via", "2001:db8:5::2"])
        n["r1"].run(["ip", "route", "add", "203.0.113.64/26", "via", "203.0.113.2"])
        n["r1"].run(["ip", "-6", "route", "add", "2001:db8:7::/64", "via", "2001:db8:6::2"])
        n["r2"].run(["ip", "route", "add", "default", "via", "203.0.113.1"])
        n["r2"].run(["ip", "-6", "route", "add", "default", "via", "2001:db8:6::1"])
        n["upstream"].run(["ip", "route", "add", "default", "via", "203.0.113.65"])
        n["upstream"].run(["ip", "-6", "route", "add", "default", "via", "2001:db8:7::65"])
        for router in (n["r1"], n["r2"]):
            router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            router.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        # Linux's own black-hole detection (PLPMTUD) would hide the proxy's behaviour: off, as
        # it is by default, in the namespaces of the two TCP ends of the upstream leg.
        for name in ("proxy", "upstream"):
            n[name].run(["sysctl", "-qw", "net.ipv4.tcp_mtu_probing=0"])

        cls.handler = None
        tmp = harness.TempDir()
        cls.addClassCleanup(tmp.cleanup)
        certs = harness.make_ca_and_cert(tmp.path, [TLS_HOST], [])
        cls.cafile = certs["ca"]
        with n["upstream"].entered():
            cls.port = harness.common_free_port([UP4, UP6])
            cls.servers = [harness.RawServer(ip, cls.port,
                                             handler=lambda c, i, r: cls.handler(c, i, r))
                           for ip in (UP4, UP6)]
            cls.tls_port = harness.free_port(UP4)
            cls.tls = harness.TlsServer(UP4, cls.tls_port, certs["cert"], certs["key"],
                                        handler=cls.serve_tls_download)
        for server in cls.servers + [cls.tls]:
            cls.addClassCleanup(server.stop)
        with n["proxy"].entered():
            cls.dns = harness.Dnsmasq({HOST4: [UP4], HOST6: [UP6], TLS_HOST: [UP4]})
            cls.dns.start()
            cls.addClassCleanup(cls.dns.stop)
            cls.connect_listen = f"192.0.2.1:{harness.free_port('192.0.2.1')}"
            cls.sni_listen = f"192.0.2.1:{harness.free_port('192.0.2.1')}"
            cls.proxy = harness.Proxy(
                ["--connect", cls.connect_listen, "--sni", cls.sni_listen,
                 "--sni-upstream-port", str(cls.tls_port), "--client-cidr", "192.0.2.0/24",
                 "--allow-host", "*.azurecr.io", "--allow-cidr", "203.0.113.64/26",
                 "--allow-cidr", "2001:db8:7::/64", "--port", str(cls.port),
                 "--port", str(cls.tls_port), "--dns-server", cls.dns.address,
                 "--allow-non-tls", "--workers", "1", "--idle-timeout", f"{IDLE}s"],
                env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=16"})
            cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    @staticmethod
    def serve_tls_download(tls, index):
        """TLS server side: reads "get N\\n", sends N bytes of Stream(80+index) and closes."""
        tls.settimeout(30)
        request = b""
        while not request.endswith(b"\n") and len(request) < 64:
            chunk = tls.recv(64)
            if not chunk:
                return
            request += chunk
        total = int(request.split()[1])
        for chunk in test_relay.Stream(80, total).chunks():
            tls.sendall(chunk)

    def setUp(self):
        # What one test taught the kernels about the path must not help the next.
        for ns in self.ns.values():
            ns.run(["ip", "route", "flush", "cache"], check=False)
            ns.run(["ip", "-6", "route", "flush", "cache"], check=False)
        self.routers = (self.ns["r1"], self.ns["r2"])

    def black_hole(self, clamp):
        """r1 and r2 drop the ICMP frag-needed / packet-too-big they generate; with `clamp` they
        also clamp forwarded SYNs' MSS to the route MTU. Removed at cleanup."""
        clamping = ("  chain forward { type filter hook forward priority -150; policy accept;\n"
                    "    tcp flags syn tcp option maxseg size set rt mtu\n  }\n") if clamp else ""
        ruleset = f"""table inet acr_pmtu {{
  chain output {{ type filter hook output priority 0; policy accept;
    icmp type destination-unreachable icmp code frag-needed counter drop
    icmpv6 type packet-too-big counter drop
  }}
{clamping}}}
"""
        for router in self.routers:
            router.run(["nft", "-f", "-"], input_text=ruleset)
        self.addCleanup(_ns_run_all, self.routers, ["nft", "delete", "table", "inet", "acr_pmtu"])

    def icmp_dropped(self):
        total = 0
        for router in self.routers:
            text = router.run(["nft", "list", "table", "inet", "acr_pmtu"], check=False).stdout
            total += sum(int(line.split("packets")[1].split()[0]) for line in text.splitlines()
                         if "counter packets" in line)
        return total

    def bulk(self, host, size, timeout=60):
        """Through the connect listener: `size` bytes up, then `size` bytes down (separate
        streams), over the path to `host`. Returns (up result, down result, seconds)."""
        up, down = test_relay.Stream(90, size), test_relay.Stream(91, size)
        server = {}

        def handler(conn, index, record):
            conn.settimeout(timeout)
            try:
                harness.recv_exact(conn, 5)  # "bulk\n": plain text, not a TLS record
                test_relay.recv_stream(conn, server, "up", limit=size)
                test_relay.send_stream(conn, down, server, "sent")
            except OSError as error:
                server["error"] = error
        type(self).handler = staticmethod(handler)
        with self.ns["client"].entered():
            status, headers, body, sock = harness.connect_via_proxy(
                self.connect_listen, f"{host}:{self.port}", payload=b"bulk\n", timeout=20)
        self.addCleanup(sock.close)
        self.assertEqual(status, 200, (headers, body))
        sock.settimeout(timeout)
        started = time.monotonic()
        client = {}
        test_relay.send_stream(sock, up, client, "sent", shut=False)
        test_relay.recv_stream(sock, client, "down")
        elapsed = time.monotonic() - started
        sock.close()
        return server.get("up"), client.get("down"), elapsed, sock.acr_client

    def assert_bulk_intact(self, host, size):
        up, down, elapsed, _ = self.bulk(host, size)
        expected_up = test_relay.Stream(90, size).digest()
        expected_down = test_relay.Stream(91, size).digest()
        self.assertEqual(up[:2], (size, expected_up))
        self.assertEqual(down, (size, expected_down, "fin"))
        return elapsed

    # ------------------------------------------------------------------ P4 / D8: the hello

    def test_large_hello_over_576_mtu_is_parsed_and_handshake_completes(self):
        """P4/D8: a ClientHello of about 3 KB (a long ALPN list, as big as a post-quantum hello)
        reaches the sni listener in six or more 536-byte segments over the MTU 576 link; the proxy
        parses it, dials by its SNI, the handshake completes with the real server (certificate
        verified), and a 32 MiB download through that TLS session is intact."""
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.set_alpn_protocols([f"p{i:03d}".ljust(250, "x") for i in range(12)])
        hello = harness.client_hello(TLS_HOST, alpn=[f"p{i:03d}".ljust(250, "x")
                                                     for i in range(12)])
        self.assertGreater(len(hello), 6 * (LAN_MTU - 40))
        with self.ns["client"].entered():
            raw = socket.create_connection(harness._split_addr(self.sni_listen), timeout=20)
        self.addCleanup(raw.close)
        self.assertLessEqual(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), LAN_MTU - 40)
        tls = ctx.wrap_socket(raw, server_hostname=TLS_HOST)
        tls.sendall(b"get %d\n" % (32 * MIB))
        h, n = hashlib.sha256(), 0
        while True:
            data = tls.recv(256 * 1024)
            if not data:
                break
            h.update(data)
            n += len(data)
        tls.close()
        self.assertEqual((n, h.hexdigest()),
                         (32 * MIB, test_relay.Stream(80, 32 * MIB).digest()))
        self.assertIn(TLS_HOST, self.tls.snis)
        entry = self.proxy.wait_for_log(lambda e: e.get("listener") == "sni" and
                                        e.get("bytes_down", 0) > 32 * MIB, 20)
        self.assertEqual(entry["decision"], "allow")
        self.assertGreater(entry["bytes_up"], len(hello))

    # ------------------------------------------------------------------ D8: PMTU discovery

    def test_bulk_over_1280_mid_path_with_working_pmtud_ipv4_and_ipv6(self):
        """D8: 64 MiB each way through a path whose middle link has MTU 1280 while both TCP ends
        have 1500 (MSS 1460): path-MTU discovery works (ICMP reaches the ends), every byte
        arrives, over IPv4 and over IPv6."""
        for host in (HOST4, HOST6):
            with self.subTest(host=host):
                elapsed = self.assert_bulk_intact(host, 64 * MIB)
                print(f"\n  [D8] {host}: 64 MiB each way over the 1280 path in {elapsed:.1f} s",
                      flush=True)

    def test_pmtu_black_hole_with_mss_clamping_is_intact(self):
        """D8: the routers drop their ICMP frag-needed / packet-too-big (a PMTU black hole) but
        clamp the MSS of forwarded SYNs to the route MTU (README "Small MTU paths"): 64 MiB each
        way arrive intact over IPv4 and IPv6."""
        self.black_hole(clamp=True)
        for host in (HOST4, HOST6):
            with self.subTest(host=host):
                self.assert_bulk_intact(host, 64 * MIB)

    def test_pmtu_black_hole_without_clamping_ends_at_idle_timeout_and_is_logged(self):
        """D8 failure mode: the same black hole without clamping stalls the first full-size
        segment (Linux's PLPMTUD is off). The proxy does not hang: the tunnel ends at
        --idle-timeout, and its log line says phase relay, closed_by proxy, with the bytes it
        moved, far fewer than sent: the diagnosis README "Small MTU paths" describes. This also
        proves the black hole is real (the clamping test cannot pass by chance)."""
        self.black_hole(clamp=False)
        started = time.monotonic()
        up, down, elapsed, client = self.bulk(HOST4, 8 * MIB, timeout=3 * IDLE + 10)
        self.assertLess(time.monotonic() - started, 3 * IDLE + 15)
        self.assertGreater(self.icmp_dropped(), 0, "no ICMP was black-holed")
        self.assertNotEqual(up and up[0], 8 * MIB, "the upload got through the black hole")
        entry = self.proxy.wait_for_log(lambda e: e.get("client") == client, 20)
        self.assertEqual((entry["phase"], entry["closed_by"]), ("relay", "proxy"), entry)
        self.assertLess(entry["bytes_up"], 8 * MIB)
        print(f"\n  [D8] black hole: ended after {elapsed:.1f} s, log: phase relay, closed_by "
              f"proxy, bytes_up {entry['bytes_up']}", flush=True)


if __name__ == "__main__":
    unittest.main()
