"""Client groups ([[group]], issue 11 section 1) against real clients.

One acr-egress, configured by a file, serves the class on a connect listener on 127.0.0.1 with two
groups: "build" (127.0.0.3/32) reaches buildreg.azurecr.io and basereg.azurecr.io, "device"
(127.0.0.4/31) only devicereg.westeurope.data.azurecr.io; there is no client_cidrs, so any other
client is refused. dnsmasq resolves the three names to a TLS server on 127.0.0.2. Clients pick
their source address among the loopback addresses (curl --interface), so one machine plays the
two subnets and an outsider. An sni listener on 127.0.0.8 shows that the SNI is judged by the
group's policy too.
"""

import json
import os
import signal
import socket
import subprocess
import unittest

import harness

BUILDREG, BASEREG = "buildreg.azurecr.io", "basereg.azurecr.io"
DEVICEREG = "devicereg.westeurope.data.azurecr.io"
TLS_IP, SNI_IP = "127.0.0.2", "127.0.0.8"
BUILD, DEVICE, DEVICE_TOO, OUTSIDER = "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
DROPPED = "127.0.0.7"  # in "build" until the reload, then in no group


def config_text(port, groups):
    return ("[policy]\n"
            "registries = []\n"                       # inherited: no name outside a group
            f'allow_cidrs = ["{TLS_IP}/32"]\n'         # inherited: the upstream's address
            f"ports = [{port}]\n"
            "revoke_on_reload = true\n" + groups)


GROUPS = ('[[group]]\nname = "build"\nclients = ["127.0.0.3/32", "127.0.0.7/32"]\n'
          'registries = ["buildreg", "basereg"]\n'
          '[[group]]\nname = "device"\nclients = ["127.0.0.4/31"]\n'
          'registries = ["devicereg"]\nregions = ["westeurope"]\n')
# The reload: 127.0.0.5 leaves "device" for a new group "lab", which reaches basereg only;
# 127.0.0.7 leaves "build" for no group at all.
GROUPS_RELOADED = ('[[group]]\nname = "build"\nclients = ["127.0.0.3/32"]\n'
                   'registries = ["buildreg", "basereg"]\n'
                   '[[group]]\nname = "device"\nclients = ["127.0.0.4/32"]\n'
                   'registries = ["devicereg"]\nregions = ["westeurope"]\n'
                   '[[group]]\nname = "lab"\nclients = ["127.0.0.5/32"]\n'
                   'registries = ["basereg"]\n')


class ClientGroupsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        names = [BUILDREG, BASEREG, DEVICEREG]
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"), names, [TLS_IP])
        cls.port = harness.common_free_port([TLS_IP, SNI_IP])
        cls.tls = harness.TlsServer(TLS_IP, cls.port, cls.certs["cert"], cls.certs["key"],
                                    handler="http")
        cls.addClassCleanup(cls.tls.stop)
        cls.dns = harness.Dnsmasq({name: [TLS_IP] for name in names})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        cls.config = os.path.join(cls.tmp.path, "acr-egress.toml")
        with open(cls.config, "w") as f:
            f.write(config_text(cls.port, GROUPS))
        cls.proxy_port = harness.free_port()
        cls.admin_port = harness.free_port()
        cls.proxy = harness.Proxy([
            "--config", cls.config, "--connect", f"127.0.0.1:{cls.proxy_port}",
            "--sni", f"{SNI_IP}:{cls.port}",
            "--dns-server", cls.dns.address, "--workers", "2",
            "--admin", f"127.0.0.1:{cls.admin_port}"])
        cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    def curl_from(self, source, name):
        """A real curl through the connect listener from `source` to `name`; returns (CONNECT
        status, curl's stderr)."""
        result = harness.curl("--interface", source, "-x", f"http://127.0.0.1:{self.proxy_port}",
                              "--cacert", self.certs["ca"], "-o", "/dev/null",
                              "-w", "%{http_connect}", f"https://{name}:{self.port}/v2/")
        return result.stdout, result.stderr

    def log_of(self, source, name, since):
        return self.proxy.wait_for_log(
            lambda e: e.get("client", "").startswith(source + ":") and e.get("target") == name,
            since=since)

    def relaying_tunnel(self, source, name):
        """A tunnel from `source` to `name` through the connect listener, relaying: the CONNECT
        answered 200 and a real ClientHello answered by the upstream's first TLS record."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.proxy_port))
        sock.sendall(f"CONNECT {name}:{self.port} HTTP/1.1\r\nHost: {name}:{self.port}\r\n\r\n"
                     .encode())
        head = b""
        for _ in range(64):
            if b"\r\n\r\n" in head:
                break
            head += sock.recv(1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        sock.sendall(harness.client_hello(name))
        self.assertEqual(sock.recv(1), b"\x16", "no TLS record from the upstream")
        return sock

    def admin(self, path):
        return harness.curl(f"http://127.0.0.1:{self.admin_port}{path}").stdout

    def metric(self, name):
        for line in self.admin("/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def group_count(self, group, decision):
        prefix = f'acr_egress_group_connections_total{{group="{group}",decision="{decision}"}} '
        for line in self.admin("/metrics").splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return None

    # Each group reaches its own registries and gets 403 host_not_allowed for the other group's;
    # every log line names the group; the group series count them.
    def test_each_group_reaches_its_own_registries_only(self):
        before = {g: (self.group_count(g, "allow") or 0, self.group_count(g, "deny") or 0)
                  for g in ("build", "device")}
        cases = ((BUILD, "build", BUILDREG, True), (BUILD, "build", BASEREG, True),
                 (BUILD, "build", DEVICEREG, False), (DEVICE, "device", DEVICEREG, True),
                 (DEVICE, "device", BUILDREG, False), (DEVICE_TOO, "device", DEVICEREG, True),
                 (DEVICE_TOO, "device", BASEREG, False))
        for source, group, name, allowed in cases:
            with self.subTest(source=source, name=name):
                mark = self.proxy.log_mark()
                status, err = self.curl_from(source, name)
                self.assertEqual(status, "200" if allowed else "403", err)
                entry = self.log_of(source, name, mark)
                self.assertEqual(entry["group"], group)
                self.assertEqual(entry["decision"], "allow" if allowed else "deny")
                self.assertEqual(entry["reason"], "host_allowed" if allowed else "host_not_allowed")
        self.assertEqual(self.group_count("build", "allow"), before["build"][0] + 2)
        self.assertEqual(self.group_count("build", "deny"), before["build"][1] + 1)
        self.assertEqual(self.group_count("device", "allow"), before["device"][0] + 2)
        self.assertEqual(self.group_count("device", "deny"), before["device"][1] + 2)

    # The sni listener judges the SNI by the client's group too: build's ClientHello for
    # buildreg reaches the upstream, its ClientHello for devicereg is refused (host_not_allowed).
    def test_sni_listener_uses_the_group_policy(self):
        for name, allowed in ((BUILDREG, True), (DEVICEREG, False)):
            with self.subTest(name=name):
                sock = socket.socket()
                self.addCleanup(sock.close)
                sock.bind((BUILD, 0))
                sock.settimeout(10)
                client = "%s:%d" % sock.getsockname()
                sock.connect((SNI_IP, self.port))
                sock.sendall(harness.client_hello(name))
                if allowed:
                    self.assertEqual(sock.recv(1), b"\x16", "no TLS record from the upstream")
                    sock.close()
                else:
                    self.assertIn(harness.recv_until_closed(sock, 5)[1], ("rst", "fin"))
                entry = self.proxy.wait_for_log(lambda e: e.get("client") == client)
                self.assertEqual((entry["listener"], entry["group"]), ("sni", "build"))
                self.assertEqual(entry["reason"], "host_allowed" if allowed else "host_not_allowed")

    # A client in no group (and no client_cidrs) is refused before any lookup, with
    # client_not_allowed, and its log line names no group.
    def test_client_in_no_group_is_refused(self):
        queries = len(self.dns.queries())
        mark = self.proxy.log_mark()
        status, err = self.curl_from(OUTSIDER, BASEREG)
        self.assertEqual(status, "403", err)
        entry = self.proxy.wait_for_log(
            lambda e: e.get("client", "").startswith(OUTSIDER + ":"), since=mark)
        self.assertEqual(entry["reason"], "client_not_allowed")
        self.assertNotIn("group", entry)
        self.assertEqual(entry["message"], f"denied: client {OUTSIDER} is in no client range "
                         "(--client-cidr or a [[group]])")
        self.assertEqual(len(self.dns.queries()), queries, "a refused client caused a lookup")

    # /policy lists the groups with their clients and their effective rules.
    def test_policy_endpoint_lists_groups(self):
        policy = json.loads(self.admin("/policy"))
        groups = {g["name"]: g for g in policy["groups"]}
        self.assertEqual(set(groups), {"build", "device"})
        self.assertEqual(groups["device"]["clients"], ["127.0.0.4/31"])
        patterns = {p["pattern"] for p in groups["device"]["policy"]["host_patterns"]}
        self.assertIn(DEVICEREG, patterns)
        self.assertNotIn(BASEREG, patterns)
        self.assertEqual(groups["build"]["policy"]["ports"], [self.port])  # inherited
        self.assertEqual(policy["host_patterns"], [])

    # check --client judges as that client's group would, naming the group.
    def test_check_command_names_the_group(self):
        result = subprocess.run(
            [harness.binary_path(), "check", "--config", self.config, "--client", DEVICE,
             f"{DEVICEREG}:{self.port}", f"{BASEREG}:{self.port}"],
            capture_output=True, text=True, timeout=30, env=dict(os.environ, ACR_EGRESS_CONFIG=""))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertTrue(lines[0].startswith(f"allow {DEVICEREG}:{self.port} "), lines)
        self.assertTrue(lines[1].startswith(f"deny {BASEREG}:{self.port} "), lines)
        for line in lines:
            self.assertIn(f"client {DEVICE} is in group device (client range 127.0.0.4/31)", line)

    # A SIGHUP that moves 127.0.0.5 from "device" to a new group "lab" applies to the next
    # connection; the new group gets its series and a kept group's counters continue. With
    # revoke_on_reload, 127.0.0.5's open tunnel to devicereg is judged by "lab" and closed
    # (revoked), while 127.0.0.4's, still in "device", carries on.
    def test_reload_moves_a_client_to_another_group(self):
        status, err = self.curl_from(DEVICE_TOO, DEVICEREG)
        self.assertEqual(status, "200", err)
        device_allowed = self.group_count("device", "allow")
        self.assertIsNone(self.group_count("lab", "allow"))
        moved = self.relaying_tunnel(DEVICE_TOO, DEVICEREG)
        moved_client = "%s:%d" % moved.getsockname()
        kept = self.relaying_tunnel(DEVICE, DEVICEREG)
        kept_client = "%s:%d" % kept.getsockname()
        # A connection still reading its head from a client the reload drops from every group.
        partial = socket.socket()
        self.addCleanup(partial.close)
        partial.bind((DROPPED, 0))
        partial.settimeout(10)
        partial.connect(("127.0.0.1", self.proxy_port))
        partial_client = "%s:%d" % partial.getsockname()
        partial.sendall(f"CONNECT {BUILDREG}:{self.port} HTTP/1.1\r\n".encode())
        # Accepted (judged as a "build" client) before the reload, not after it.
        harness.wait_until(lambda: self.metric("acr_egress_active_connections") >= 3, 5,
                           message="three open connections")

        def reload(groups, count):
            with open(self.config, "w") as f:
                f.write(config_text(self.port, groups))
            self.proxy.send_signal(signal.SIGHUP)
            harness.wait_until(
                lambda: self.proxy.stderr_text().count("reloaded the policy") >= count, 10,
                message="the reload")

        reloads = self.proxy.stderr_text().count("reloaded the policy")
        reload(GROUPS_RELOADED, reloads + 1)
        self.addCleanup(reload, GROUPS, reloads + 2)
        self.assertIn("groups added: lab", self.proxy.stderr_text())
        self.assertIn(harness.recv_until_closed(moved, 5)[1], ("rst", "fin"))
        entry = self.proxy.wait_for_log(lambda e: e.get("client") == moved_client)
        self.assertEqual(entry["reason"], "revoked")
        self.assertIn("revoked by a reload: denied: host " + DEVICEREG, entry["message"])
        data, _ = harness.recv_until_closed(partial, 5)
        self.assertTrue(data.startswith(b"HTTP/1.1 403 "), data)
        entry = self.proxy.wait_for_log(lambda e: e.get("client") == partial_client)
        self.assertEqual(entry["reason"], "revoked")
        self.assertIn(f"client {DROPPED} is in no client range", entry["message"])
        self.assertEqual(harness.recv_until_closed(kept, 1)[1], "timeout")  # still open
        kept.close()
        entry = self.proxy.wait_for_log(lambda e: e.get("client") == kept_client)
        self.assertEqual((entry["reason"], entry["group"]), ("host_allowed", "device"))
        device_allowed += 2  # the two tunnels, relayed
        mark = self.proxy.log_mark()
        status, err = self.curl_from(DEVICE_TOO, BASEREG)
        self.assertEqual(status, "200", err)
        self.assertEqual(self.log_of(DEVICE_TOO, BASEREG, mark)["group"], "lab")
        status, err = self.curl_from(DEVICE_TOO, DEVICEREG)
        self.assertEqual(status, "403", err)
        self.assertEqual(self.group_count("lab", "allow"), 1)
        self.assertEqual(self.group_count("lab", "deny"), 1)
        self.assertEqual(self.group_count("device", "allow"), device_allowed)
        status, err = self.curl_from(DEVICE, DEVICEREG)  # still in "device"
        self.assertEqual(status, "200", err)
        self.assertEqual(self.group_count("device", "allow"), device_allowed + 1)


if __name__ == "__main__":
    unittest.main()
