"""The transparent listener behind a real nftables REDIRECT (THREATS B1, B16, B17, B18, D2, F17).

Everything runs in a private network namespace (netns_fixtures.NetNs) holding only `lo` with
documentation addresses: 192.0.2.10 and [2001:db8::10] (a TLS upstream, harness.TlsServer),
192.0.2.11 (docker-registry), 203.0.113.10 (a server an SNI-spoofing client aims at). The test's
main thread enters the namespace, so the proxy, dnsmasq and the servers it starts live there. An
nft `inet` rule redirects every locally generated TCP connection to port 443 (IPv4 and IPv6) to
the proxy's transparent listeners, except packets marked 1 — the proxy's own upstream sockets
(--mark 1), which is what keeps its egress from being redirected back to itself (B17).
Clients pin names with curl --resolve, or (skopeo) read /etc/netns/NAME/hosts.
"""

import os
import socket
import subprocess
import unittest

import harness
from netns_fixtures import NetNs
from registry_fixtures import OciImage, Registry, Skopeo, cert_dir_with_ca, dir_blob_digests

ALLOWED_HOST = "myreg.azurecr.io"
OTHER_HOST = "other.azurecr.io"
UPSTREAM_V4 = "192.0.2.10"
UPSTREAM_V6 = "2001:db8::10"
REGISTRY_V4 = "192.0.2.11"
SPOOF_V4 = "203.0.113.10"
ALLOWED_V4_RANGE = "192.0.2.0/24"  # holds the upstream and the registry, not 203.0.113.10
ALLOWED_V6_RANGE = "2001:db8::/32"
MARK = 1


class TransparentTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        root = cls.tmp.path
        cls.certs = harness.make_ca_and_cert(os.path.join(root, "pki"),
                                             [ALLOWED_HOST, OTHER_HOST],
                                             [UPSTREAM_V4, UPSTREAM_V6, REGISTRY_V4])
        cls.cert_dir = cert_dir_with_ca(os.path.join(root, "ca-dir"), cls.certs["ca"])

        cls.ns = NetNs([UPSTREAM_V4, UPSTREAM_V6, REGISTRY_V4, SPOOF_V4])
        cls.addClassCleanup(cls.ns.destroy)
        cls.ns.create()
        cls.ns.write_etc({ALLOWED_HOST: REGISTRY_V4})
        cls.ns.enter()
        cls.addClassCleanup(cls.ns.leave)

        cert, key = cls.certs["cert"], cls.certs["key"]
        cls.upstream = harness.TlsServer(UPSTREAM_V4, 443, cert, key, handler="http")
        cls.addClassCleanup(cls.upstream.stop)
        cls.upstream6 = harness.TlsServer(UPSTREAM_V6, 443, cert, key, handler="http")
        cls.addClassCleanup(cls.upstream6.stop)
        cls.spoof_target = harness.RawServer(SPOOF_V4, 443)
        cls.addClassCleanup(cls.spoof_target.stop)
        cls.dns = harness.Dnsmasq({ALLOWED_HOST: [UPSTREAM_V4, UPSTREAM_V6],
                                   OTHER_HOST: [UPSTREAM_V4]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

        # The registry gets its image before the redirect exists: the push goes straight to it.
        cls.registry = Registry(os.path.join(root, "registry"), REGISTRY_V4, 443, cert, key)
        cls.registry.start()
        cls.addClassCleanup(cls.registry.stop)
        cls.image = OciImage(os.path.join(root, "oci"), tag="test").build()
        Skopeo(os.path.join(root, "skopeo-push")).push_oci(
            cls.image.directory, "test", f"{REGISTRY_V4}:443/library/test:1", cls.cert_dir)

        cls.listen_port = harness.free_port("127.0.0.1")
        cls.firewall = cls.ns.redirect_443(cls.listen_port, MARK)

    def start_proxy(self, allow_cidrs=(ALLOWED_V4_RANGE, ALLOWED_V6_RANGE), mark=MARK, extra=()):
        """acr-egress with transparent listeners on 127.0.0.1:T and [::1]:T (where the REDIRECT
        sends IPv4 and IPv6), --mark 1 (none if `mark` is None), registry myreg and
        `allow_cidrs`; stopped at test end."""
        args = ["--transparent", f"127.0.0.1:{self.listen_port}",
                "--transparent", f"[::1]:{self.listen_port}",
                "--registry", "myreg", "--dns-server", self.dns.address, "--workers", "2"]
        if mark is not None:
            args += ["--mark", str(mark)]
        for cidr in allow_cidrs:
            args += ["--allow-cidr", cidr]
        proxy = harness.Proxy(args + list(extra))
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def transparent_lines(self, proxy):
        proxy.stop()
        return [line for line in proxy.access_log() if line.get("listener") == "transparent"]

    def curl_https(self, host, address, bracket=False):
        pinned = f"[{address}]" if bracket else address
        return harness.curl("--max-time", "10", "--cacert", self.certs["ca"],
                            "--resolve", f"{host}:443:{pinned}", f"https://{host}/", timeout=20)

    def openssl_connect(self, address, port, servername):
        """`openssl s_client -connect ADDRESS:PORT -servername SERVERNAME`: one real ClientHello,
        then whatever the proxy does. Returns (exit code, combined output)."""
        result = subprocess.run(["openssl", "s_client", "-connect", f"{address}:{port}",
                                 "-servername", servername, "-CAfile", self.certs["ca"]],
                                input="", capture_output=True, text=True, timeout=20)
        return result.returncode, result.stdout + result.stderr

    # A redirected connection with an allowed SNI reaches its original destination, with the
    # ClientHello forwarded intact (curl verifies the handshake end to end).
    def test_allowed_sni_is_relayed_to_original_destination(self):
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl_https(ALLOWED_HOST, UPSTREAM_V4)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={ALLOWED_HOST}\n")

        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        line = lines[0]
        self.assertEqual(line["decision"], "allow", line)
        self.assertEqual(line["target"], ALLOWED_HOST, line)
        self.assertEqual(line["original_dst"], f"{UPSTREAM_V4}:443", line)
        self.assertEqual(line["dialled"], f"{UPSTREAM_V4}:443", line)
        self.assertEqual(line["port"], 443, line)
        self.assertGreater(line["bytes_up"], 0, line)
        self.assertGreater(line["bytes_down"], 0, line)
        self.assertEqual(self.upstream.accepted, accepted + 1)

    # B17: the proxy's own connection to port 443 carries its mark and is not redirected back to
    # itself: N requests give exactly N transparent log lines and N upstream connections.
    def test_proxy_egress_is_not_redirected_to_itself(self):
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        requests = 3
        for _ in range(requests):
            result = self.curl_https(ALLOWED_HOST, UPSTREAM_V4)
            self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), requests, lines)
        for line in lines:
            self.assertEqual(line["decision"], "allow", line)
            self.assertTrue(line["client"].startswith(f"{UPSTREAM_V4}:"), line)
        self.assertEqual(self.upstream.accepted, accepted + requests)

    # B17 without the mark: the proxy's own upstream connection is redirected back to it. The
    # proxy recognises its own source endpoint and refuses the looped copy (proxy_loop), so a
    # forgotten --mark costs one refused connection, not a loop that eats every descriptor.
    def test_missing_mark_loop_is_refused_once_not_repeated(self):
        proxy = self.start_proxy(mark=None)
        accepted = self.upstream.accepted
        result = self.curl_https(ALLOWED_HOST, UPSTREAM_V4)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("without --mark", proxy.stderr_text())
        lines = self.transparent_lines(proxy)
        loops = [line for line in lines if line.get("reason") == "proxy_loop"]
        self.assertEqual(len(loops), 1, lines)
        self.assertEqual(loops[0]["decision"], "deny", loops[0])
        self.assertEqual(loops[0]["original_dst"], f"{UPSTREAM_V4}:443", loops[0])
        # The client's own connection plus the one looped copy: nothing else.
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(self.upstream.accepted, accepted)

    # B18: the inet rule redirects IPv6 too, and the [::1] listener relays it.
    def test_ipv6_connection_is_redirected_and_relayed(self):
        proxy = self.start_proxy()
        accepted = self.upstream6.accepted
        result = self.curl_https(ALLOWED_HOST, UPSTREAM_V6, bracket=True)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text() +
                         f"\n{self.firewall} rules:\n{self.ns.ruleset_text()}")
        self.assertEqual(result.stdout, f"sni={ALLOWED_HOST}\n")
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "allow", lines[0])
        self.assertEqual(lines[0]["original_dst"], f"[{UPSTREAM_V6}]:443", lines[0])
        self.assertEqual(lines[0]["dialled"], f"[{UPSTREAM_V6}]:443", lines[0])
        self.assertEqual(self.upstream6.accepted, accepted + 1)

    # F17 through the transparent path: skopeo, unaware of any proxy, pulls a real image from
    # docker-registry and gets every blob byte-identical.
    def test_skopeo_pull_through_redirect(self):
        proxy = self.start_proxy()
        out = os.path.join(self.tmp.path, "pull-transparent")
        skopeo = Skopeo(os.path.join(self.tmp.path, "skopeo-pull"),
                        argv_prefix=self.ns.argv([]))
        result = skopeo.run(["copy", "--src-cert-dir", self.cert_dir, "--src-no-creds",
                             f"docker://{ALLOWED_HOST}/library/test:1", f"dir:{out}"])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr +
                         proxy.stderr_text())
        pulled = dir_blob_digests(out)
        for digest in self.image.blob_digests:
            self.assertEqual(pulled.get(digest), digest, f"blob {digest}")

        lines = self.transparent_lines(proxy)
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(line["decision"], "allow", line)
            self.assertEqual(line["target"], ALLOWED_HOST, line)
            self.assertEqual(line["original_dst"], f"{REGISTRY_V4}:443", line)
            self.assertEqual(line["dialled"], f"{REGISTRY_V4}:443", line)
        self.assertGreaterEqual(sum(line["bytes_down"] for line in lines),
                                self.image.total_bytes)

    # An SNI the policy does not allow is reset without any upstream connection.
    def test_sni_not_allowed_is_reset_without_dialling(self):
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl_https(OTHER_HOST, UPSTREAM_V4)
        self.assertEqual(result.returncode, 35, result.stderr)  # SSL connect error
        self.assertIn("reset by peer", result.stderr)
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "deny", lines[0])
        self.assertEqual(lines[0]["reason"], "host_not_allowed", lines[0])
        self.assertEqual(lines[0]["target"], OTHER_HOST, lines[0])
        self.assertEqual(lines[0]["original_dst"], f"{UPSTREAM_V4}:443", lines[0])
        self.assertFalse(lines[0].get("dialled"), lines[0])
        self.assertEqual(self.upstream.accepted, accepted)

    # B1: an allowed SNI aimed at an address that is neither in the allowed set nor among the
    # name's DNS answers is reset and nothing is dialled. 203.0.113.10 is a documentation
    # address, so the documented order of address checks (allowed set, then special ranges)
    # denies it as address_special before the SNI's answers are consulted.
    def test_sni_spoofing_to_unlisted_address_is_denied(self):
        proxy = self.start_proxy(allow_cidrs=[ALLOWED_V4_RANGE])
        code, output = self.openssl_connect(SPOOF_V4, 443, ALLOWED_HOST)
        self.assertNotEqual(code, 0, output)
        self.assertIn("errno=104", output)  # ECONNRESET: the proxy resets, no certificate
        self.assertNotIn("BEGIN CERTIFICATE", output)
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        line = lines[0]
        self.assertEqual(line["decision"], "deny", line)
        self.assertEqual(line["reason"], "address_special", line)
        self.assertEqual(line["target"], ALLOWED_HOST, line)
        self.assertEqual(line["original_dst"], f"{SPOOF_V4}:443", line)
        self.assertFalse(line.get("dialled"), line)
        self.assertEqual(self.spoof_target.accepted, 0)

    # B2: the client's resolver and the proxy's disagree (geo DNS): the client aims at
    # REGISTRY_V4, which is not among the proxy's answers for the SNI (UPSTREAM_V4/V6) but lies
    # in the allowed range: relayed (the message names the range). With only the proxy's answer
    # allowed, the same connection is refused with a reason of its own (address_special here:
    # every address of this test is a documentation address) and nothing is dialled.
    def test_destination_outside_proxy_answers_is_judged_by_the_allowed_ranges(self):
        proxy = self.start_proxy()
        result = self.curl_https(ALLOWED_HOST, REGISTRY_V4)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "allow", lines[0])
        self.assertIn(f"allowed: {REGISTRY_V4} is in allowed range {ALLOWED_V4_RANGE}",
                      lines[0]["message"])
        self.assertEqual(lines[0]["original_dst"], f"{REGISTRY_V4}:443", lines[0])
        self.assertNotIn(REGISTRY_V4, self.dns.records[ALLOWED_HOST])

        proxy = self.start_proxy(allow_cidrs=[f"{UPSTREAM_V4}/32"])
        result = self.curl_https(ALLOWED_HOST, REGISTRY_V4)
        self.assertNotEqual(result.returncode, 0)
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual((lines[0]["decision"], lines[0]["reason"]), ("deny", "address_special"),
                         lines[0])
        self.assertFalse(lines[0].get("dialled"), lines[0])

    # B16: a client that connects to the transparent listener itself (no REDIRECT, so the
    # original destination is the listener) is denied not_redirected and nothing is dialled.
    def test_direct_connection_to_listener_is_denied_not_redirected(self):
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        code, output = self.openssl_connect("127.0.0.1", self.listen_port, ALLOWED_HOST)
        self.assertNotEqual(code, 0, output)
        self.assertIn("errno=104", output)
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "deny", lines[0])
        self.assertEqual(lines[0]["reason"], "not_redirected", lines[0])
        self.assertFalse(lines[0].get("dialled"), lines[0])
        self.assertEqual(self.upstream.accepted, accepted)

    # Without --allow-cidr, an original destination in a documentation range is never dialled,
    # even though the proxy's own DNS answer for the SNI names exactly that address: special
    # ranges need an explicit allowed range (README "Addresses").
    def test_special_destination_needs_allowed_range_even_if_dns_matches(self):
        proxy = self.start_proxy(allow_cidrs=[])
        accepted = self.upstream.accepted
        result = self.curl_https(ALLOWED_HOST, UPSTREAM_V4)
        self.assertEqual(result.returncode, 35, result.stderr)
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "deny", lines[0])
        self.assertEqual(lines[0]["reason"], "address_special", lines[0])
        self.assertEqual(lines[0]["original_dst"], f"{UPSTREAM_V4}:443", lines[0])
        self.assertFalse(lines[0].get("dialled"), lines[0])
        self.assertEqual(self.upstream.accepted, accepted)

    def redirect_extra_port(self, port):
        """Redirects locally generated TCP to `port` to the transparent listener too (a table of
        its own, removed at test end; the namespace goes with the class anyway)."""
        table = f"acr_egress_test_{port}"
        ruleset = f"""
table inet {table} {{
  chain output {{
    type nat hook output priority -100; policy accept;
    meta l4proto tcp tcp dport {port} meta mark != {MARK} redirect to :{self.listen_port}
  }}
}}
"""
        result = self.ns.run(["nft", "-f", "-"], check=False, input_text=ruleset)
        if result.returncode != 0:
            self.skipTest("needs nftables: " + result.stderr)
        self.addCleanup(self.ns.run, ["nft", "delete", "table", "inet", table], check=False)

    # B3 with --allow-no-sni: a real `openssl s_client -noservername` to an allowed address on
    # port 443 is relayed to it (the handshake completes with the upstream's certificate).
    def test_allow_no_sni_relays_to_allowed_address_on_allowed_port(self):
        proxy = self.start_proxy(extra=["--allow-no-sni"])
        accepted = self.upstream.accepted
        result = subprocess.run(["openssl", "s_client", "-connect", f"{UPSTREAM_V4}:443",
                                 "-noservername", "-CAfile", self.certs["ca"]],
                                input="", capture_output=True, text=True, timeout=20)
        self.assertIn("BEGIN CERTIFICATE", result.stdout, result.stdout + result.stderr)
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "allow", lines[0])
        self.assertEqual(lines[0]["reason"], "address_allowed", lines[0])
        self.assertEqual(lines[0]["dialled"], f"{UPSTREAM_V4}:443", lines[0])
        self.assertEqual(self.upstream.accepted, accepted + 1)

    # Issue 10 defect 3: with --allow-no-sni, a hello without SNI redirected from a port outside
    # --port (8443 here; only 443 is allowed) is refused port_not_allowed, exactly as the same
    # destination with an SNI is, and nothing is dialled.
    def test_allow_no_sni_still_applies_the_port_rule(self):
        self.redirect_extra_port(8443)
        target = harness.RawServer(UPSTREAM_V4, 8443)
        self.addCleanup(target.stop)
        proxy = self.start_proxy(extra=["--allow-no-sni"])
        for name, hello in (("no SNI", harness.read_captures()["openssl-nosni"]),
                            ("SNI", harness.client_hello(ALLOWED_HOST))):
            with self.subTest(hello=name):
                sock = socket.create_connection((UPSTREAM_V4, 8443), timeout=10)
                self.addCleanup(sock.close)
                try:
                    sock.sendall(hello)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                received, how = harness.recv_until_closed(sock, 10)
                self.assertEqual((received, how), (b"", "rst"))
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 2, lines)
        for line in lines:
            self.assertEqual(line["decision"], "deny", line)
            self.assertEqual(line["reason"], "port_not_allowed", line)
            self.assertEqual(line["original_dst"], f"{UPSTREAM_V4}:8443", line)
            self.assertFalse(line.get("dialled"), line)
        self.assertEqual(target.accepted, 0)


if __name__ == "__main__":
    unittest.main()
