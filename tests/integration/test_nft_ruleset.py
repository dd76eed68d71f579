"""The shipped nftables ruleset (systemd/acr-egress.nft, installed as /etc/acr-egress/acr-egress.nft)
in front of the transparent listener.

Everything runs in a private network namespace (netns_fixtures.NetNs) holding only `lo` with the
documentation addresses 192.0.2.10 and 2001:db8::10, where a TLS upstream (harness.TlsServer)
listens on port 443. The test loads the shipped file as an operator would: its two `define`s
(port, mark) edited textually (nft 1.0.6 refuses `-D` for a name the file defines), and the uid
selector filled at run time with `nft add element`. curl runs as `nobody` (setpriv) to be
redirected, and as root to show that a uid outside the set is not.
"""

import os
import re
import subprocess
import unittest

import harness
from netns_fixtures import NetNs

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


class NftRulesetTest(unittest.TestCase):
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

    def start_proxy(self):
        args = ["--transparent", f"127.0.0.1:{self.listen_port}",
                "--transparent", f"[::1]:{self.listen_port}",
                "--mark", str(MARK), "--registry", "myreg", "--dns-server", self.dns.address,
                "--allow-cidr", "192.0.2.0/24", "--allow-cidr", "2001:db8::/32",
                "--workers", "1"]
        proxy = harness.Proxy(args)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def curl(self, host, address, as_nobody):
        """curl https://HOST/ pinned to ADDRESS, as nobody (setpriv) or as root."""
        pinned = f"[{address}]" if ":" in address else address
        argv = ["curl", "-q", "--noproxy", "", "-sS", "--max-time", "10",
                "--cacert", self.certs["ca"], "--resolve", f"{host}:443:{pinned}",
                f"https://{host}/"]
        if as_nobody:
            argv = ["setpriv", f"--reuid={NOBODY_UID}", "--regid=65534", "--clear-groups"] + argv
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env,
                              stdin=subprocess.DEVNULL)

    def transparent_lines(self, proxy):
        proxy.stop()
        return [line for line in proxy.access_log() if line.get("listener") == "transparent"]

    # A selected uid's connection to an allowed name is redirected, judged and relayed to its
    # original destination.
    def test_selected_uid_allowed_name_passes(self):
        self.set_uids([NOBODY_UID])
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl(ALLOWED_HOST, UPSTREAM_V4, as_nobody=True)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={ALLOWED_HOST}\n")
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "allow", lines[0])
        self.assertEqual(lines[0]["original_dst"], f"{UPSTREAM_V4}:443", lines[0])
        self.assertEqual(self.upstream.accepted, accepted + 1)

    # The inet family redirects IPv6 as well.
    def test_selected_uid_ipv6_is_redirected(self):
        self.set_uids([NOBODY_UID])
        proxy = self.start_proxy()
        result = self.curl(ALLOWED_HOST, UPSTREAM_V6, as_nobody=True)
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "allow", lines[0])
        self.assertEqual(lines[0]["original_dst"], f"[{UPSTREAM_V6}]:443", lines[0])

    # A selected uid's connection to a name the policy denies is reset, nothing is dialled.
    def test_selected_uid_denied_name_is_refused(self):
        self.set_uids([NOBODY_UID])
        proxy = self.start_proxy()
        accepted = self.upstream.accepted
        result = self.curl(DENIED_HOST, UPSTREAM_V4, as_nobody=True)
        self.assertEqual(result.returncode, 35, result.stderr)  # SSL connect error (reset)
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "deny", lines[0])
        self.assertEqual(lines[0]["reason"], "host_not_allowed", lines[0])
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
        lines = self.transparent_lines(proxy)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["decision"], "allow", lines[0])
        self.assertEqual(self.upstream.accepted, accepted + 1)

    # The interface selector's set accepts names at run time (the prerouting path itself needs
    # forwarded traffic, which this single-namespace test does not create).
    def test_interface_set_accepts_elements(self):
        self.nft(["add", "element", "inet", "acr_egress", "redirect_ifaces", '{ "lo" }'])
        self.addCleanup(self.nft, ["flush", "set", "inet", "acr_egress", "redirect_ifaces"])
        listing = self.nft(["list", "set", "inet", "acr_egress", "redirect_ifaces"]).stdout
        self.assertIn('"lo"', listing)


if __name__ == "__main__":
    unittest.main()
