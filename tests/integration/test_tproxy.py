"""The transparent listener behind TPROXY on a forwarding gateway, with and without CAP_NET_ADMIN.

Three namespaces joined by veth pairs, only documentation addresses:
  client  198.51.100.2, 2001:db8:c::2  --lan--  gateway (forwards, runs the proxy)  --wan--
          upstream 203.0.113.10, 2001:db8:f::10 (a TLS server on 443)
The gateway's mangle PREROUTING sends the client's port-443 TCP to the proxy with
`-j TPROXY --on-port P --tproxy-mark 0x1/0x1`, and `ip rule add fwmark 1 lookup 100` plus
`ip route add local 0.0.0.0/0 dev lo table 100` (and the IPv6 equivalents) deliver it locally.
TPROXY hands such a connection only to a socket with IP_TRANSPARENT, which needs CAP_NET_ADMIN:
the proxy runs as nobody, once with CAP_NET_ADMIN as an ambient capability (setpriv), once
without any capability.
"""

import json
import os
import shutil
import subprocess
import unittest

import harness
from netns_fixtures import forwarding_gateway

HOST = "myreg.azurecr.io"
CLIENT_V4, GATEWAY_LAN_V4, GATEWAY_WAN_V4, WAN_V4 = ("198.51.100.2", "198.51.100.1",
                                                     "203.0.113.1", "203.0.113.10")
CLIENT_V6, GATEWAY_LAN_V6, GATEWAY_WAN_V6, WAN_V6 = ("2001:db8:c::2", "2001:db8:c::1",
                                                     "2001:db8:f::1", "2001:db8:f::10")
LAN_IF = "acr-lan"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
WITH_NET_ADMIN = NOBODY + ["--inh-caps=+net_admin", "--ambient-caps=+net_admin"]


class TproxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            raise unittest.SkipTest("needs root (namespaces, iptables) and setpriv")
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        os.chmod(cls.tmp.path, 0o755)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"), [HOST],
                                             [WAN_V4, WAN_V6])
        cls.client, cls.gateway, cls.wan = forwarding_gateway(
            (CLIENT_V4, CLIENT_V6), (GATEWAY_LAN_V4, GATEWAY_LAN_V6), (WAN_V4, WAN_V6),
            (GATEWAY_WAN_V4, GATEWAY_WAN_V6), LAN_IF)
        for ns in (cls.client, cls.gateway, cls.wan):
            cls.addClassCleanup(ns.destroy)

        with cls.wan.entered():
            cls.upstream = harness.TlsServer(WAN_V4, 443, cls.certs["cert"], cls.certs["key"],
                                             handler="http")
            cls.upstream6 = harness.TlsServer(WAN_V6, 443, cls.certs["cert"], cls.certs["key"],
                                              handler="http")
        cls.addClassCleanup(cls.upstream.stop)
        cls.addClassCleanup(cls.upstream6.stop)

        cls.gateway.enter()
        cls.addClassCleanup(cls.gateway.leave)
        cls.listen_port = harness.free_port("127.0.0.1")
        for tool, ip, table_route in (("iptables", ["ip"], "0.0.0.0/0"),
                                      ("ip6tables", ["ip", "-6"], "::/0")):
            cls.gateway.run([tool, "-t", "mangle", "-A", "PREROUTING", "-i", LAN_IF, "-p", "tcp",
                             "--dport", "443", "-j", "TPROXY", "--on-port",
                             str(cls.listen_port), "--tproxy-mark", "0x1/0x1"])
            cls.gateway.run(ip + ["rule", "add", "fwmark", "1", "lookup", "100"])
            cls.gateway.run(ip + ["route", "add", "local", table_route, "dev", "lo", "table",
                                  "100"])

    def proxy_args(self):
        return ["--transparent", f"0.0.0.0:{self.listen_port}",
                "--transparent", f"[::]:{self.listen_port}",
                "--client-cidr", f"{CLIENT_V4}/32", "--client-cidr", f"{CLIENT_V6}/128",
                "--registry", "myreg", "--allow-cidr", "203.0.113.0/24",
                "--allow-cidr", "2001:db8::/32", "--dns-server", "127.0.0.1:53",
                "--workers", "1"]

    def start_proxy(self, wrapper, extra=()):
        self.admin_port = harness.free_port("127.0.0.1")
        proxy = harness.Proxy(self.proxy_args() + ["--admin", f"127.0.0.1:{self.admin_port}"]
                              + list(extra), wrapper=wrapper)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def client_curl(self, address, bracket=False, max_time=10):
        pinned = f"[{address}]" if bracket else address
        return self.client.run(["curl", "-q", "--noproxy", "*", "-sS", "--max-time",
                                str(max_time), "--cacert", self.certs["ca"],
                                "--resolve", f"{HOST}:443:{pinned}", f"https://{HOST}/"],
                               timeout=max_time + 10, check=False)

    def policy(self):
        result = subprocess.run(["curl", "-q", "--noproxy", "*", "-sS", "--max-time", "5",
                                 f"http://127.0.0.1:{self.admin_port}/policy"],
                                capture_output=True, text=True, timeout=15)
        return json.loads(result.stdout)

    # With CAP_NET_ADMIN as an ambient capability (as nobody), TPROXY delivers the client's
    # forwarded IPv4 and IPv6 connections: both reach their original destination through the
    # proxy, and no warning is given.
    def test_ambient_net_admin_accepts_tproxy_traffic(self):
        proxy = self.start_proxy(WITH_NET_ADMIN, ["--mark", "2"])
        for address, bracket in ((WAN_V4, False), (WAN_V6, True)):
            result = self.client_curl(address, bracket)
            self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
            self.assertEqual(result.stdout, f"sni={HOST}\n")
        self.assertNotIn("IP_TRANSPARENT", proxy.stderr_text())
        self.assertEqual(self.policy()["listener_warnings"], [])
        proxy.stop()
        lines = [e for e in proxy.access_log() if e.get("listener") == "transparent"]
        self.assertEqual(sorted(e["original_dst"] for e in lines),
                         sorted([f"{WAN_V4}:443", f"[{WAN_V6}]:443"]), lines)
        for entry in lines:
            self.assertEqual(entry["decision"], "allow", entry)
            self.assertEqual(entry["attempts"], [f"{entry['original_dst']} connected"], entry)

    # Without CAP_NET_ADMIN the listener starts, but the startup log warns, naming the listener,
    # the capability and the consequence, and /policy shows the same; the client's TPROXY
    # connection indeed goes nowhere.
    def test_without_net_admin_warns_and_tproxy_is_dropped(self):
        proxy = self.start_proxy(NOBODY)
        # The warnings follow the "listening:" line start_proxy waited for.
        log = harness.wait_until(
            lambda: (proxy.stderr_text()
                     if proxy.stderr_text().count("cannot set IP_TRANSPARENT") >= 2 else None),
            message="both listeners' IP_TRANSPARENT warnings")
        for listener in (f"0.0.0.0:{self.listen_port}", f"[::]:{self.listen_port}"):
            self.assertIn(f"transparent listener {listener} cannot set IP_TRANSPARENT", log)
        self.assertIn("CAP_NET_ADMIN", log)
        self.assertIn("TPROXY traffic to it is dropped; REDIRECT still works", log)
        warnings = self.policy()["listener_warnings"]
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("CAP_NET_ADMIN", warnings[0])
        result = self.client_curl(WAN_V4, max_time=3)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        proxy.stop()
        self.assertEqual([e for e in proxy.access_log() if e.get("listener") == "transparent"],
                         [])

    # --check-config says the same, without capability; with root's capabilities it does not.
    def test_check_config_warns_without_net_admin(self):
        command = [harness.binary_path(), "--check-config"] + self.proxy_args()
        env = dict(os.environ, ACR_EGRESS_CONFIG="",
                   ASAN_OPTIONS="detect_leaks=0:abort_on_error=0")
        without = subprocess.run(NOBODY + command, capture_output=True, text=True, timeout=30,
                                 env=env)
        self.assertEqual(without.returncode, 0, without.stderr)
        self.assertIn(f"warning: transparent listener 0.0.0.0:{self.listen_port} cannot set "
                      "IP_TRANSPARENT: the process lacks CAP_NET_ADMIN", without.stdout)
        self.assertIn(f"[::]:{self.listen_port}", without.stdout)
        with_caps = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
        self.assertEqual(with_caps.returncode, 0, with_caps.stderr)
        self.assertNotIn("IP_TRANSPARENT", with_caps.stdout)


if __name__ == "__main__":
    unittest.main()
