"""Idle tunnels behind a NAT that forgets (THREATS 6.5 F11).

Three network namespaces (netns_fixtures.forwarding_gateway), documentation addresses only:

    proxy (eth0 198.51.100.2) -- (lan 198.51.100.1) nat (acr-wan 203.0.113.1) -- (eth0 203.0.113.2)
                                                                                   upstream

`nat` masquerades what leaves towards the upstream and forgets an established TCP connection after
NAT_TIMEOUT seconds without a packet (nf_conntrack_tcp_timeout_established), like Azure's load
balancer and NAT gateway after 4 idle minutes; it drops, silently, the packets of a connection it
no longer knows (nf_conntrack_tcp_loose=0 and `ct state invalid drop`). The client talks to the
proxy over loopback inside `proxy`; the upstream is an echo server.

Scaled to CI: the NAT forgets after 35 s (Azure: 240 s); the proxy's keepalive starts after 3 s
(default 120 s) and probes every 30 s (fixed), so, as with the defaults, a probe comes before the
NAT forgets. Two tunnels stay idle 40 s at once, one through a proxy with --keepalive-idle 3s, one
through a proxy with keepalives that would start only after an hour: the first still carries
bytes both ways, the second is black-holed (which shows the NAT really forgets). About 50 s.
"""

import os
import socket
import time
import unittest

import harness
from netns_fixtures import forwarding_gateway

PROXY = ("198.51.100.2", "2001:db8:1::2")
NAT_LAN = ("198.51.100.1", "2001:db8:1::1")
UPSTREAM = ("203.0.113.2", "2001:db8:2::2")
NAT_WAN = ("203.0.113.1", "2001:db8:2::1")
HOST = "idle.azurecr.io"
NAT_TIMEOUT = 35
IDLE = 40


class NatIdleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for network namespaces")
        cls.proxy_ns, cls.nat, cls.upstream_ns = forwarding_gateway(PROXY, NAT_LAN, UPSTREAM,
                                                                    NAT_WAN, "lan")
        for ns in (cls.proxy_ns, cls.nat, cls.upstream_ns):
            cls.addClassCleanup(ns.destroy)
        cls.nat.run(["sysctl", "-qw",
                     f"net.netfilter.nf_conntrack_tcp_timeout_established={NAT_TIMEOUT}"])
        cls.nat.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"])
        cls.nat.run(["nft", "-f", "-"], input_text=f"""
table ip acr_nat {{
  chain forward {{ type filter hook forward priority 0; policy accept;
    ct state invalid counter drop
  }}
  chain post {{ type nat hook postrouting priority 100; policy accept;
    oifname "acr-wan" masquerade
  }}
}}
""")
        with cls.upstream_ns.entered():
            cls.port = harness.free_port(UPSTREAM[0])
            cls.server = harness.RawServer(UPSTREAM[0], cls.port, handler=harness.echo_handler)
        cls.addClassCleanup(cls.server.stop)
        cls.proxy_ns.enter()
        cls.addClassCleanup(cls.proxy_ns.leave)
        cls.dns = harness.Dnsmasq({HOST: [UPSTREAM[0]]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

    def start_proxy(self, keepalive):
        listen = f"127.0.0.1:{harness.free_port()}"
        proxy = harness.Proxy(["--connect", listen, "--allow-host", HOST,
                               "--allow-cidr", "203.0.113.0/24", "--port", str(self.port),
                               "--dns-server", self.dns.address, "--allow-non-tls",
                               "--workers", "1", "--idle-timeout", "300s",
                               "--keepalive-idle", keepalive, "--drain-timeout", "1s"])
        proxy.start()
        self.addCleanup(proxy.stop)
        return listen

    def tunnel(self, listen):
        status, headers, body, sock = harness.connect_via_proxy(listen, f"{HOST}:{self.port}")
        self.addCleanup(sock.close)
        self.assertEqual(status, 200, (headers, body))
        return sock

    def echoes(self, sock, payload, timeout):
        sock.settimeout(timeout)
        sock.sendall(payload)
        try:
            return harness.recv_exact(sock, len(payload), timeout) == payload
        except (socket.timeout, ConnectionError):
            return False

    def nat_drops(self):
        text = self.nat.run(["nft", "list", "chain", "ip", "acr_nat", "forward"]).stdout
        return int(text.split("counter packets")[1].split()[0])

    def test_keepalive_outlives_a_nat_idle_timeout(self):
        """F11: both tunnels echo, then stay idle 40 s while the NAT forgets idle connections
        after 35 s. With --keepalive-idle 3s the tunnel still echoes (the probes kept the NAT's
        entry); with keepalives only after an hour the same tunnel is black-holed: no echo within
        5 s, and the NAT counted dropped packets."""
        kept = self.tunnel(self.start_proxy("3s"))
        lost = self.tunnel(self.start_proxy("3600s"))
        for sock in (kept, lost):
            self.assertTrue(self.echoes(sock, b"before", 10))
        drops = self.nat_drops()
        time.sleep(IDLE)
        self.assertTrue(self.echoes(kept, b"after 40 s idle", 10),
                        "the tunnel with keepalives did not survive the NAT's idle timeout")
        self.assertFalse(self.echoes(lost, b"after 40 s idle", 5),
                         "the NAT did not forget the tunnel without keepalives: no test")
        self.assertGreater(self.nat_drops(), drops)


if __name__ == "__main__":
    unittest.main()
