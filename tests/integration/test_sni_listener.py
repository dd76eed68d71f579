"""The sni listener against real peers (THREATS 6.1 P1/P3/P5, 6.3 B3/B8/B19, 6.5 F1, 6.6 D2).

The sni listener's destination port is its own port, so one port P serves everything: the proxy
listens on 127.0.0.1:P, a TLS upstream (answers with the SNI it saw) on 127.0.0.2:P and a raw
recording upstream on 127.0.0.3:P. dnsmasq maps the test's names to those addresses (and to special
ones); clients reach the proxy by address (curl --resolve), never through the machine's resolver.
"""

import os
import socket
import time
import unittest

import harness

TLS_NAME = "myreg.azurecr.io"    # -> 127.0.0.2 (TLS upstream)
RAW_NAME = "raw.azurecr.io"      # -> 127.0.0.3 (recording upstream)
CAPTURE_NAMES = ("myregistry.azurecr.io", "myregistry.eastus.data.azurecr.io",
                 "myaccount.blob.core.windows.net")  # the captures' SNIs -> 127.0.0.3
EVIL = "evil.example"            # in dnsmasq, denied by the policy
NXDOMAIN = "missing.azurecr.io"
SPECIAL = {"private.azurecr.io": "10.0.0.5", "metadata.azurecr.io": "169.254.169.254",
           "loopback.azurecr.io": "127.0.0.5",
           # Issue 10 defect 8: the metadata address behind a local-use NAT64 (RFC 8215), and
           # the RFC 9637 documentation range.
           "nat64-local.azurecr.io": "64:ff9b:1::a9fe:a9fe",
           "nat64-local-subnet.azurecr.io": "64:ff9b:1:ab::a9fe:a9fe",
           "doc9637.azurecr.io": "3fff::10"}
SELF = "self.azurecr.io"         # -> 127.0.0.1, the proxy's own listener address
PROXY_IP, TLS_IP, RAW_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
PROXY2_IP = "127.0.0.4"  # a second proxy with a narrower policy


class SniListenerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A private namespace holding only lo: should a regression make the proxy dial one of
        # the special addresses below (metadata, RFC 1918), the packet cannot leave the machine.
        cls.isolated = harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"), [TLS_NAME],
                                             [TLS_IP])
        cls.port = harness.common_free_port([PROXY_IP, TLS_IP, RAW_IP, PROXY2_IP])
        cls.tls = harness.TlsServer(TLS_IP, cls.port, cls.certs["cert"], cls.certs["key"],
                                    handler="http")
        cls.addClassCleanup(cls.tls.stop)
        cls.raw = harness.RawServer(RAW_IP, cls.port)
        cls.addClassCleanup(cls.raw.stop)
        records = {TLS_NAME: [TLS_IP], RAW_NAME: [RAW_IP], EVIL: [TLS_IP], SELF: [PROXY_IP]}
        records.update({name: [RAW_IP] for name in CAPTURE_NAMES})
        records.update({name: [ip] for name, ip in SPECIAL.items()})
        cls.dns = harness.Dnsmasq(records)
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        # No host option: the embedded default (*.azurecr.io, *.*.data.azurecr.io,
        # *.blob.core.windows.net) applies.
        cls.proxy = cls.start_proxy()
        cls.addClassCleanup(cls.proxy.stop)

    @classmethod
    def start_proxy(cls, extra=(), address=PROXY_IP):
        proxy = harness.Proxy(["--sni", f"{address}:{cls.port}", "--allow-cidr", f"{TLS_IP}/32",
                               "--allow-cidr", f"{RAW_IP}/32", "--port", str(cls.port),
                               "--dns-server", cls.dns.address, "--workers", "2",
                               "--head-timeout", "10s"] + list(extra))
        return proxy.start()

    # ---------------------------------------------------------------- helpers

    def open(self, address=PROXY_IP):
        sock = socket.create_connection((address, self.port), timeout=10)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, "%s:%d" % sock.getsockname()[:2]

    def log_for(self, client, proxy=None, timeout=10, since=0):
        return (proxy or self.proxy).wait_for_log(lambda e: e.get("client") == client, timeout,
                                                  since)

    def assert_forwarded_exactly(self, data, send=None, proxy=None):
        """Sends `data` (with `send(sock, data)` if given) and asserts the raw upstream receives
        exactly `data` on one new connection; returns the access-log line."""
        before = self.raw.accepted
        mark = (proxy or self.proxy).log_mark()
        sock, client = self.open(proxy.listen_address("sni")[0] if proxy else PROXY_IP)
        (send or (lambda s, d: s.sendall(d)))(sock, data)
        self.raw.wait_for_bytes(len(data), index=before, timeout=15)
        time.sleep(0.2)
        self.assertEqual(self.raw.received(before), data, "the upstream did not get the "
                         "ClientHello byte-exact")
        self.assertEqual(self.raw.accepted, before + 1)
        sock.close()
        entry = self.log_for(client, proxy, since=mark)
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertEqual(entry["dialled"], f"{RAW_IP}:{self.port}", entry)
        self.assertEqual(entry["bytes_up"], len(data), entry)
        return entry

    def assert_reset_without_dial(self, data, reason, proxy=None):
        """Sends `data`, asserts the proxy answers with a TCP reset, dials nothing and logs
        decision deny with `reason`; returns the access-log line."""
        accepted = (self.tls.accepted, self.raw.accepted)
        mark = (proxy or self.proxy).log_mark()
        sock, client = self.open(proxy.listen_address("sni")[0] if proxy else PROXY_IP)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, how = harness.recv_until_closed(sock, 10)
        self.assertEqual(how, "rst", f"expected a reset, got {how} after {received!r}")
        self.assertEqual(received, b"")
        entry = self.log_for(client, proxy, since=mark)
        self.assertEqual(entry["listener"], "sni", entry)
        self.assertEqual(entry["decision"], "deny", entry)
        self.assertEqual(entry["reason"], reason, entry)
        self.assertFalse(entry.get("dialled"), entry)
        time.sleep(0.1)
        self.assertEqual((self.tls.accepted, self.raw.accepted), accepted,
                         "a denied connection reached an upstream")
        return entry

    # ---------------------------------------------------------------- allowed

    def test_python_tls_client_reaches_upstream_named_by_sni(self):
        """An allowed SNI is resolved through dnsmasq and the handshake completes with the
        upstream it names, certificate verified; the log line names target, port and dialled."""
        sock, client = self.open()
        tls = harness.MemoryTlsClient(sock, TLS_NAME, self.certs["ca"])
        sock.sendall(tls.first_flight())
        tls.finish_handshake()
        response = tls.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.endswith(f"sni={TLS_NAME}\n".encode()), response)
        sock.close()
        entry = self.log_for(client)
        self.assertEqual(entry["listener"], "sni")
        self.assertEqual(entry["target"], TLS_NAME)
        self.assertEqual(entry["port"], self.port)
        self.assertEqual(entry["decision"], "allow")
        self.assertEqual(entry["reason"], "host_allowed")
        self.assertEqual(entry["dialled"], f"{TLS_IP}:{self.port}")

    def test_curl_with_resolve_reaches_upstream(self):
        """curl --resolve NAME:P:127.0.0.1 (a DNS-steered client) gets the upstream's answer
        through the sni listener."""
        result = harness.curl("--resolve", f"{TLS_NAME}:{self.port}:{PROXY_IP}", "--cacert",
                              self.certs["ca"], "--max-time", "20",
                              f"https://{TLS_NAME}:{self.port}/")
        self.assertEqual(result.returncode, 0, result.stderr + self.proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={TLS_NAME}\n")

    # ---------------------------------------------------------------- denied

    def test_denied_sni_is_reset_without_dns_or_dial(self):
        """B19: an SNI outside the policy gets a TCP reset, no upstream connection and no DNS
        query, logged host_not_allowed."""
        self.assert_reset_without_dial(harness.client_hello(EVIL), "host_not_allowed")
        time.sleep(0.2)
        self.assertNotIn(EVIL, [n.lower().rstrip(".") for n in self.dns.queries()])

    def test_clienthello_without_sni_is_denied_no_sni(self):
        """B3: the real openssl -noservername ClientHello is reset with reason no_sni."""
        self.assert_reset_without_dial(harness.read_captures()["openssl-nosni"], "no_sni")

    def test_sni_resolving_to_special_address_is_denied(self):
        """B8: an allowed SNI whose only address is private, metadata or loopback (not in the
        allowed set) is reset with address_special and never dialled."""
        for name, ip in SPECIAL.items():
            with self.subTest(name=name, ip=ip):
                if not (self.isolated or ip.startswith("127.")):
                    self.skipTest("needs a private network namespace (root)")
                self.assert_reset_without_dial(harness.client_hello(name), "address_special")

    def test_sni_resolving_to_the_proxy_itself_is_denied(self):
        """B16: an allowed SNI that resolves to the sni listener's own address (same port) is
        reset with self_connection and never loops (one log line)."""
        self.assert_reset_without_dial(harness.client_hello(SELF), "self_connection")
        time.sleep(0.2)
        self.assertEqual(len([e for e in self.proxy.access_log() if e.get("target") == SELF]),
                         1)

    def test_sni_nxdomain_is_reset(self):
        """F1: an allowed SNI the resolver does not know is reset with dns_nxdomain."""
        self.assert_reset_without_dial(harness.client_hello(NXDOMAIN), "dns_nxdomain")

    def test_non_tls_is_reset_not_tls(self):
        """P1: an HTTP request to the sni port is reset as not_tls, without DNS or dial."""
        entry = self.assert_reset_without_dial(
            f"GET / HTTP/1.1\r\nHost: {TLS_NAME}\r\n\r\n".encode(), "not_tls")
        self.assertFalse(entry.get("dns_ms"), entry)

    # ---------------------------------------------------------------- framing

    def test_hello_dribbled_one_byte_per_segment_completes_handshake(self):
        """P3: a real ClientHello sent one byte per segment (TCP_NODELAY, 3 ms apart) gives
        the same decision, and the handshake and request complete end to end."""
        sock, client = self.open()
        tls = harness.MemoryTlsClient(sock, TLS_NAME, self.certs["ca"])
        started = time.monotonic()
        harness.send_dribbled(sock, tls.first_flight(), chunk=1, delay=0.003)
        tls.finish_handshake()
        response = tls.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.endswith(f"sni={TLS_NAME}\n".encode()), response)
        self.assertLess(time.monotonic() - started, 10)
        sock.close()
        self.assertEqual(self.log_for(client)["decision"], "allow")

    def test_hello_dribbled_is_forwarded_byte_exact(self):
        """P3/D2: a dribbled ClientHello reaches the upstream byte-exact, once."""
        self.assert_forwarded_exactly(
            harness.client_hello(RAW_NAME),
            send=lambda s, d: harness.send_dribbled(s, d, chunk=1, delay=0.002))

    def test_hello_split_in_two_tcp_writes_one_second_apart(self):
        """P4: half a ClientHello, a 1 s pause, then the rest is reassembled and allowed."""
        def send(sock, data):
            sock.sendall(data[:len(data) // 2])
            time.sleep(1)
            sock.sendall(data[len(data) // 2:])
        self.assert_forwarded_exactly(harness.read_captures()["chromium156-default-acr"], send)

    def test_hello_reframed_into_records_is_forwarded_unchanged(self):
        """P5/D2: the same handshake re-framed into 2 records, into 7-byte records (splits inside
        the handshake header) and into 1-byte records is allowed and reaches the upstream
        exactly as sent."""
        hello = harness.client_hello(RAW_NAME)
        half = (len(hello) - 5) // 2
        for sizes in ([half], [2, 7], [1]):
            with self.subTest(record_sizes=sizes):
                data = harness.reframe_hello(hello, sizes)
                self.assertGreater(len(data), len(hello))
                self.assert_forwarded_exactly(data)

    def test_reframed_hello_completes_real_handshake(self):
        """P5: a real handshake whose ClientHello is split across 3-byte records completes
        through the proxy with the real upstream."""
        sock, client = self.open()
        tls = harness.MemoryTlsClient(sock, TLS_NAME, self.certs["ca"])
        sock.sendall(harness.reframe_hello(tls.first_flight(), [3]))
        tls.finish_handshake()
        response = tls.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.endswith(f"sni={TLS_NAME}\n".encode()), response)

    def test_bytes_after_hello_in_same_write_are_forwarded_too(self):
        """D2/D3: bytes the client sent right behind its ClientHello (in the same write) reach
        the upstream after it, exactly once."""
        self.assert_forwarded_exactly(harness.client_hello(RAW_NAME) + b"\x17\x03\x03" +
                                      bytes(range(256)) * 8)

    # ---------------------------------------------------------------- ESNI and ECH

    def test_esni_hello_is_reset_esni_without_dial(self):
        """B15 (issue 10 defect 9): a ClientHello offering the obsolete ESNI extension (0xffce)
        is reset with reason esni even though its SNI is allowed, and nothing is dialled."""
        hello = harness.add_extension(harness.client_hello(RAW_NAME), 0xffce, harness.ESNI_BODY)
        entry = self.assert_reset_without_dial(hello, "esni")
        self.assertEqual(entry["target"], RAW_NAME, entry)
        self.assertIn("ESNI", entry["message"], entry)

    def test_ech_hello_is_judged_by_outer_sni_and_logged(self):
        """B14 (issue 10 defect 9): Chromium's real ClientHello carries (GREASE) ECH: it is
        judged by its outer SNI, forwarded byte-exact and logged with "ech": true; an ECH hello
        whose outer SNI is not allowed is reset host_not_allowed (also logged "ech": true); a
        hello without ECH has no "ech" field."""
        chromium = harness.read_captures()["chromium156-default-acr"]
        entry = self.assert_forwarded_exactly(chromium)
        self.assertIs(entry.get("ech"), True, entry)
        self.assertEqual(entry["target"], harness.hello_sni(chromium), entry)
        plain = self.assert_forwarded_exactly(harness.client_hello(RAW_NAME))
        self.assertNotIn("ech", plain)
        outer_evil = harness.add_extension(harness.client_hello(EVIL), 0xfe0d, harness.ECH_OUTER)
        denied = self.assert_reset_without_dial(outer_evil, "host_not_allowed")
        self.assertIs(denied.get("ech"), True, denied)

    def test_ech_is_marked_in_text_log(self):
        """B14 (issue 10 defect 9): with --log-format text the line of an ECH hello says
        ech=true; the line of a hello without ECH does not."""
        with self.start_proxy(["--log-format", "text"], PROXY2_IP) as proxy:
            for name, ech in (("chromium156-default-acr", True), ("curl-default-acr", False)):
                with self.subTest(capture=name):
                    data = harness.read_captures()[name]
                    before = self.raw.accepted
                    sock, client = self.open(PROXY2_IP)
                    sock.sendall(data)
                    self.raw.wait_for_bytes(len(data), index=before, timeout=15)
                    sock.close()
                    line = harness.wait_until(
                        lambda: next((l for l in proxy.stdout_lines() if f" {client} " in l),
                                     None), 10, 0.05, f"the text log line of {client}")
                    self.assertIn(" allow ", line)
                    self.assertEqual(" ech=true " in line, ech, line)

    def test_deny_ech_resets_ech_hellos_whatever_their_outer_sni(self):
        """B14, --deny-ech (policy.ech = "deny"): Chromium's real hello (GREASE ECH, allowed
        outer SNI) is reset with reason ech and nothing is dialled; curl's hello (no ECH) to the
        same name is still relayed byte-exact."""
        with self.start_proxy(["--deny-ech"], PROXY2_IP) as proxy:
            for name, ech in (("chromium156-default-acr", True), ("curl-default-acr", False)):
                with self.subTest(capture=name):
                    data = harness.read_captures()[name]
                    before = self.raw.accepted
                    sock, client = self.open(PROXY2_IP)
                    sock.sendall(data)
                    if ech:
                        self.assertTrue(harness.is_reset(sock, 10), "the ECH hello was relayed")
                    else:
                        self.raw.wait_for_bytes(len(data), index=before, timeout=15)
                        sock.close()
                    entry = proxy.wait_for_log(lambda e: e.get("client") == client, 15)
                    self.assertEqual((entry["decision"], entry["reason"]),
                                     ("deny", "ech") if ech else ("allow", "host_allowed"), entry)
                    if ech:
                        self.assertFalse(entry.get("dialled"), entry)
                        self.assertEqual(self.raw.accepted, before)

    # ---------------------------------------------------------------- real captures

    def test_every_capture_with_sni_is_forwarded_byte_exact(self):
        """D2: every real ClientHello capture (chromium, curl, gnutls, java, node, openssl,
        python, skopeo/Go) with an allowed SNI is let through and reaches the upstream
        byte-exact."""
        captures = {n: b for n, b in harness.read_captures().items() if harness.hello_sni(b)}
        self.assertGreaterEqual(len(captures), 15)
        for name, data in captures.items():
            with self.subTest(capture=name):
                entry = self.assert_forwarded_exactly(data)
                self.assertEqual(entry["target"], harness.hello_sni(data))

    def test_captures_follow_the_policy(self):
        """With --registry myregistry --region eastus the captures for the registry and its
        eastus data endpoint pass byte-exact, and the blob capture is reset host_not_allowed."""
        with self.start_proxy(["--registry", "myregistry", "--region", "eastus"],
                              PROXY2_IP) as proxy:
            for name, data in harness.read_captures().items():
                sni = harness.hello_sni(data)
                with self.subTest(capture=name, sni=sni):
                    if sni is None:
                        self.assert_reset_without_dial(data, "no_sni", proxy)
                    elif sni.endswith(".blob.core.windows.net"):
                        self.assert_reset_without_dial(data, "host_not_allowed", proxy)
                    else:
                        self.assert_forwarded_exactly(data, proxy=proxy)


if __name__ == "__main__":
    unittest.main()
