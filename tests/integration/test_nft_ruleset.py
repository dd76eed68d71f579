"""The shipped nftables ruleset (systemd/acr-egress.nft, installed as /etc/acr-egress/acr-egress.nft)
in front of the transparent listener.

Everything runs in a private network namespace (netns_fixtures.NetNs) holding only `lo` with the
documentation addresses 192.0.2.10 and 2001:db8::10, where a TLS upstream (harness.TlsServer)
listens on port 443. The test loads the shipped file as an operator would: its two `define`s
(port, mark) edited textually (nft 1.0.6 refuses `-D` for a name the file defines), and the uid
selector filled at run time with `nft add element`. curl runs as `nobody` (setpriv) to be
redirected, and as root to show that a uid outside the set is not.

NftGatewayTest covers the interface selector (chain prerouting) on a real forwarding path: a
client namespace routes through a gateway namespace (ip_forward on, the ruleset and the proxy
there) to an upstream namespace, all joined by veth pairs.
"""

import os
import re
import subprocess
import unittest

import harness
from netns_fixtures import NetNs, forwarding_gateway

ALLOWED_HOST = "myreg.azurecr.io"
DENIED_HOST = "other.azurecr.io"
UPSTREAM_V4 = "192.0.2.10"
UPSTREAM_V6 = "2001:db8::10"
MARK = 42
NOBODY_UID = 65534


def ruleset_path():
    source = os.environ.get("ACR_SOURCE_DIR",
                            os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    return os.path.join(source, "systemd", "acr-egress.nft")


def edited_ruleset(port, mark):
    """The shipped file with its defines set to `port` and `mark`; fails if either is missing."""
    with open(ruleset_path()) as f:
        text = f.read()
    text, n_port = re.subn(r"(?m)^define ACR_EGRESS_PORT = .*$",
                           f"define ACR_EGRESS_PORT = {port}", text)
    text, n_mark = re.subn(r"(?m)^define ACR_EGRESS_MARK = .*$",
                           f"define ACR_EGRESS_MARK = {mark:#010x}", text)
    if (n_port, n_mark) != (1, 1):
        raise AssertionError("acr-egress.nft must define ACR_EGRESS_PORT and ACR_EGRESS_MARK once")
    return text


def curl_argv(host, address, ca):
    """curl https://HOST/ with HOST pinned to ADDRESS (no DNS, no proxy from the environment)."""
    pinned = f"[{address}]" if ":" in address else address
    return ["curl", "-q", "--noproxy", "", "-sS", "--max-time", "10", "--cacert", ca,
            "--resolve", f"{host}:443:{pinned}", f"https://{host}/"]


class RedirectedTrafficCase(unittest.TestCase):
    """What both test classes share: a transparent proxy with the ruleset's port and mark, and
    its access log. Subclasses set LISTEN_HOSTS, ALLOW_CIDRS, cls.listen_port and cls.dns."""

    LISTEN_HOSTS = ()
    ALLOW_CIDRS = ()
    CLIENT_CIDRS = ()

    def start_proxy(self):
        args = ["--mark", str(MARK), "--registry", "myreg", "--dns-server", self.dns.address,
                "--workers", "1"]
        for host in self.LISTEN_HOSTS:
            args += ["--transparent", f"{host}:{self.listen_port}"]
        for cidr in self.ALLOW_CIDRS:
            args += ["--allow-cidr", cidr]
        for cidr in self.CLIENT_CIDRS:
            args += ["--client-cidr", cidr]
        proxy = harness.Proxy(args)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def transparent_lines(self, proxy):
        proxy.stop()
        return [line for line in proxy.access_log() if line.get("listener") == "transparent"]

    def only_transparent_line(self, proxy, **expected):
        """Stops the proxy; asserts it logged exactly one transparent line with the `expected`
        fields, and returns it."""
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        for key, value in expected.items():
            self.assertEqual(lines[0].get(key), value, lines[0])
        return lines[0]


class NftRulesetTest(RedirectedTrafficCase):
    LISTEN_HOSTS = ("127.0.0.1", "[::1]")
    ALLOW_CIDRS = ("192.0.2.0/24", "2001:db8::/32")

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for a network namespace and nftables")
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        root = cls.tmp.path
        # curl as nobody must read the CA: the folder is traversable, the CA readable.
        os.chmod(root, 0o711)
        cls.certs = harness.make_ca_and_cert(os.path.join(root, "pki"),
                                             [ALLOWED_HOST, DENIED_HOST],
                                             [UPSTREAM_V4, UPSTREAM_V6])
        os.chmod(os.path.dirname(cls.certs["ca"]), 0o711)
        os.chmod(cls.certs["ca"], 0o644)

        cls.ns = NetNs([UPSTREAM_V4, UPSTREAM_V6])
        cls.addClassCleanup(cls.ns.destroy)
        cls.ns.create()
        cls.ns.enter()
        cls.addClassCleanup(cls.ns.leave)

        cert, key = cls.certs["cert"], cls.certs["key"]
        cls.upstream = harness.TlsServer(UPSTREAM_V4, 443, cert, key, handler="http")
        cls.addClassCleanup(cls.upstream.stop)
        cls.upstream6 = harness.TlsServer(UPSTREAM_V6, 443, cert, key, handler="http")
        cls.addClassCleanup(cls.upstream6.stop)
        cls.dns = harness.Dnsmasq({ALLOWED_HOST: [UPSTREAM_V4, UPSTREAM_V6],
                                   DENIED_HOST: [UPSTREAM_V4]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

        # The file as shipped loads (all selectors empty), and loading the edited one over it
        # replaces the table: the file is idempotent.
        cls.nft(["-f", ruleset_path()])
        cls.listen_port = harness.free_port("127.0.0.1")
        cls.nft(["-f", "-"], edited_ruleset(cls.listen_port, MARK))

    @classmethod
    def nft(cls, args, input_text=None):
        return cls.ns.run(["nft"] + args, input_text=input_text)

    def set_uids(self, uids):
        """Makes `uids` the content of the redirect_uids set (flushed at test end)."""
        self.nft(["flush", "set", "inet", "acr_egress", "redirect_uids"])
        self.addCleanup(self.nft, ["flush", "set", "inet", "acr_egress", "redirect_uids"])
        if uids:
            elements = ", ".join(str(u) for u in uids)
            self.nft(["add", "element", "inet", "acr_egress", "redirect_uids",
                      "{ " + elements + " }"])

    def curl(self, host, address, as_nobody, cgroup_procs=None):
        """curl_argv() run as nobody (setpriv) or as root; started inside the cgroup whose
        cgroup.procs file is `cgroup_procs`, if given."""
        argv = curl_argv(host, address, self.certs["ca"])
        if as_nobody:
            argv = ["setpriv", f"--reuid={NOBODY_UID}", "--regid=65534", "--clear-groups"] + argv
        if cgroup_procs:
            argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup_procs] + argv
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env,
                              stdin=subprocess.DEVNULL)

    # A selected uid's connection to an allowed name is redirected, judged and relayed to its
    # original destination.
    def test_selected_uid_allowed_name_passes(self):
        self.set_uids([NOBODY_UID])
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl(ALLOWED_HOST, UPSTREAM_V4, as_nobody=True)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={ALLOWED_HOST}\n")
        self.only_transparent_line(proxy, decision="allow", original_dst=f"{UPSTREAM_V4}:443")
        self.assertEqual(self.upstream.accepted, accepted + 1)

    # The inet family redirects IPv6 as well.
    def test_selected_uid_ipv6_is_redirected(self):
        self.set_uids([NOBODY_UID])
        proxy = self.start_proxy()
        result = self.curl(ALLOWED_HOST, UPSTREAM_V6, as_nobody=True)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.only_transparent_line(proxy, decision="allow", original_dst=f"[{UPSTREAM_V6}]:443")

    # A selected uid's connection to a name the policy denies is reset, nothing is dialled.
    def test_selected_uid_denied_name_is_refused(self):
        self.set_uids([NOBODY_UID])
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl(DENIED_HOST, UPSTREAM_V4, as_nobody=True)
        self.assertEqual(result.returncode, 35, result.stderr)  # SSL connect error (reset)
        self.only_transparent_line(proxy, decision="deny", reason="host_not_allowed")
        self.assertEqual(self.upstream.accepted, accepted)

    # A uid outside the set goes straight to its destination: even a name the policy denies
    # connects, and the proxy sees nothing.
    def test_unselected_uid_is_not_redirected(self):
        self.set_uids([NOBODY_UID])
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl(DENIED_HOST, UPSTREAM_V4, as_nobody=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"sni={DENIED_HOST}\n")
        self.assertEqual(self.transparent_lines(proxy), [])
        self.assertEqual(self.upstream.accepted, accepted + 1)

    # With the proxy's own uid (root) selected too, its upstream connection carries the mark and
    # is not redirected back to itself: one request, one log line, one upstream connection.
    def test_marked_proxy_egress_is_not_redirected(self):
        self.set_uids([0, NOBODY_UID])
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl(ALLOWED_HOST, UPSTREAM_V4, as_nobody=False)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={ALLOWED_HOST}\n")
        self.only_transparent_line(proxy, decision="allow")
        self.assertEqual(self.upstream.accepted, accepted + 1)


    # The cgroup selector (the shipped commented rule, enabled with this test's cgroup): a
    # process in the cgroup is redirected, one outside it is not. nft resolves the path against
    # the cgroup2 mount under /sys/fs/cgroup, so it runs here without `ip netns exec` (which
    # mounts a fresh /sys); this thread is already inside the namespace.
    def test_cgroup_selector_redirects_only_that_cgroup(self):
        mount, relative = cgroup2_under_sys_fs_cgroup(self)
        name = f"acr-egress-test-{os.getpid()}"
        directory = os.path.join(mount, name)
        os.mkdir(directory)
        self.addCleanup(remove_cgroup, directory)
        text, count = re.subn(
            r'(?m)^\s*# (meta l4proto tcp tcp dport 443 socket cgroupv2) level 2 '
            r'"system.slice/docker.service"',
            f'\\1 level 1 "{os.path.join(relative, name)}"',
            edited_ruleset(self.listen_port, MARK))
        self.assertEqual(count, 1, "the shipped ruleset must carry the commented cgroup rule")
        subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True, timeout=30,
                       capture_output=True)
        self.addCleanup(subprocess.run, ["nft", "-f", "-"], text=True, check=True, timeout=30,
                        input=edited_ruleset(self.listen_port, MARK), capture_output=True)
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        procs = os.path.join(directory, "cgroup.procs")
        inside = self.curl(DENIED_HOST, UPSTREAM_V4, as_nobody=False, cgroup_procs=procs)
        self.assertEqual(inside.returncode, 35, inside.stderr)  # redirected, judged, reset
        allowed = self.curl(ALLOWED_HOST, UPSTREAM_V4, as_nobody=False, cgroup_procs=procs)
        self.assertEqual(allowed.returncode, 0, allowed.stderr + proxy.stderr_text())
        outside = self.curl(DENIED_HOST, UPSTREAM_V4, as_nobody=False)
        self.assertEqual(outside.returncode, 0, outside.stderr)  # not redirected
        lines = self.transparent_lines(proxy)
        self.assertEqual([(e["decision"], e.get("reason")) for e in lines],
                         [("deny", "host_not_allowed"), ("allow", "host_allowed")], lines)
        self.assertEqual(self.upstream.accepted, accepted + 2)


def cgroup2_under_sys_fs_cgroup(test):
    """(mount point, path relative to /sys/fs/cgroup) of the cgroup2 hierarchy: /sys/fs/cgroup
    itself on a unified host, /sys/fs/cgroup/unified on a hybrid one (this machine). A host with
    only cgroup v1 gets one mounted at /sys/fs/cgroup/unified for the test, as systemd's hybrid
    mode would, and unmounted at its end."""
    def find():
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if fields[2] == "cgroup2" and (fields[1] + "/").startswith("/sys/fs/cgroup/"):
                    return fields[1], os.path.relpath(fields[1], "/sys/fs/cgroup")
        return None

    found = find()
    if found is None:
        mountpoint = "/sys/fs/cgroup/unified"
        created = not os.path.isdir(mountpoint)
        if created:
            os.mkdir(mountpoint)  # /sys/fs/cgroup is a tmpfs on a v1 host
            test.addCleanup(os.rmdir, mountpoint)
        subprocess.run(["mount", "-t", "cgroup2", "cgroup2", mountpoint], check=True,
                       timeout=30, capture_output=True)
        test.addCleanup(subprocess.run, ["umount", mountpoint], check=True, timeout=30)
        found = find()
    if found is None:
        raise AssertionError("no cgroup2 hierarchy under /sys/fs/cgroup, and none could be mounted")
    return found


def remove_cgroup(directory):
    """Moves any process left in the cgroup to the root and removes it."""
    root = os.path.join(os.path.dirname(directory), "cgroup.procs")
    with open(os.path.join(directory, "cgroup.procs")) as f:
        pids = f.read().split()
    for pid in pids[:1000]:
        with open(root, "w") as f:
            f.write(pid)
    os.rmdir(directory)


# A gateway box: three namespaces joined by veth pairs, with only documentation addresses.
#   client  198.51.100.2, 2001:db8:c::2  --lan--  gateway (forwards)  --wan--  upstream
#                                                 198.51.100.1 / 203.0.113.1    203.0.113.10
#                                                 2001:db8:c::1 / 2001:db8:f::1 2001:db8:f::10
# The gateway loads the shipped ruleset with its LAN interface in redirect_ifaces and runs the
# proxy; the client's connections to the upstream are forwarded through it.
CLIENT_V4, GATEWAY_LAN_V4, GATEWAY_WAN_V4, WAN_V4 = ("198.51.100.2", "198.51.100.1",
                                                     "203.0.113.1", "203.0.113.10")
CLIENT_V6, GATEWAY_LAN_V6, GATEWAY_WAN_V6, WAN_V6 = ("2001:db8:c::2", "2001:db8:c::1",
                                                     "2001:db8:f::1", "2001:db8:f::10")
LAN_IF = "acr-lan"


class NftGatewayTest(RedirectedTrafficCase):
    """The prerouting (interface) selector of the shipped ruleset on a forwarding gateway."""

    # As the ruleset's header says: REDIRECT in prerouting sends a forwarded connection to the
    # address of the interface it came in on, so the proxy listens on the wildcard.
    LISTEN_HOSTS = ("0.0.0.0", "[::]")
    ALLOW_CIDRS = ("203.0.113.0/24", "2001:db8::/32")
    # A wildcard listener needs a client rule (secure default): the LAN's own ranges.
    CLIENT_CIDRS = ("198.51.100.0/24", "2001:db8:c::/64")

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for network namespaces and nftables")
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"),
                                             [ALLOWED_HOST, DENIED_HOST], [WAN_V4, WAN_V6])
        cls.client, cls.gateway, cls.wan = forwarding_gateway(
            (CLIENT_V4, CLIENT_V6), (GATEWAY_LAN_V4, GATEWAY_LAN_V6), (WAN_V4, WAN_V6),
            (GATEWAY_WAN_V4, GATEWAY_WAN_V6), LAN_IF)
        for ns in (cls.client, cls.gateway, cls.wan):
            cls.addClassCleanup(ns.destroy)

        with cls.wan.entered():  # the upstream's listening sockets belong to the WAN namespace
            cert, key = cls.certs["cert"], cls.certs["key"]
            cls.upstream = harness.TlsServer(WAN_V4, 443, cert, key, handler="http")
            cls.addClassCleanup(cls.upstream.stop)
            cls.upstream6 = harness.TlsServer(WAN_V6, 443, cert, key, handler="http")
            cls.addClassCleanup(cls.upstream6.stop)

        cls.gateway.enter()  # dnsmasq, the proxy and nft run on the gateway
        cls.addClassCleanup(cls.gateway.leave)
        cls.dns = harness.Dnsmasq({ALLOWED_HOST: [WAN_V4, WAN_V6], DENIED_HOST: [WAN_V4]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        cls.listen_port = harness.free_port("127.0.0.1")
        cls.gateway.run(["nft", "-f", "-"], input_text=edited_ruleset(cls.listen_port, MARK))

    def select_lan(self, selected):
        """Makes redirect_ifaces hold the LAN interface, or nothing (flushed at test end)."""
        command = ["nft", "flush", "set", "inet", "acr_egress", "redirect_ifaces"]
        self.gateway.run(command)
        self.addCleanup(self.gateway.run, command)
        if selected:
            self.gateway.run(["nft", "add", "element", "inet", "acr_egress", "redirect_ifaces",
                              f'{{ "{LAN_IF}" }}'])

    def curl_from_client(self, host, address):
        return self.client.run(curl_argv(host, address, self.certs["ca"]), timeout=30,
                               check=False)

    # A LAN client's forwarded connection to an allowed name is redirected, judged and relayed:
    # the upstream sees the gateway's WAN address (the proxy's own connection), not the client.
    def test_forwarded_allowed_name_is_proxied(self):
        self.select_lan(True)
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl_from_client(ALLOWED_HOST, WAN_V4)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={ALLOWED_HOST}\n")
        line = self.only_transparent_line(proxy, decision="allow", original_dst=f"{WAN_V4}:443")
        self.assertEqual(line["client"].rsplit(":", 1)[0], CLIENT_V4, line)
        self.assertEqual(self.upstream.accepted, accepted + 1)
        self.assertEqual(self.upstream.peers[-1], GATEWAY_WAN_V4)

    # The same over IPv6 (family inet).
    def test_forwarded_ipv6_is_proxied(self):
        self.select_lan(True)
        proxy = self.start_proxy()
        result = self.curl_from_client(ALLOWED_HOST, WAN_V6)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={ALLOWED_HOST}\n")
        self.only_transparent_line(proxy, decision="allow", original_dst=f"[{WAN_V6}]:443")
        self.assertEqual(self.upstream6.peers[-1], GATEWAY_WAN_V6)

    # A forwarded connection to a denied name is reset at the gateway; the upstream sees nothing.
    def test_forwarded_denied_name_is_refused(self):
        self.select_lan(True)
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl_from_client(DENIED_HOST, WAN_V4)
        self.assertEqual(result.returncode, 35, result.stderr)  # SSL connect error (reset)
        self.only_transparent_line(proxy, decision="deny", reason="host_not_allowed")
        self.assertEqual(self.upstream.accepted, accepted)

    # With the set empty the gateway just forwards: even a denied name connects, straight from
    # the client's address, and the proxy sees nothing.
    def test_unselected_interface_is_only_forwarded(self):
        self.select_lan(False)
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl_from_client(DENIED_HOST, WAN_V4)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"sni={DENIED_HOST}\n")
        self.assertEqual(self.transparent_lines(proxy), [])
        self.assertEqual(self.upstream.accepted, accepted + 1)
        self.assertEqual(self.upstream.peers[-1], CLIENT_V4)


if __name__ == "__main__":
    unittest.main()
