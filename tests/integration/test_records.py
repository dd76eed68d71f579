"""Access-log records and counters that agree with what happened (issue 10 defects 6 and 7).

Defect 6: a connection the policy allowed that ends before relaying (the client closes after the
200 without a ClientHello; a drain in the dns, connect or tunnel_hello phase) is neither a refusal
nor a tunnel: decision "incomplete", reason client_closed / shutdown. Defect 7: refusals at
--max-connections reach acr_egress_connections_total, and during a drain the listeners stay
open to answer 503 draining (connect) or reset (sni) until the drain ends.

Loopback only: an echo upstream on 127.0.0.2, names from a dnsmasq the class starts, a silent UDP
socket as a DNS server that never answers.
"""

import signal
import socket
import time
import unittest

import harness

ECHO_NAME = "echo.azurecr.io"
UPSTREAM_IP = "127.0.0.2"


def metric(text, name, **labels):
    """The value of the sample `name{labels}` in the exposition `text` (labels in any order),
    or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        head, _, value = line.rpartition(" ")
        got = {}
        if "{" in head:
            for pair in head[head.index("{") + 1:-1].split(","):
                key, _, quoted = pair.partition("=")
                got[key] = quoted.strip('"')
        if all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


class RecordsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.isolate_in_netns(cls)
        cls.echo_port = harness.common_free_port(["127.0.0.1", UPSTREAM_IP])
        cls.echo = harness.RawServer(UPSTREAM_IP, cls.echo_port, handler=harness.echo_handler)
        cls.addClassCleanup(cls.echo.stop)
        cls.dns = harness.Dnsmasq({ECHO_NAME: [UPSTREAM_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        # A DNS server that never answers: a lookup through it stays in the dns phase.
        cls.silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cls.silent.bind(("127.0.0.1", 0))
        cls.addClassCleanup(cls.silent.close)

    def start_proxy(self, *extra, dns=None):
        self.port = harness.free_port()
        self.sni_port = self.echo_port  # the sni listener dials its own port
        self.admin_port = harness.free_port()
        proxy = harness.Proxy(["--connect", f"127.0.0.1:{self.port}",
                               "--sni", f"127.0.0.1:{self.sni_port}",
                               "--allow-host", "*.azurecr.io",
                               "--allow-cidr", f"{UPSTREAM_IP}/32", "--port", str(self.echo_port),
                               "--dns-server", dns or self.dns.address, "--dns-timeout", "30s",
                               "--admin", f"127.0.0.1:{self.admin_port}",
                               "--workers", "2"] + list(extra))
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy, f"127.0.0.1:{self.port}"

    def scrape(self):
        return harness.curl("-s", "--max-time", "5",
                            f"http://127.0.0.1:{self.admin_port}/metrics").stdout

    def open_tunnel(self, addr):
        status, headers, body, sock = harness.connect_via_proxy(addr,
                                                                f"{ECHO_NAME}:{self.echo_port}")
        self.addCleanup(sock.close)
        self.assertEqual(status, 200, (headers, body))
        return sock

    # ---------------------------------------------------------------- defect 6

    def test_client_closing_after_200_is_incomplete_not_deny(self):
        """A client that closes after the 200 without a ClientHello is logged and counted as
        decision incomplete, reason client_closed, phase tunnel_hello: not a refusal with reason
        host_allowed."""
        proxy, addr = self.start_proxy()
        sock = self.open_tunnel(addr)
        client = sock.acr_client
        sock.close()
        entry = proxy.wait_for_log(lambda e: e.get("client") == client)
        self.assertEqual((entry["decision"], entry["reason"], entry["phase"]),
                         ("incomplete", "client_closed", "tunnel_hello"), entry)
        self.assertNotIn("allowed:", entry["message"].split(";")[-1])
        metrics = self.scrape()
        self.assertEqual(metric(metrics, "acr_egress_connections_total", listener="connect",
                                decision="incomplete", reason="client_closed"), 1, metrics)
        self.assertIsNone(metric(metrics, "acr_egress_connections_total", decision="deny",
                                 reason="host_allowed"), metrics)

    def test_drain_in_tunnel_hello_is_incomplete_shutdown(self):
        """A drain that ends while a CONNECT tunnel waits for its ClientHello logs it as
        decision incomplete, reason shutdown, phase tunnel_hello."""
        proxy, addr = self.start_proxy("--drain-timeout", "1s")
        sock = self.open_tunnel(addr)
        proxy.send_signal(signal.SIGTERM)
        self.assertEqual(proxy.wait(15), 0)
        entry = proxy.wait_for_log(lambda e: e.get("client") == sock.acr_client)
        self.assertEqual((entry["decision"], entry["reason"], entry["phase"]),
                         ("incomplete", "shutdown", "tunnel_hello"), entry)

    def test_drain_in_dns_is_incomplete_shutdown(self):
        """A drain that ends while an allowed name is being resolved (a DNS server that never
        answers) logs decision incomplete, reason shutdown, phase dns."""
        proxy, addr = self.start_proxy("--drain-timeout", "1s",
                                       dns="127.0.0.1:%d" % self.silent.getsockname()[1])
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(sock.close)
        client = "%s:%d" % sock.getsockname()[:2]
        target = f"{ECHO_NAME}:{self.echo_port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        time.sleep(0.5)
        proxy.send_signal(signal.SIGTERM)
        self.assertEqual(proxy.wait(15), 0)
        entry = proxy.wait_for_log(lambda e: e.get("client") == client)
        self.assertEqual((entry["decision"], entry["reason"], entry["phase"]),
                         ("incomplete", "shutdown", "dns"), entry)

    # ---------------------------------------------------------------- defect 7

    def test_overload_refusal_is_counted_in_connections_total(self):
        """A connection refused 503 at --max-connections is counted in
        acr_egress_connections_total{decision="deny",reason="overloaded"}, as its log line says."""
        proxy, addr = self.start_proxy("--max-connections", "1", "--allow-non-tls")
        self.open_tunnel(addr)
        status, headers, _, sock = harness.connect_via_proxy(addr,
                                                             f"{ECHO_NAME}:{self.echo_port}")
        sock.close()
        self.assertEqual((status, headers.get("x-acr-egress-reason")), (503, "overloaded"))
        proxy.wait_for_log(lambda e: e.get("client") == sock.acr_client)
        metrics = self.scrape()
        self.assertEqual(metric(metrics, "acr_egress_connections_total", listener="connect",
                                decision="deny", reason="overloaded"), 1, metrics)
        self.assertEqual(metric(metrics, "acr_egress_rejected_overload_total"), 1, metrics)

    def test_drain_answers_503_draining_and_resets_sni_until_it_ends(self):
        """During a drain (a tunnel still open) a new CONNECT client is answered 503 with reason
        draining and a new sni client is reset, each logged and counted with reason draining;
        once the drain ends the port refuses connections."""
        proxy, addr = self.start_proxy("--drain-timeout", "3s", "--allow-non-tls")
        tunnel = self.open_tunnel(addr)
        proxy.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status, headers, body, sock = harness.connect_via_proxy(
            addr, f"{ECHO_NAME}:{self.echo_port}", timeout=5)
        sock.close()
        self.assertEqual((status, headers.get("x-acr-egress-reason")), (503, "draining"),
                         (headers, body))
        sni = socket.socket()
        sni.bind(("127.0.0.1", 0))
        sni_client = "%s:%d" % sni.getsockname()[:2]
        sni.settimeout(5)
        try:
            # A timed connect is non-blocking plus poll: the reset at accept can beat its check.
            sni.connect(("127.0.0.1", self.sni_port))
            self.assertTrue(harness.is_reset(sni), "the sni client was not reset during the drain")
        except ConnectionResetError:
            pass
        sni.close()
        metrics = self.scrape()
        self.assertEqual(metric(metrics, "acr_egress_connections_total", listener="connect",
                                decision="deny", reason="draining"), 1, metrics)
        self.assertEqual(metric(metrics, "acr_egress_connections_total", listener="sni",
                                decision="deny", reason="draining"), 1, metrics)
        for client in (sock.acr_client, sni_client):
            entry = proxy.wait_for_log(lambda e, c=client: e.get("client") == c)
            self.assertEqual((entry["decision"], entry["reason"]), ("deny", "draining"))
        self.assertEqual(proxy.wait(10), 0)
        tunnel.close()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()


if __name__ == "__main__":
    unittest.main()
