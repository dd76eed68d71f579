"""The connect listener against real peers (THREATS 6.2 C1-C12, 6.3 B6-B8/B12/B19, 6.5 F1/F6).

One acr-egress (connect listener on 127.0.0.1) and one dnsmasq serve the whole class; every name
resolves to a loopback or special address through that dnsmasq, and upstreams listen on
127.0.0.2 (TLS, answers with the SNI it saw) and 127.0.0.4 (raw recorder) on one port P, the
only port the policy allows. Each test identifies its access-log line by its client port.
"""

import os
import socket
import ssl
import time
import unittest

import harness

ALLOWED = "myreg.azurecr.io"      # -> 127.0.0.2, the TLS upstream
RAW = "raw.azurecr.io"            # -> 127.0.0.4, the recording upstream
REFUSED = "refused.azurecr.io"    # -> 127.0.0.3 (allowed), nothing listening
NXDOMAIN = "missing.azurecr.io"   # not in dnsmasq
NO_ADDRESSES = "empty.azurecr.io"  # exists, no A/AAAA
EVIL = "evil.example"             # in dnsmasq (-> 127.0.0.2) but denied by the policy
SPECIAL = {"metadata.azurecr.io": "169.254.169.254", "private.azurecr.io": "10.0.0.5",
           "loopback.azurecr.io": "127.0.0.1", "wireserver.azurecr.io": "168.63.129.16"}
FALLBACK = "fallback.azurecr.io"  # -> 127.0.0.3 (refused) and 127.0.0.2 (TLS upstream)
MIXED = "mixed.azurecr.io"        # -> 10.0.0.1, 169.254.169.254 and 127.0.0.2
BLACKHOLE = "blackhole.azurecr.io"  # -> 127.0.0.6, a listener whose SYN queue is full
TLS_IP, REFUSED_IP, RAW_IP, BLACKHOLE_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.6"

REFUSAL_TEXT = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
                408: "Request Timeout", 431: "Request Header Fields Too Large",
                502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class ConnectListenerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A private namespace holding only lo: should a regression make the proxy dial one of
        # the special addresses below (metadata, RFC 1918), the packet cannot leave the machine.
        cls.isolated = harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"),
                                             [ALLOWED, RAW, FALLBACK, MIXED], [TLS_IP])
        cls.port = harness.common_free_port([TLS_IP, REFUSED_IP, RAW_IP, BLACKHOLE_IP])
        cls.tls = harness.TlsServer(TLS_IP, cls.port, cls.certs["cert"], cls.certs["key"],
                                    handler="http")
        cls.addClassCleanup(cls.tls.stop)
        cls.raw = harness.RawServer(RAW_IP, cls.port)
        cls.addClassCleanup(cls.raw.stop)
        records = {ALLOWED: [TLS_IP], RAW: [RAW_IP], REFUSED: [REFUSED_IP], NO_ADDRESSES: [],
                   EVIL: [TLS_IP], "denied-port.azurecr.io": [TLS_IP],
                   FALLBACK: [REFUSED_IP, TLS_IP], MIXED: ["10.0.0.1", "169.254.169.254", TLS_IP],
                   BLACKHOLE: [BLACKHOLE_IP]}
        records.update({name: [ip] for name, ip in SPECIAL.items()})
        cls.dns = harness.Dnsmasq(records)
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        cls.proxy_port = harness.free_port()
        cls.proxy_addr = f"127.0.0.1:{cls.proxy_port}"
        cls.proxy = harness.Proxy([
            "--connect", cls.proxy_addr, "--allow-host", "*.azurecr.io",
            "--allow-cidr", f"{TLS_IP}/32", "--allow-cidr", f"{REFUSED_IP}/32",
            "--allow-cidr", f"{RAW_IP}/32", "--port", str(cls.port),
            "--dns-server", cls.dns.address, "--workers", "2", "--head-timeout", "3s",
            "--connect-timeout", "5s", "--dns-timeout", "3s"])
        cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    # ---------------------------------------------------------------- helpers

    def connect(self, target, payload=b"", head=None, timeout=10):
        since = len(self.proxy.access_log())
        status, headers, body, sock = harness.connect_via_proxy(self.proxy_addr, target,
                                                                payload, head, timeout)
        sock.acr_log_since = since
        self.addCleanup(sock.close)
        return status, headers, body, sock

    def log_for(self, sock, timeout=10):
        """The access-log line of the connection whose client side is `sock`. The proxy is
        shared by the whole class and the kernel reuses client ports, so only lines written
        after this connection was opened count (an older connection from the same port once
        made this test flaky)."""
        since = getattr(sock, "acr_log_since", 0)

        def find():
            for entry in self.proxy.access_log()[since:]:
                if entry.get("client") == sock.acr_client:
                    return entry
            return None
        return harness.wait_until(find, timeout, 0.02, f"the access-log line of {sock.acr_client}")

    def log_lines_for(self, sock):
        since = getattr(sock, "acr_log_since", 0)
        return [e for e in self.proxy.access_log()[since:] if e.get("client") == sock.acr_client]

    def assert_refusal(self, status, headers, body, sock, code, reason):
        """The refusal contract: `HTTP/1.1 CODE TEXT (acr-egress: REASON)`, the reason header,
        a one-line `acr-egress: <sentence>` body, the connection closed by the proxy, and one
        access-log line with decision deny and that reason."""
        self.assertEqual(status, code, (headers, body))
        self.assertEqual(headers.get(":status-line"),
                         f"HTTP/1.1 {code} {REFUSAL_TEXT[code]} (acr-egress: {reason})")
        self.assertEqual(headers.get("x-acr-egress-reason"), reason, headers)
        self.assertTrue(body.startswith(b"acr-egress: "), body)
        self.assertEqual(body.count(b"\n"), 1, body)
        self.assertNotIn("transfer-encoding", headers)
        self.assertIn(sock.acr_close, ("fin", "rst"), "the proxy did not close after the refusal")
        sock.close()  # the proxy lingers (up to 2 s) for the client's FIN before logging
        entry = self.log_for(sock)
        self.assertEqual(entry["listener"], "connect", entry)
        self.assertEqual(entry["decision"], "deny", entry)
        self.assertEqual(entry["reason"], reason, entry)
        self.assertTrue(entry.get("message"), entry)
        return entry

    def refused(self, target, code, reason, head=None, payload=b""):
        status, headers, body, sock = self.connect(target, payload, head)
        return self.assert_refusal(status, headers, body, sock, code, reason)

    def tls_over(self, sock, server_hostname):
        ctx = ssl.create_default_context(cafile=self.certs["ca"])
        with ctx.wrap_socket(sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data, _ = harness.recv_until_closed(tls, 10)
        return data

    def assert_upstream_got_nothing(self, accepted_before):
        time.sleep(0.3)
        for i in range(accepted_before, self.raw.accepted):
            self.assertEqual(self.raw.received(i), b"",
                             "the upstream received bytes of a refused tunnel")

    # ---------------------------------------------------------------- C1 baseline

    def test_curl_tunnel_reaches_upstream_with_connect_host_as_sni(self):
        """C1: curl -p -x through the proxy reaches the upstream that dnsmasq names, TLS verified
        end to end, and the upstream saw SNI myreg.azurecr.io; the access log says so."""
        result = harness.curl("-p", "-x", f"http://{self.proxy_addr}", "--cacert",
                              self.certs["ca"], "--max-time", "20",
                              f"https://{ALLOWED}:{self.port}/")
        self.assertEqual(result.returncode, 0, result.stderr + self.proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={ALLOWED}\n")
        entry = self.proxy.wait_for_log(lambda e: e.get("target") == ALLOWED
                                        and e.get("dialled"))
        self.assertEqual(entry["listener"], "connect")
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertEqual(entry["reason"], "host_allowed", entry)
        self.assertEqual(entry["port"], self.port)
        self.assertEqual(entry["dialled"], f"{TLS_IP}:{self.port}")
        self.assertEqual(entry["phase"], "relay", entry)
        self.assertGreater(entry["bytes_up"], 0)
        self.assertGreater(entry["bytes_down"], 0)
        for field in ("time", "client", "message", "dns_ms", "connect_ms", "total_ms",
                      "closed_by"):
            self.assertIn(field, entry)

    def test_success_response_is_bare_200(self):
        """C1: the 200 carries no Content-Length or Transfer-Encoding, so the tunnel starts right
        after the head."""
        status, headers, body, sock = self.connect(f"{ALLOWED}:{self.port}")
        self.assertEqual(status, 200)
        self.assertEqual(headers[":status-line"], "HTTP/1.1 200 Connection established")
        self.assertNotIn("content-length", headers)
        self.assertNotIn("transfer-encoding", headers)
        self.assertEqual(sock.acr_early, b"")
        self.assertEqual(self.tls_over(sock, ALLOWED).split(b"\r\n\r\n", 1)[-1],
                         f"sni={ALLOWED}\n".encode())

    def test_curl_denied_host_fails_with_403_and_reason(self):
        """B19/C1: curl to a host outside the policy fails, docker-style output names the reason,
        the log has decision deny / host_not_allowed, and nothing was dialled."""
        accepted = self.tls.accepted
        result = harness.curl("-v", "-p", "-x", f"http://{self.proxy_addr}", "--cacert",
                              self.certs["ca"], "--max-time", "20", f"https://{EVIL}:{self.port}/")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("403 Forbidden (acr-egress: host_not_allowed)", result.stderr)
        self.assertIn("X-Acr-Egress-Reason: host_not_allowed", result.stderr)
        entry = self.proxy.wait_for_log(lambda e: e.get("target") == EVIL)
        self.assertEqual(entry["decision"], "deny")
        self.assertEqual(entry["reason"], "host_not_allowed")
        self.assertFalse(entry.get("dialled"), entry)
        self.assertEqual(self.tls.accepted, accepted)

    def test_http10_connect_without_host_is_tunnelled(self):
        """C1: an HTTP/1.0 CONNECT without Host is accepted and the tunnel carries TLS."""
        status, headers, _, sock = self.connect(
            None, head=f"CONNECT {ALLOWED}:{self.port} HTTP/1.0\r\n\r\n")
        self.assertEqual(status, 200, headers)
        self.assertIn(f"sni={ALLOWED}".encode(), self.tls_over(sock, ALLOWED))
        self.assertEqual(self.log_for(sock)["decision"], "allow")

    # ---------------------------------------------------------------- policy denials

    def test_wrong_port_is_403_port_not_allowed(self):
        """B7: an allowed host on a port outside --port is refused 403 port_not_allowed."""
        for port in (22, 25, 80, 3128, 8443):
            if port == self.port:
                continue
            with self.subTest(port=port):
                self.refused(f"denied-port.azurecr.io:{port}", 403, "port_not_allowed")

    def test_ip_literal_outside_allowed_set_is_403(self):
        """B6: an IP-literal target outside the allowed set is refused 403 address_not_allowed,
        also hidden in IPv6 (IPv4-mapped) and as IPv6 loopback; nothing is dialled."""
        accepted = self.raw.accepted
        for target in (f"127.0.0.9:{self.port}", f"[::1]:{self.port}",
                       f"[::ffff:127.0.0.9]:{self.port}"):
            with self.subTest(target=target):
                entry = self.refused(target, 403, "address_not_allowed")
                self.assertFalse(entry.get("dialled"), entry)
        self.assertEqual(self.raw.accepted, accepted)

    def test_ip_literal_inside_allowed_set_is_tunnelled(self):
        """B6: an IP-literal target inside --allow-cidr is tunnelled; a ClientHello without SNI
        is accepted because the CONNECT target named no host."""
        status, _, _, sock = self.connect(f"{TLS_IP}:{self.port}")
        self.assertEqual(status, 200)
        self.assertIn(b"sni=None", self.tls_over(sock, TLS_IP))
        entry = self.log_for(sock)
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertEqual(entry["dialled"], f"{TLS_IP}:{self.port}")

    def test_allowed_name_resolving_to_special_address_is_403(self):
        """B8: an allowed name that resolves to metadata, private, loopback or WireServer
        addresses (not in the allowed set) is refused 403 address_special and never dialled."""
        for name, ip in SPECIAL.items():
            with self.subTest(name=name, ip=ip):
                if not (self.isolated or ip.startswith("127.")):
                    self.skipTest("needs a private network namespace (root)")
                entry = self.refused(f"{name}:{self.port}", 403, "address_special")
                self.assertIn(ip, entry["message"])
                self.assertFalse(entry.get("dialled"), entry)

    def test_rebinding_resolver_cannot_steer_the_dial(self):
        """B10: a resolver answers one name alternately with an allowed address (RAW_IP) and
        with loopback, TTL 0. Each decision resolves once and dials exactly what it checked:
        allowed answers are tunnelled to RAW_IP, loopback answers are refused 403
        address_special, and a server on 127.0.0.1 at the same port is never reached."""
        name = "rebind.azurecr.io"
        port = harness.common_free_port([RAW_IP, "127.0.0.1"])
        upstream = harness.RawServer(RAW_IP, port, handler=harness.echo_handler)
        self.addCleanup(upstream.stop)
        victim = harness.RawServer("127.0.0.1", port)
        self.addCleanup(victim.stop)
        dns = harness.ScriptedDns({name: [[RAW_IP], ["127.0.0.1"]]})
        self.addCleanup(dns.stop)
        proxy_addr = f"127.0.0.1:{harness.free_port()}"
        proxy = harness.Proxy(["--connect", proxy_addr, "--allow-host", "*.azurecr.io",
                               "--allow-cidr", f"{RAW_IP}/32", "--port", str(port),
                               "--dns-server", dns.address, "--dns-min-ttl", "0s",
                               "--allow-non-tls", "--workers", "2"])
        proxy.start()
        self.addCleanup(proxy.stop)
        statuses = []
        for _ in range(8):
            status, headers, _, sock = harness.connect_via_proxy(proxy_addr, f"{name}:{port}",
                                                                 timeout=10)
            if status == 200:
                sock.sendall(b"ping")
                sock.settimeout(5)
                self.assertEqual(sock.recv(4), b"ping")
            else:
                self.assertEqual((status, headers.get("x-acr-egress-reason")),
                                 (403, "address_special"))
            sock.close()
            statuses.append(status)
        self.assertEqual(sorted(set(statuses)), [200, 403], statuses)  # both answers were used
        self.assertGreaterEqual(dns.a_queries, 8)  # TTL 0: nothing was cached
        self.assertEqual(victim.accepted, 0)
        self.assertEqual(upstream.accepted, statuses.count(200))
        proxy.stop()
        for entry in proxy.access_log():
            if entry.get("decision") == "allow":
                self.assertEqual(entry["dialled"], f"{RAW_IP}:{port}", entry)
            else:
                self.assertFalse(entry.get("dialled"), entry)

    def test_self_connection_is_refused(self):
        """B16: with loopback and the proxy's own port allowed, CONNECT to the proxy's listener
        (as a literal and through a name) is refused 403 self_connection and never loops."""
        port = harness.free_port()
        with harness.Proxy(["--connect", f"127.0.0.1:{port}", "--allow-host", "*.azurecr.io",
                            "--allow-cidr", "127.0.0.1/32", "--port", str(port),
                            "--dns-server", self.dns.address, "--workers", "1"]) as proxy:
            for target in (f"127.0.0.1:{port}", f"loopback.azurecr.io:{port}"):
                with self.subTest(target=target):
                    status, headers, body, sock = harness.connect_via_proxy(
                        f"127.0.0.1:{port}", target)
                    sock.close()
                    self.assertEqual(status, 403, body)
                    self.assertEqual(headers.get("x-acr-egress-reason"), "self_connection")
            time.sleep(0.5)
            self.assertEqual(len(proxy.access_log()), 2, proxy.access_log())
            self.assertEqual(proxy.stop(), 0)

    # ---------------------------------------------------------------- DNS and upstream faults

    def test_nxdomain_is_502_dns_nxdomain(self):
        """F1: an allowed name the resolver does not know is refused 502 dns_nxdomain."""
        entry = self.refused(f"{NXDOMAIN}:{self.port}", 502, "dns_nxdomain")
        self.assertFalse(entry.get("dialled"), entry)

    def test_name_without_addresses_is_502_dns_no_addresses(self):
        """F1: an allowed name that exists without A/AAAA records is 502 dns_no_addresses."""
        self.refused(f"{NO_ADDRESSES}:{self.port}", 502, "dns_no_addresses")

    def test_refused_upstream_is_502_upstream_refused(self):
        """F6: an allowed address with nothing listening is refused 502 upstream_refused."""
        entry = self.refused(f"{REFUSED}:{self.port}", 502, "upstream_refused")
        self.assertEqual(entry.get("dialled"), f"{REFUSED_IP}:{self.port}", entry)

    def test_refused_first_address_falls_back_to_next(self):
        """F6: a name with a refusing address and a working one is tunnelled to the working
        one, whatever order the resolver returns them in."""
        status, _, _, sock = self.connect(f"{FALLBACK}:{self.port}")
        self.assertEqual(status, 200)
        self.assertIn(f"sni={FALLBACK}".encode(), self.tls_over(sock, FALLBACK))
        self.assertEqual(self.log_for(sock)["dialled"], f"{TLS_IP}:{self.port}")

    def test_mixed_answer_set_dials_only_allowed_address(self):
        """B11: of the answers {10.0.0.1, 169.254.169.254, 127.0.0.2} only the allowed one is
        dialled, and the tunnel works."""
        if not self.isolated:
            self.skipTest("needs a private network namespace (root)")
        status, _, _, sock = self.connect(f"{MIXED}:{self.port}")
        self.assertEqual(status, 200)
        self.assertIn(f"sni={MIXED}".encode(), self.tls_over(sock, MIXED))
        self.assertEqual(self.log_for(sock)["dialled"], f"{TLS_IP}:{self.port}")

    def test_upstream_syn_black_hole_is_504_upstream_timeout(self):
        """F7: an upstream that never answers the SYN (its accept queue is full) is refused 504
        upstream_timeout after --connect-timeout (1 s here)."""
        hole = socket.socket()
        self.addCleanup(hole.close)
        hole.bind((BLACKHOLE_IP, self.port))
        hole.listen(0)
        filler = socket.create_connection((BLACKHOLE_IP, self.port), timeout=2)
        self.addCleanup(filler.close)
        port = harness.free_port()
        with harness.Proxy(["--connect", f"127.0.0.1:{port}", "--allow-host", "*.azurecr.io",
                            "--allow-cidr", f"{BLACKHOLE_IP}/32", "--port", str(self.port),
                            "--dns-server", self.dns.address, "--connect-timeout", "1s",
                            "--workers", "1"]) as proxy:
            started = time.monotonic()
            status, headers, body, sock = harness.connect_via_proxy(f"127.0.0.1:{port}",
                                                                    f"{BLACKHOLE}:{self.port}")
            elapsed = time.monotonic() - started
            sock.close()
            self.assertEqual(status, 504, body)
            self.assertEqual(headers.get("x-acr-egress-reason"), "upstream_timeout")
            self.assertGreaterEqual(elapsed, 0.9)
            self.assertLess(elapsed, 3.0)
            self.assertEqual(proxy.stop(), 0)

    def test_silent_resolver_is_504_dns_timeout(self):
        """F2: a resolver that never answers gives 504 dns_timeout after --dns-timeout (1 s),
        and a client that gives up mid-resolution is cleaned up without a crash."""
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        port = harness.free_port()
        with harness.Proxy(["--connect", f"127.0.0.1:{port}", "--allow-host", "*.azurecr.io",
                            "--port", str(self.port), "--dns-timeout", "1s",
                            "--dns-server", "127.0.0.1:%d" % silent.getsockname()[1],
                            "--workers", "1"]) as proxy:
            abandoned = socket.create_connection(("127.0.0.1", port))
            abandoned.sendall(f"CONNECT gone.azurecr.io:{self.port} HTTP/1.1\r\n"
                              f"Host: gone.azurecr.io\r\n\r\n".encode())
            time.sleep(0.2)
            abandoned.close()
            started = time.monotonic()
            status, headers, body, sock = harness.connect_via_proxy(f"127.0.0.1:{port}",
                                                                    f"{ALLOWED}:{self.port}")
            elapsed = time.monotonic() - started
            sock.close()
            self.assertEqual(status, 504, body)
            self.assertEqual(headers.get("x-acr-egress-reason"), "dns_timeout")
            self.assertGreaterEqual(elapsed, 0.9)
            self.assertLess(elapsed, 4.0)
            proxy.wait_for_log_count(2)
            self.assertEqual(proxy.stop(), 0)

    # ---------------------------------------------------------------- malformed heads

    def test_non_connect_methods_are_405(self):
        """C4: GET (absolute and origin form) and OPTIONS are refused 405 connect_only and
        never fetched."""
        accepted = self.tls.accepted
        for line in (f"GET http://{ALLOWED}/v2/ HTTP/1.1", "GET / HTTP/1.1", "OPTIONS * HTTP/1.1",
                     f"POST https://{ALLOWED}:{self.port}/ HTTP/1.1"):
            with self.subTest(line=line):
                self.refused(None, 405, "connect_only",
                             head=f"{line}\r\nHost: {ALLOWED}\r\n\r\n")
        self.assertEqual(self.tls.accepted, accepted)

    def test_malformed_heads_are_400_with_reason(self):
        """C2/C3/C5/C6/C7/C12: each malformed head is refused 400 with its stable reason."""
        a = f"{ALLOWED}:{self.port}"
        cases = [
            # C3 target form
            ("absolute-form", f"CONNECT https://{a}/ HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_target"),
            ("origin-form", f"CONNECT / HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_target"),
            ("userinfo", f"CONNECT user@{a} HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_target"),
            ("path", f"CONNECT {a}/x HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_target"),
            ("query", f"CONNECT {a}?x HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_target"),
            # C2 ports
            ("no port", f"CONNECT {ALLOWED} HTTP/1.1\r\nHost: {ALLOWED}\r\n\r\n", "bad_port"),
            ("empty port", f"CONNECT {ALLOWED}: HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_port"),
            ("port 0", f"CONNECT {ALLOWED}:0 HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_port"),
            ("port 65536", f"CONNECT {ALLOWED}:65536 HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_port"),
            ("port name", f"CONNECT {ALLOWED}:https HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_port"),
            ("leading zero", f"CONNECT {ALLOWED}:0{self.port} HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_port"),
            ("plus sign", f"CONNECT {ALLOWED}:+{self.port} HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_port"),
            ("trailing space", f"CONNECT {a}  HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_request_line"),
            # C6 syntax
            ("double space", f"CONNECT  {a} HTTP/1.1\r\nHost: {a}\r\n\r\n", "bad_request_line"),
            ("HTTP/1.2", f"CONNECT {a} HTTP/1.2\r\nHost: {a}\r\n\r\n", "bad_version"),
            ("no version", f"CONNECT {a}\r\nHost: {a}\r\n\r\n", "bad_version"),
            ("space before colon", f"CONNECT {a} HTTP/1.1\r\nHost : {a}\r\n\r\n", "bad_header"),
            ("empty header name", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n: x\r\n\r\n",
             "bad_header"),
            ("obs-fold", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nX-A: b\r\n c\r\n\r\n",
             "bad_header"),
            ("bare CR", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nX-A: b\rc\r\n\r\n", "bad_header"),
            ("NUL in header", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nX-A: b\0c\r\n\r\n",
             "bad_header"),
            ("non-token name", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nX(A): b\r\n\r\n",
             "bad_header"),
            # C5 Host
            ("missing Host", f"CONNECT {a} HTTP/1.1\r\nUser-Agent: x\r\n\r\n", "missing_host"),
            ("two Hosts", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nHost: {a}\r\n\r\n",
             "duplicate_host"),
            # C7 line endings
            ("LF only", f"CONNECT {a} HTTP/1.1\nHost: {a}\n\n", "bare_lf"),
            ("mixed", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\n\r\n", "bare_lf"),
            # C12 brackets
            ("bracketed name", f"CONNECT [{ALLOWED}]:{self.port} HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_target"),
            ("long bracket", f"CONNECT [{'a' * 300}]:{self.port} HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_target"),
            ("sniproxy CVE", "CONNECT [" + "long." * 60 + f"example.com]:{self.port} HTTP/1.1"
             f"\r\nHost: {a}\r\n\r\n", "bad_target"),
            ("zone id", f"CONNECT [2603:1030::1%eth0]:{self.port} HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_target"),
            ("unclosed bracket", f"CONNECT [::1:{self.port} HTTP/1.1\r\nHost: {a}\r\n\r\n",
             "bad_target"),
        ]
        for name, head, reason in cases:
            with self.subTest(case=name):
                self.refused(None, 400, reason, head=head)

    def test_oversize_head_is_431(self):
        """C8: a head over --max-head-size (8 KiB), or with too many header lines, is refused 431
        head_too_large at the cap, whether or not a terminator ever comes."""
        a = f"{ALLOWED}:{self.port}"
        cases = [
            ("long target", f"CONNECT {'a' * 9000}.azurecr.io:{self.port} HTTP/1.1\r\n\r\n"),
            ("64 KiB of headers, no end", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n"
             + "X-Pad: " + "x" * 65536),
            ("200 headers", f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n"
             + "".join(f"X-{i}: y\r\n" for i in range(200)) + "\r\n"),
        ]
        for name, head in cases:
            with self.subTest(case=name):
                started = time.monotonic()
                self.refused(None, 431, "head_too_large", head=head)
                self.assertLess(time.monotonic() - started, 2.5, "refused only at the timeout")

    def test_incomplete_head_is_408_after_head_timeout(self):
        """R1/C8: a head that never completes is refused 408 head_timeout after --head-timeout
        (3 s here), not before and not much later."""
        started = time.monotonic()
        entry = self.refused(None, 408, "head_timeout",
                             head=f"CONNECT {ALLOWED}:{self.port} HTTP/1.1\r\nHost: x")
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 2.5)
        self.assertLess(elapsed, 5.0)
        self.assertEqual(entry.get("phase"), "refuse", entry)

    def test_tls_clienthello_to_proxy_port_is_400(self):
        """C11: a ClientHello sent to the plaintext proxy port (https:// proxy URL) is answered
        400 tls_to_proxy_port, and curl with an https:// proxy URL fails with that reason
        logged."""
        self.refused(None, 400, "tls_to_proxy_port", head=harness.client_hello(ALLOWED))
        result = harness.curl("-p", "-x", f"https://{self.proxy_addr}", "--proxy-insecure",
                              "--max-time", "10", f"https://{ALLOWED}:{self.port}/")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.proxy.wait_for_log_count(2, lambda e: e.get("reason") == "tls_to_proxy_port")

    def test_http2_preface_is_400(self):
        """C11: the HTTP/2 connection preface is refused 400 http2_preface."""
        self.refused(None, 400, "http2_preface", head=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

    def test_slowloris_head_is_cut_at_head_timeout(self):
        """R1: a head trickled one byte every 0.4 s is refused 408 head_timeout when
        --head-timeout (3 s) has passed since the connection began, not after the last byte."""
        sock = harness.TunnelSocket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.connect(("127.0.0.1", self.proxy_port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.acr_client = "%s:%d" % sock.getsockname()
        started = time.monotonic()
        head = f"CONNECT {ALLOWED}:{self.port} HTTP/1.1\r\nHost: {ALLOWED}\r\n".encode()
        response = b""
        sock.settimeout(0.4)
        for i in range(len(head)):  # bounded: at most len(head) * 0.4 s
            try:
                sock.sendall(head[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            response += chunk
            break
        rest, _ = harness.recv_until_closed(sock, 5)
        elapsed = time.monotonic() - started
        self.assertTrue((response + rest).startswith(b"HTTP/1.1 408 "), response + rest)
        self.assertLess(elapsed, 5.0)
        sock.close()
        self.assertEqual(self.log_for(sock)["reason"], "head_timeout")

    def test_head_dribbled_byte_by_byte_is_accepted(self):
        """C7/P3 analogue: a CONNECT head sent one byte per segment within the timeout is parsed
        the same as in one write."""
        sock = harness.TunnelSocket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.connect(("127.0.0.1", self.proxy_port))
        head = f"CONNECT {ALLOWED}:{self.port} HTTP/1.1\r\nHost: {ALLOWED}\r\n\r\n".encode()
        harness.send_dribbled(sock, head, chunk=1, delay=0.002)
        data, _ = b"", None
        sock.settimeout(5)
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertIn(f"sni={ALLOWED}".encode(), self.tls_over(sock, ALLOWED))

    def test_tunnel_without_clienthello_is_closed_at_head_timeout(self):
        """R2 (connect): a tunnel whose client never sends its ClientHello is closed after
        --head-timeout with hello_timeout, and the upstream receives nothing."""
        before = self.raw.accepted
        status, _, _, sock = self.connect(f"{RAW}:{self.port}")
        self.assertEqual(status, 200)
        started = time.monotonic()
        _, how = harness.recv_until_closed(sock, 10)
        elapsed = time.monotonic() - started
        self.assertIn(how, ("fin", "rst"))
        self.assertGreaterEqual(elapsed, 2.5)
        self.assertLess(elapsed, 5.0)
        entry = self.log_for(sock)
        self.assertEqual((entry["reason"], entry["phase"]), ("hello_timeout", "tunnel_hello"))
        self.assert_upstream_got_nothing(before)

    # ---------------------------------------------------------------- bytes after the head

    def test_clienthello_in_same_write_as_head_is_forwarded_once(self):
        """C9/D3: a ClientHello sent in the same write as the CONNECT head reaches the upstream
        byte-exact, exactly once, and nothing else precedes it."""
        hello = harness.client_hello(RAW)
        before = self.raw.accepted
        status, _, _, sock = self.connect(f"{RAW}:{self.port}", payload=hello)
        self.assertEqual(status, 200)
        self.assertEqual(sock.acr_early, b"")
        self.raw.wait_for_bytes(len(hello), index=before)
        time.sleep(0.3)
        self.assertEqual(self.raw.received(before), hello)
        self.assertEqual(self.raw.accepted, before + 1)

    def test_denied_head_with_pipelined_connect_is_not_read_further(self):
        """C9: a denied CONNECT followed in the same write by a second (allowed) CONNECT gets one
        403 and a close; the second request is never processed (one log line, no dial)."""
        second = f"CONNECT {ALLOWED}:{self.port} HTTP/1.1\r\nHost: {ALLOWED}:{self.port}\r\n\r\n"
        accepted = self.tls.accepted
        status, headers, body, sock = self.connect(f"{EVIL}:{self.port}",
                                                   payload=second.encode())
        self.assert_refusal(status, headers, body, sock, 403, "host_not_allowed")
        self.assertNotIn(b"HTTP/1.1", body)
        time.sleep(0.5)
        self.assertEqual(len(self.log_lines_for(sock)), 1, self.log_lines_for(sock))
        self.assertEqual(self.tls.accepted, accepted)

    def test_text_after_200_is_tunnelled_verbatim(self):
        """C10: after the 200 and the ClientHello, a second CONNECT head is tunnel data: the
        upstream receives it verbatim and the proxy neither parses nor logs it."""
        hello = harness.client_hello(RAW)
        text = f"CONNECT {EVIL}:443 HTTP/1.1\r\nHost: {EVIL}:443\r\n\r\n".encode()
        before = self.raw.accepted
        status, _, _, sock = self.connect(f"{RAW}:{self.port}")
        self.assertEqual(status, 200)
        sock.sendall(hello)
        self.raw.wait_for_bytes(len(hello), index=before)
        sock.sendall(text)
        self.raw.wait_for_bytes(len(hello) + len(text), index=before)
        time.sleep(0.2)
        self.assertEqual(self.raw.received(before), hello + text)
        sock.close()
        entry = self.proxy.wait_for_log(lambda e: e.get("dialled") == f"{RAW_IP}:{self.port}"
                                        and e.get("bytes_up") == len(hello) + len(text))
        self.assertEqual(entry["target"], RAW)

    def test_half_close_right_after_head_and_hello_is_honoured(self):
        """D4/C9: a client that sends head + ClientHello and then SHUT_WR at once still gets its
        200, the upstream gets the hello and then the FIN."""
        hello = harness.client_hello(RAW)
        before = self.raw.accepted
        sock = harness.TunnelSocket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.connect(("127.0.0.1", self.proxy_port))
        sock.sendall(f"CONNECT {RAW}:{self.port} HTTP/1.1\r\nHost: {RAW}\r\n\r\n".encode()
                     + hello)
        sock.shutdown(socket.SHUT_WR)
        data, how = harness.recv_until_closed(sock, 10)
        self.assertEqual((data, how), (b"HTTP/1.1 200 Connection established\r\n\r\n", "fin"))
        self.assertEqual(self.raw.wait_closed(before), "fin")
        self.assertEqual(self.raw.received(before), hello)

    def test_ipv6_listener_serves_connect(self):
        """A connect listener on [::1] accepts IPv6 clients and tunnels them like IPv4 ones."""
        port = harness.free_port("::1")
        with harness.Proxy(["--connect", f"[::1]:{port}", "--allow-host", "*.azurecr.io",
                            "--allow-cidr", f"{TLS_IP}/32", "--port", str(self.port),
                            "--dns-server", self.dns.address, "--workers", "1"]) as proxy:
            status, _, _, sock = harness.connect_via_proxy(f"[::1]:{port}",
                                                           f"{ALLOWED}:{self.port}")
            self.addCleanup(sock.close)
            self.assertEqual(status, 200)
            self.assertIn(f"sni={ALLOWED}".encode(), self.tls_over(sock, ALLOWED))
            entry = proxy.wait_for_log(lambda e: e.get("target") == ALLOWED)
            self.assertIn("::1", entry["client"])
            self.assertEqual(proxy.stop(), 0)

    # ---------------------------------------------------------------- in-tunnel SNI peek

    def assert_tunnel_closed_with(self, first_bytes, reason):
        before = self.raw.accepted
        status, _, _, sock = self.connect(f"{RAW}:{self.port}")
        self.assertEqual(status, 200)
        sock.sendall(first_bytes)
        _, how = harness.recv_until_closed(sock, 10)
        self.assertIn(how, ("fin", "rst"), "the tunnel was not closed")
        entry = self.log_for(sock)
        self.assertEqual(entry["decision"], "deny", entry)
        self.assertEqual(entry["reason"], reason, entry)
        self.assertEqual(entry["phase"], "tunnel_hello", entry)
        self.assert_upstream_got_nothing(before)

    def test_clienthello_with_other_sni_closes_tunnel(self):
        """B12: CONNECT raw.azurecr.io then a ClientHello for evil.example closes the tunnel
        (sni_mismatch) and the upstream receives nothing."""
        self.assert_tunnel_closed_with(harness.client_hello(EVIL), "sni_mismatch")

    def test_captured_clienthello_with_other_allowed_sni_closes_tunnel(self):
        """B12/B13: a real openssl ClientHello for a blob host (itself allowed by name patterns
        elsewhere) inside a tunnel to raw.azurecr.io is sni_mismatch."""
        self.assert_tunnel_closed_with(harness.read_captures()["openssl-alpn-h2-blob"],
                                       "sni_mismatch")

    def test_clienthello_without_sni_in_named_tunnel_closes_it(self):
        """B3/B12: a ClientHello without SNI in a tunnel whose CONNECT named a host is
        sni_mismatch."""
        self.assert_tunnel_closed_with(harness.read_captures()["openssl-nosni"], "sni_mismatch")

    def test_ip_literal_tunnel_with_sni_is_mismatch(self):
        """B12/B13: CONNECT to an allowed IP literal followed by a ClientHello naming a host is
        sni_mismatch: a literal cannot carry a name past the policy."""
        before = self.raw.accepted
        status, _, _, sock = self.connect(f"{RAW_IP}:{self.port}")
        self.assertEqual(status, 200)
        sock.sendall(harness.client_hello(EVIL))
        _, how = harness.recv_until_closed(sock, 10)
        self.assertIn(how, ("fin", "rst"))
        self.assertEqual(self.log_for(sock)["reason"], "sni_mismatch")
        self.assert_upstream_got_nothing(before)

    def test_connect_host_case_and_trailing_dot_match_sni(self):
        """B5: CONNECT MYREG.AZURECR.IO or myreg.azurecr.io. (one trailing dot) and an SNI of
        myreg.azurecr.io name the same host: the tunnel is allowed and reaches the upstream."""
        for target in (ALLOWED.upper(), ALLOWED + "."):
            with self.subTest(target=target):
                status, _, _, sock = self.connect(f"{target}:{self.port}")
                self.assertEqual(status, 200)
                self.assertIn(f"sni={ALLOWED}".encode(), self.tls_over(sock, ALLOWED))
                self.assertEqual(self.log_for(sock)["decision"], "allow")

    def test_esni_in_tunnel_closes_it(self):
        """B15 (issue 10 defect 9): a tunnel whose ClientHello offers the obsolete ESNI
        extension is closed with reason esni, although its SNI equals the CONNECT host, and the
        upstream receives nothing."""
        self.assert_tunnel_closed_with(
            harness.add_extension(harness.client_hello(RAW), 0xffce, harness.ESNI_BODY), "esni")

    def test_ech_in_tunnel_is_judged_by_outer_sni_and_logged(self):
        """B14 (issue 10 defect 9): a tunnel ClientHello offering ECH whose outer SNI equals the
        CONNECT host is forwarded byte-exact and logged "ech": true."""
        hello = harness.add_extension(harness.client_hello(RAW), 0xfe0d, harness.ECH_OUTER)
        before = self.raw.accepted
        status, _, _, sock = self.connect(f"{RAW}:{self.port}")
        self.assertEqual(status, 200)
        sock.sendall(hello)
        self.raw.wait_for_bytes(len(hello), index=before)
        time.sleep(0.2)
        self.assertEqual(self.raw.received(before), hello)
        sock.close()
        entry = self.log_for(sock)
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertIs(entry.get("ech"), True, entry)

    def test_non_tls_tunnel_is_closed_without_allow_non_tls(self):
        """P1 (in-tunnel): plain HTTP inside a tunnel is closed not_tls and never forwarded."""
        self.assert_tunnel_closed_with(f"GET / HTTP/1.1\r\nHost: {RAW}\r\n\r\n".encode(),
                                       "not_tls")

    # ---------------------------------------------------------------- DNS discipline

    def test_denied_names_are_never_resolved(self):
        """B19: names refused by host rules or port are never sent to the resolver, allowed ones
        are."""
        self.refused(f"{EVIL}:{self.port}", 403, "host_not_allowed")
        self.refused("denied-port.azurecr.io:22", 403, "port_not_allowed")
        self.refused(f"{NXDOMAIN}:{self.port}", 502, "dns_nxdomain")
        time.sleep(0.3)
        queried = {name.lower().rstrip(".") for name in self.dns.queries()}
        self.assertNotIn(EVIL, queried)
        self.assertNotIn("denied-port.azurecr.io", queried)
        self.assertIn(NXDOMAIN, queried)

    def test_every_refusal_carries_reason_header(self):
        """6.2 convention: one refusal of each status class (400, 403, 405, 431, 502) carries
        the reason in the status line, in X-Acr-Egress-Reason and in a plain-text body."""
        a = f"{ALLOWED}:{self.port}"
        self.refused(None, 400, "bad_version", head=f"CONNECT {a} HTTP/9.9\r\n\r\n")
        self.refused(f"{EVIL}:{self.port}", 403, "host_not_allowed")
        self.refused(None, 405, "connect_only", head=f"GET / HTTP/1.1\r\nHost: {a}\r\n\r\n")
        self.refused(None, 431, "head_too_large", head="CONNECT " + "a" * 10000)
        self.refused(f"{NXDOMAIN}:{self.port}", 502, "dns_nxdomain")


if __name__ == "__main__":
    unittest.main()
