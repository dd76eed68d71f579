"""--sni-upstream-port (issue 11 section 6): an sni listener on an unprivileged port dials the
upstream on another port, the one the policy judges.

The sni listener sits on 127.0.0.5:L; the TLS upstream on 127.0.0.2:U (U != L), the only port
the policy allows; a real Python TLS client (full handshake, certificate verified) connects to
the listener with the registry's name as SNI.
"""

import os
import socket
import ssl
import unittest

import harness

NAME = "myreg.azurecr.io"
TLS_IP, SNI_IP = "127.0.0.2", "127.0.0.5"


class SniUpstreamPortTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"), [NAME], [TLS_IP])
        cls.upstream_port = harness.free_port(TLS_IP)
        cls.listen_port = harness.free_port(SNI_IP)
        while cls.listen_port == cls.upstream_port:
            cls.listen_port = harness.free_port(SNI_IP)
        cls.tls = harness.TlsServer(TLS_IP, cls.upstream_port, cls.certs["cert"],
                                    cls.certs["key"])
        cls.addClassCleanup(cls.tls.stop)
        cls.dns = harness.Dnsmasq({NAME: [TLS_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

    def proxy(self, *extra):
        proxy = harness.Proxy(["--sni", f"{SNI_IP}:{self.listen_port}", "--registry", "myreg",
                               "--allow-cidr", f"{TLS_IP}/32", "--port", str(self.upstream_port),
                               "--dns-server", self.dns.address, "--workers", "1", *extra])
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def handshake(self):
        """A verified TLS handshake through the listener, then an echo round trip; returns the
        client address as the access log writes it."""
        context = ssl.create_default_context(cafile=self.certs["ca"])
        raw = socket.create_connection((SNI_IP, self.listen_port), timeout=10)
        client = "%s:%d" % raw.getsockname()
        with context.wrap_socket(raw, server_hostname=NAME) as tls:
            tls.sendall(b"ping")
            self.assertEqual(tls.recv(4), b"ping")
        return client

    # With the option, the listener's port is not the upstream's: the tunnel reaches the upstream
    # port, which is also the port the policy judged and the log reports.
    def test_dials_the_upstream_port(self):
        proxy = self.proxy("--sni-upstream-port", str(self.upstream_port))
        client = self.handshake()
        entry = proxy.wait_for_log(lambda e: e.get("client") == client)
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertEqual(entry["port"], self.upstream_port)
        self.assertEqual(entry["dialled"], f"{TLS_IP}:{self.upstream_port}")
        self.assertEqual(self.tls.snis[-1], NAME)

    # Without it, the listener's own port is judged (and not allowed here): reset, logged.
    def test_without_the_option_the_listener_port_is_used(self):
        proxy = self.proxy()
        raw = socket.create_connection((SNI_IP, self.listen_port), timeout=10)
        self.addCleanup(raw.close)
        client = "%s:%d" % raw.getsockname()
        raw.sendall(harness.client_hello(NAME))
        self.assertTrue(harness.is_reset(raw))
        entry = proxy.wait_for_log(lambda e: e.get("client") == client)
        self.assertEqual(entry["reason"], "port_not_allowed")
        self.assertEqual(entry["port"], self.listen_port)


if __name__ == "__main__":
    unittest.main()
