"""Self-connection loops (issue 10 defect 1, THREATS B16/B17).

A dial to any address:port this process listens on is refused (self_connection): a wildcard
listener stands for every local address of the host (re-read when an address is added), an
IPv4-mapped spelling is the IPv4 address, and every listener counts, not only the accepting one.
The proxy's own upstream connection handed back to a non-transparent listener (a REDIRECT rule)
is refused too (proxy_loop). Everything runs in a private network namespace holding only `lo`
(plus documentation addresses the tests add); names come from a dnsmasq the class starts.
"""

import os
import socket
import time
import unittest

import harness
from netns_fixtures import NetNs

SELF_NAME = "self.azurecr.io"          # -> 127.0.0.9: local (127.0.0.0/8), not the listener
STEERED_NAME = "steered.azurecr.io"    # -> 198.51.100.7, redirected back to the proxy by nft
ADDED_V4 = "192.0.2.77"                # added to lo while the proxy runs
STEERED_V4 = "198.51.100.7"


@unittest.skipUnless(os.geteuid() == 0, "needs root for a private network namespace")
class SelfConnectionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ns = NetNs([])
        cls.addClassCleanup(cls.ns.destroy)
        cls.ns.create()
        cls.ns.enter()
        cls.addClassCleanup(cls.ns.leave)
        cls.dns = harness.Dnsmasq({SELF_NAME: ["127.0.0.9"], STEERED_NAME: [STEERED_V4]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

    def start_proxy(self, *args):
        proxy = harness.Proxy(list(args) + ["--dns-server", self.dns.address, "--workers", "2",
                                            "--max-connections", "500",
                                            "--deny-log-rate", "0"])
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def assert_one_line_then_quiet(self, proxy, reason):
        """Exactly one access-log line (with `reason`) now and 1.5 s later: no loop."""
        entry = proxy.wait_for_log(lambda e: True)
        time.sleep(1.5)
        log = proxy.access_log()
        self.assertEqual(len(log), 1, log[:5])
        self.assertEqual((entry["decision"], entry["reason"]), ("deny", reason), entry)
        return entry

    def test_sni_wildcard_listener_name_resolving_to_the_host(self):
        """An sni listener on 0.0.0.0 and an allowed name that resolves to a local address
        (127.0.0.9, on lo's 127.0.0.0/8) give one refused connection, not a loop of thousands."""
        port = harness.free_port()
        proxy = self.start_proxy("--sni", f"0.0.0.0:{port}", "--client-cidr", "127.0.0.0/8",
                                 "--allow-cidr", "127.0.0.0/8",
                                 "--port", str(port))
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(harness.client_hello(SELF_NAME))
        self.assertTrue(harness.is_reset(sock))
        sock.close()
        self.assert_one_line_then_quiet(proxy, "self_connection")

    def test_connect_v4_mapped_spelling_of_the_listener(self):
        """CONNECT [::ffff:127.0.0.1]:P to the connect listener 127.0.0.1:P is refused 403
        self_connection, like CONNECT 127.0.0.1:P."""
        port = harness.free_port()
        proxy = self.start_proxy("--connect", f"127.0.0.1:{port}", "--allow-cidr", "127.0.0.0/8",
                                 "--port", str(port))
        status, headers, _, sock = harness.connect_via_proxy(
            ("127.0.0.1", port), f"[::ffff:127.0.0.1]:{port}", timeout=5)
        sock.close()
        self.assertEqual((status, headers.get("x-acr-egress-reason")), (403, "self_connection"))
        self.assert_one_line_then_quiet(proxy, "self_connection")

    def test_connect_to_another_listener_of_the_process(self):
        """CONNECT to the address of the process's sni listener (another listener than the one
        that accepted) is refused 403 self_connection."""
        port, sni_port = harness.free_port(), harness.free_port()
        proxy = self.start_proxy("--connect", f"127.0.0.1:{port}", "--sni",
                                 f"127.0.0.1:{sni_port}", "--allow-cidr", "127.0.0.0/8",
                                 "--port", str(sni_port))
        status, headers, _, sock = harness.connect_via_proxy(
            ("127.0.0.1", port), f"127.0.0.1:{sni_port}", timeout=5)
        sock.close()
        self.assertEqual((status, headers.get("x-acr-egress-reason")), (403, "self_connection"))
        self.assert_one_line_then_quiet(proxy, "self_connection")

    def test_address_added_while_running_is_known(self):
        """With a connect listener on 0.0.0.0, an address added to lo after the start
        (192.0.2.77) is recognised as local: CONNECT 192.0.2.77:P is refused self_connection."""
        port = harness.free_port()
        proxy = self.start_proxy("--connect", f"0.0.0.0:{port}", "--client-cidr", "127.0.0.0/8",
                                 "--allow-cidr", "192.0.2.0/24",
                                 "--port", str(port))
        self.ns.run(["ip", "addr", "add", ADDED_V4 + "/32", "dev", "lo"])
        self.addCleanup(self.ns.run, ["ip", "addr", "del", ADDED_V4 + "/32", "dev", "lo"],
                        check=False)
        time.sleep(0.5)
        status, headers, _, sock = harness.connect_via_proxy(
            ("127.0.0.1", port), f"{ADDED_V4}:{port}", timeout=5)
        sock.close()
        self.assertEqual((status, headers.get("x-acr-egress-reason")), (403, "self_connection"))
        self.assert_one_line_then_quiet(proxy, "self_connection")

    def test_own_upstream_redirected_to_sni_listener_is_proxy_loop(self):
        """An nft rule that redirects the proxy's own upstream connection (to 198.51.100.7, not a
        local address) back to its sni listener: the looped connection is refused proxy_loop at
        once, so there are exactly two log lines (the client's and the loop's), not a loop."""
        port = harness.free_port()
        ruleset = f"""
table ip acr_self_test {{
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr {STEERED_V4} tcp dport {port} redirect to :{port}
  }}
}}
"""
        # A route, so that the dial gets as far as the nat hook (the namespace has only lo).
        self.ns.run(["ip", "route", "add", f"{STEERED_V4}/32", "dev", "lo", "src", "127.0.0.1"])
        self.addCleanup(self.ns.run, ["ip", "route", "del", f"{STEERED_V4}/32", "dev", "lo"],
                        check=False)
        self.ns.run(["nft", "-f", "-"], input_text=ruleset)
        self.addCleanup(self.ns.run, ["nft", "delete", "table", "ip", "acr_self_test"],
                        check=False)
        proxy = self.start_proxy("--sni", f"127.0.0.1:{port}", "--allow-cidr",
                                 f"{STEERED_V4}/32", "--port", str(port))
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(harness.client_hello(STEERED_NAME))
        loop = proxy.wait_for_log(lambda e: e.get("reason") == "proxy_loop")
        time.sleep(1.5)
        sock.close()
        before = len(proxy.access_log())
        time.sleep(1.5)
        log = proxy.access_log()
        # The client's line and the loop's. On loopback the handshake completes inside
        # connect(), so another worker may accept the looped copy before the dialler has
        # registered its endpoint; the check is repeated at its first bytes, which cannot come
        # earlier, so the copy is still refused (it was a second generation before that).
        self.assertEqual(len(log), 2, [(e["client"], e["reason"]) for e in log])
        self.assertEqual(len(log), before, "the log still grows: a loop")
        self.assertEqual(loop["decision"], "deny")


if __name__ == "__main__":
    unittest.main()
