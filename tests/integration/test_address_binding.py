"""Address binding (docs/policy.md "Address binding", issue 11 §5) against real peers.

A real dnsmasq is the proxy's resolver and answers allowed names with loopback addresses; two TLS
upstreams listen on 127.0.0.2 (inside the binding) and 127.0.0.3 (outside it) on one port, and
the policy's --allow-cidr admits both, so that only the binding tells them apart. The bindings
come from a TOML file ([[policy.bind]] with allow_cidrs) and from --bind-host-tag with a tag of
the real service-tags file (used as data only: no traffic goes to its ranges). curl goes through
the connect listener; `acr-egress check HOST@ADDRESS` judges the same names without DNS.
"""

import os
import subprocess
import unittest

import harness
from netns_fixtures import NetNs

GOOD = "good.azurecr.io"          # -> 127.0.0.2, inside its binding
POISONED = "poisoned.azurecr.io"  # -> 127.0.0.3, outside the tag *.azurecr.io is bound to
UNBOUND = "files.example.org"     # -> 127.0.0.3, allowed and bound to nothing
INSIDE_IP, OUTSIDE_IP = "127.0.0.2", "127.0.0.3"


class AddressBindingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.isolated = harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"),
                                             [GOOD, POISONED, UNBOUND], [INSIDE_IP, OUTSIDE_IP])
        cls.port = harness.common_free_port([INSIDE_IP, OUTSIDE_IP])
        cls.inside = harness.TlsServer(INSIDE_IP, cls.port, cls.certs["cert"], cls.certs["key"],
                                       handler="http")
        cls.addClassCleanup(cls.inside.stop)
        cls.outside = harness.TlsServer(OUTSIDE_IP, cls.port, cls.certs["cert"],
                                        cls.certs["key"], handler="http")
        cls.addClassCleanup(cls.outside.stop)
        cls.dns = harness.Dnsmasq({GOOD: [INSIDE_IP], POISONED: [OUTSIDE_IP],
                                   UNBOUND: [OUTSIDE_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        cls.config = os.path.join(cls.tmp.path, "acr-egress.toml")
        with open(cls.config, "w") as f:
            f.write(f"""[policy]
allow_hosts = ["*.azurecr.io", "{UNBOUND}"]
ports = [{cls.port}]
allow_cidrs = ["{INSIDE_IP}/32", "{OUTSIDE_IP}/32"]
service_tags_file = "{os.path.join(harness.shared_dir(), "data", "ServiceTags_Public.json")}"

[[policy.bind]]
hosts = ["{GOOD}"]
allow_cidrs = ["{INSIDE_IP}/32"]
""")
        # Every other *.azurecr.io name may be dialled only inside the real tag's ranges.
        cls.policy_args = ["--config", cls.config,
                           "--bind-host-tag", "*.azurecr.io=AzureContainerRegistry"]
        cls.proxy_addr = f"127.0.0.1:{harness.free_port()}"
        cls.proxy = harness.Proxy(["--connect", cls.proxy_addr, "--dns-server", cls.dns.address,
                                   "--workers", "2"] + cls.policy_args)
        cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    def curl(self, host):
        return harness.curl("-v", "-p", "-x", f"http://{self.proxy_addr}", "--cacert",
                            self.certs["ca"], "--max-time", "20", f"https://{host}:{self.port}/")

    def check(self, *targets):
        return subprocess.run([harness.binary_path(), "check"] + self.policy_args + list(targets),
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "ACR_EGRESS_CONFIG": ""})

    # A name bound to the tag whose DNS answer lies outside it is refused before any dial,
    # although the address itself is in --allow-cidr: 403 address_not_bound, and the sentence
    # names the pattern, the address and the tag.
    def test_answer_outside_binding_is_refused(self):
        accepted = self.outside.accepted
        result = self.curl(POISONED)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("403 Forbidden (acr-egress: address_not_bound)", result.stderr)
        entry = self.proxy.wait_for_log(lambda e: e.get("target") == POISONED)
        self.assertEqual(entry["decision"], "deny", entry)
        self.assertEqual(entry["reason"], "address_not_bound", entry)
        self.assertEqual(entry["rule"], "*.azurecr.io", entry)
        self.assertIn(f"{OUTSIDE_IP} is outside the ranges bound to *.azurecr.io "
                      "(AzureContainerRegistry)", entry["message"])
        self.assertFalse(entry.get("dialled"), entry)
        self.assertEqual(self.outside.accepted, accepted)
        self.assertIn(POISONED, self.dns.queries())

    # A name whose answer lies inside its binding is tunnelled, TLS verified end to end.
    def test_answer_inside_binding_is_allowed(self):
        result = self.curl(GOOD)
        self.assertEqual(result.returncode, 0, result.stderr + self.proxy.stderr_text())
        self.assertIn(f"sni={GOOD}", result.stdout)
        entry = self.proxy.wait_for_log(lambda e: e.get("target") == GOOD and e.get("dialled"))
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertEqual(entry["dialled"], f"{INSIDE_IP}:{self.port}")

    # A name no binding matches keeps the normal address rules: the same address is allowed.
    def test_unbound_name_keeps_normal_rules(self):
        result = self.curl(UNBOUND)
        self.assertEqual(result.returncode, 0, result.stderr + self.proxy.stderr_text())
        entry = self.proxy.wait_for_log(lambda e: e.get("target") == UNBOUND and e.get("dialled"))
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertEqual(entry["dialled"], f"{OUTSIDE_IP}:{self.port}")

    # Report-only waives a binding like the other address-set rules: the tunnel opens, and the
    # line says decision allow, would_deny, address_not_bound.
    def test_report_only_waives_binding(self):
        proxy_addr = f"127.0.0.1:{harness.free_port()}"
        proxy = harness.Proxy(["--connect", proxy_addr, "--dns-server", self.dns.address,
                               "--workers", "1", "--report-only"] + self.policy_args)
        proxy.start()
        self.addCleanup(proxy.stop)
        result = harness.curl("-p", "-x", f"http://{proxy_addr}", "--cacert", self.certs["ca"],
                              "--max-time", "20", f"https://{POISONED}:{self.port}/")
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        entry = proxy.wait_for_log(lambda e: e.get("target") == POISONED and e.get("dialled"))
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertTrue(entry.get("would_deny"), entry)
        self.assertEqual(entry["reason"], "address_not_bound", entry)

    # `check HOST@ADDRESS` judges a name dialled at an address, both ways, with the same words.
    def test_check_host_at_address(self):
        result = self.check(f"{GOOD}:{self.port}@{INSIDE_IP}", f"{POISONED}:{self.port}@{OUTSIDE_IP}",
                            f"{GOOD}:{self.port}@{OUTSIDE_IP}")
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 3, result.stdout)
        self.assertTrue(lines[0].startswith(f"allow {GOOD}:{self.port}@{INSIDE_IP} "), lines[0])
        self.assertTrue(lines[1].startswith(f"deny {POISONED}:{self.port}@{OUTSIDE_IP} "), lines[1])
        self.assertTrue(lines[1].endswith("[address_not_bound]"), lines[1])
        self.assertIn("*.azurecr.io (AzureContainerRegistry)", lines[1])
        self.assertIn(f"bound to {GOOD} ({INSIDE_IP}/32)", lines[2])
        allowed = self.check(f"{GOOD}:{self.port}@{INSIDE_IP}")
        self.assertEqual(allowed.returncode, 0, allowed.stdout + allowed.stderr)


BOUND_V4 = "192.0.2.10"   # inside the binding of TRANSPARENT_HOST
ASTRAY_V4 = "192.0.2.20"  # allowed by --allow-cidr, outside the binding
TRANSPARENT_HOST = "myreg.azurecr.io"
MARK = 1


class TransparentAddressBindingTest(unittest.TestCase):
    """The transparent listener behind a real nftables REDIRECT in a private namespace holding
    documentation addresses: an original destination whose SNI is bound must lie inside the
    binding, although --allow-cidr admits both addresses."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"),
                                             [TRANSPARENT_HOST], [BOUND_V4, ASTRAY_V4])
        cls.ns = NetNs([BOUND_V4, ASTRAY_V4])
        cls.addClassCleanup(cls.ns.destroy)
        cls.ns.create()
        cls.ns.enter()
        cls.addClassCleanup(cls.ns.leave)
        cert, key = cls.certs["cert"], cls.certs["key"]
        cls.bound = harness.TlsServer(BOUND_V4, 443, cert, key, handler="http")
        cls.addClassCleanup(cls.bound.stop)
        cls.astray = harness.TlsServer(ASTRAY_V4, 443, cert, key, handler="http")
        cls.addClassCleanup(cls.astray.stop)
        cls.dns = harness.Dnsmasq({TRANSPARENT_HOST: [BOUND_V4, ASTRAY_V4]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        listen_port = harness.free_port("127.0.0.1")
        cls.firewall = cls.ns.redirect_443(listen_port, MARK)
        cls.proxy = harness.Proxy(["--transparent", f"127.0.0.1:{listen_port}",
                                   "--registry", "myreg", "--dns-server", cls.dns.address,
                                   "--mark", str(MARK), "--workers", "2",
                                   "--allow-cidr", "192.0.2.0/24",
                                   "--bind-host-tag", f"{TRANSPARENT_HOST}={BOUND_V4}/32"])
        cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    def curl_https(self, address):
        return harness.curl("--max-time", "10", "--cacert", self.certs["ca"], "--resolve",
                            f"{TRANSPARENT_HOST}:443:{address}", f"https://{TRANSPARENT_HOST}/",
                            timeout=20)

    # A client sent to an address outside the binding is reset, never relayed to it.
    def test_original_destination_outside_binding_is_refused(self):
        accepted = self.astray.accepted
        result = self.curl_https(ASTRAY_V4)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        entry = self.proxy.wait_for_log(lambda e: e.get("original_dst") == f"{ASTRAY_V4}:443")
        self.assertEqual(entry["listener"], "transparent", entry)
        self.assertEqual(entry["decision"], "deny", entry)
        self.assertEqual(entry["reason"], "address_not_bound", entry)
        self.assertIn(f"bound to {TRANSPARENT_HOST} ({BOUND_V4}/32)", entry["message"])
        self.assertEqual(self.astray.accepted, accepted)

    # The same name at its bound address is relayed, TLS verified end to end.
    def test_original_destination_inside_binding_is_relayed(self):
        result = self.curl_https(BOUND_V4)
        self.assertEqual(result.returncode, 0, result.stderr + self.proxy.stderr_text())
        self.assertEqual(result.stdout, f"sni={TRANSPARENT_HOST}\n")
        entry = self.proxy.wait_for_log(lambda e: e.get("original_dst") == f"{BOUND_V4}:443"
                                        and e.get("decision") == "allow")
        self.assertEqual(entry["dialled"], f"{BOUND_V4}:443", entry)


if __name__ == "__main__":
    unittest.main()
