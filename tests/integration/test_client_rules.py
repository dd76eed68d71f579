"""Client rules (--client-cidr, issue 11 section 1) against real clients.

One acr-egress serves the class with a connect listener on 127.0.0.1 and an sni listener on
127.0.0.5, admitting the clients 127.0.0.3/32 and 127.0.0.6/31 only; the upstream is a TLS
server on 127.0.0.2. Clients pick their source address among the loopback addresses (curl
--interface, a bound socket), so one machine plays a subnet of hosts. Also the secure default:
a listener on a non-loopback address without a client rule is a startup error.
"""

import os
import signal
import socket
import subprocess
import unittest

import harness

NAME = "myreg.azurecr.io"
TLS_IP, SNI_IP = "127.0.0.2", "127.0.0.5"
ADMITTED = ("127.0.0.3", "127.0.0.7")
REFUSED = ("127.0.0.4", "127.0.0.1")


class ClientRulesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"), [NAME], [TLS_IP])
        cls.port = harness.common_free_port([TLS_IP, SNI_IP])
        cls.tls = harness.TlsServer(TLS_IP, cls.port, cls.certs["cert"], cls.certs["key"],
                                    handler="http")
        cls.addClassCleanup(cls.tls.stop)
        cls.dns = harness.Dnsmasq({NAME: [TLS_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        cls.proxy_port = harness.free_port()
        cls.admin_port = harness.free_port()
        cls.proxy = harness.Proxy([
            "--connect", f"127.0.0.1:{cls.proxy_port}", "--sni", f"{SNI_IP}:{cls.port}",
            "--client-cidr", "127.0.0.3/32", "--client-cidr", "127.0.0.6/31",
            "--allow-host", "*.azurecr.io", "--allow-cidr", f"{TLS_IP}/32",
            "--port", str(cls.port), "--dns-server", cls.dns.address, "--workers", "2",
            "--admin", f"127.0.0.1:{cls.admin_port}"])
        cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    def curl_from(self, source):
        """A real curl through the connect listener from `source`; returns (exit code, CONNECT
        status, body, curl's client address as the access log writes it)."""
        result = harness.curl("--interface", source, "-x", f"http://127.0.0.1:{self.proxy_port}",
                              "--cacert", self.certs["ca"], "-w", "\n%{http_connect}",
                              f"https://{NAME}:{self.port}/v2/")
        body, _, connect = result.stdout.rpartition("\n")
        return result.returncode, connect, body, result.stderr

    def log_from(self, source, listener, reason):
        return self.proxy.wait_for_log(
            lambda e: e.get("client", "").startswith(source + ":") and
            e.get("listener") == listener and e.get("reason") == reason)

    # Clients inside a --client-cidr range get their tunnel; the upstream answers.
    def test_admitted_clients_are_served(self):
        for source in ADMITTED:
            code, connect, body, err = self.curl_from(source)
            self.assertEqual(code, 0, err)
            self.assertEqual(connect, "200", err)
            entry = self.log_from(source, "connect", "host_allowed")
            self.assertEqual(entry["decision"], "allow")

    # Any other client gets 403 client_not_allowed on the connect listener, before any DNS, and
    # the refusal is logged and counted.
    def test_other_clients_get_403(self):
        queries = len(self.dns.queries())
        for source in REFUSED:
            code, connect, _, err = self.curl_from(source)
            self.assertNotEqual(code, 0)
            self.assertEqual(connect, "403", err)
            entry = self.log_from(source, "connect", "client_not_allowed")
            self.assertEqual(entry["decision"], "deny")
            self.assertEqual(entry["message"],
                             f"denied: client {source} is in no client range (--client-cidr)")
        self.assertEqual(len(self.dns.queries()), queries, "a refused client caused a lookup")
        metrics = harness.curl(f"http://127.0.0.1:{self.admin_port}/metrics").stdout
        line = next(l for l in metrics.splitlines() if l.startswith(
            'acr_egress_connections_total{listener="connect",decision="deny",'
            'reason="client_not_allowed"}'))
        self.assertGreaterEqual(float(line.split()[-1]), len(REFUSED))

    # The sni listener: an admitted client's ClientHello reaches the upstream; a refused client is
    # reset without a byte read or relayed.
    def test_sni_listener_resets_other_clients(self):
        for source, admitted in ((ADMITTED[0], True), (REFUSED[0], False)):
            sock = socket.socket()
            self.addCleanup(sock.close)
            sock.bind((source, 0))
            sock.settimeout(10)
            client = "%s:%d" % sock.getsockname()  # bound: the port is known before connect
            mark = self.proxy.log_mark()
            try:
                # A timed connect is non-blocking plus poll: a reset at accept can beat its check.
                sock.connect((SNI_IP, self.port))
                sock.sendall(harness.client_hello(NAME))
                reset_early = False
            except ConnectionResetError:  # refused at accept: the reset may beat the hello
                reset_early = True
            self.assertEqual(reset_early and admitted, False, "an admitted client was reset")
            if admitted:
                data = sock.recv(5)
                self.assertEqual(data[:1], b"\x16", "no ServerHello from the upstream")
                sock.close()
                entry = self.proxy.wait_for_log(lambda e: e.get("client") == client, since=mark)
                self.assertEqual(entry["reason"], "host_allowed")
            else:
                self.assertTrue(reset_early or harness.is_reset(sock),
                                "a refused client was not reset")
                entry = self.proxy.wait_for_log(lambda e: e.get("client") == client, since=mark)
                self.assertEqual(entry["decision"], "deny")
                self.assertEqual(entry["reason"], "client_not_allowed")
                self.assertEqual(entry["bytes_up"], 0)


class SecureDefaultTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The proxy listens on 0.0.0.0 here: only inside a namespace that holds nothing but lo.
        harness.isolate_in_netns(cls)

    def run_binary(self, *args):
        env = dict(os.environ, ACR_EGRESS_CONFIG="")
        return subprocess.run([harness.binary_path(), *args], capture_output=True, text=True,
                              timeout=30, env=env)

    # A listener on 0.0.0.0 or [::] with no client rule refuses to start (exit 2), naming the
    # listener and the option; --check-config says the same; an explicit 0.0.0.0/0 starts.
    def test_non_loopback_listener_needs_a_client_rule(self):
        port = harness.free_port()
        for args, listener in (
                (["--connect", f"0.0.0.0:{port}"], f"connect listener 0.0.0.0:{port}"),
                (["--transparent", f"[::]:{port}"], f"transparent listener [::]:{port}"),
                (["--connect", f"127.0.0.1:{port}", "--sni", f"0.0.0.0:{port}"],
                 f"sni listener 0.0.0.0:{port}")):
            for extra in ([], ["--check-config"]):
                result = self.run_binary(*args, *extra)
                self.assertEqual(result.returncode, 2, (args, result.stderr))
                self.assertIn(listener, result.stderr)
                self.assertIn("add --client-cidr CIDR", result.stderr)
                self.assertNotIn("listening", result.stderr)
        with harness.Proxy(["--connect", f"0.0.0.0:{port}", "--client-cidr", "0.0.0.0/0"]) as proxy:
            code = harness.curl("-x", f"http://127.0.0.1:{port}", "-w", "%{http_connect}",
                                "-o", "/dev/null", "https://evil.example:443/").stdout
            self.assertEqual(code, "403")  # served (and judged), not refused as a client
            entry = proxy.wait_for_log(lambda e: e.get("target") == "evil.example")
            self.assertEqual(entry["reason"], "host_not_allowed")

    # A reload may not drop the last client rule of a non-loopback listener: it fails and the old
    # policy, client rule included, stays in force.
    def test_reload_keeps_the_client_rule(self):
        tmp = harness.TempDir()
        self.addCleanup(tmp.cleanup)
        port = harness.free_port()
        config = os.path.join(tmp.path, "acr-egress.toml")
        with open(config, "w") as f:
            f.write(f'[listeners]\nconnect = ["0.0.0.0:{port}"]\n'
                    '[policy]\nclient_cidrs = ["127.0.0.3/32"]\n')
        with harness.Proxy(["--config", config]) as proxy:
            with open(config, "w") as f:
                f.write(f'[listeners]\nconnect = ["0.0.0.0:{port}"]\n')
            proxy.send_signal(signal.SIGHUP)
            harness.wait_until(lambda: "reload failed" in proxy.stderr_text(), 10)
            self.assertIn("add --client-cidr", proxy.stderr_text())
            result = harness.curl("--interface", "127.0.0.4", "-x", f"http://127.0.0.1:{port}",
                                  "-w", "%{http_connect}", "-o", "/dev/null",
                                  "https://myreg.azurecr.io:443/")
            self.assertEqual(result.stdout, "403")
            proxy.wait_for_log(lambda e: e.get("reason") == "client_not_allowed")


if __name__ == "__main__":
    unittest.main()
