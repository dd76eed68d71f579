"""Report-only (--report-only, issue 11 section 2) against real clients.

acr-egress runs in report-only mode with a connect listener and the admin endpoint. Names and
addresses the host rules deny are let through and logged with "would_deny": true, while what
report-only must never open stays refused: the metadata address (by name and as a literal), a
--deny-cidr range and loopback. Runs in a private network namespace, so a regression that dialled
169.254.169.254 could not leave the machine.
"""

import json
import os
import subprocess
import unittest

import harness

ALLOWED = "myreg.azurecr.io"        # allowed by the host rules, -> 127.0.0.2
UNLISTED = "unlisted.example"       # denied by the host rules, -> 127.0.0.2 (allowed range)
METADATA = "metadata.example"       # denied by the host rules, -> 169.254.169.254
DATA = "myreg.westeurope.data.azurecr.io"  # allowed by the host rules, -> 127.0.0.2
DENIED = "denied.example"           # denied by the host rules, -> 127.0.0.3 (--deny-cidr)
TLS_IP, DENIED_IP = "127.0.0.2", "127.0.0.3"


class ReportOnlyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = harness.make_ca_and_cert(os.path.join(cls.tmp.path, "pki"),
                                             [ALLOWED, UNLISTED], [TLS_IP])
        cls.port = harness.common_free_port([TLS_IP, DENIED_IP])
        cls.tls = harness.TlsServer(TLS_IP, cls.port, cls.certs["cert"], cls.certs["key"],
                                    handler="http")
        cls.addClassCleanup(cls.tls.stop)
        cls.dns = harness.Dnsmasq({ALLOWED: [TLS_IP], UNLISTED: [TLS_IP], DATA: [TLS_IP],
                                   METADATA: ["169.254.169.254"], DENIED: [DENIED_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        cls.proxy_port = harness.free_port()
        cls.admin_port = harness.free_port()
        cls.args = ["--registry", "myreg", "--allow-cidr", "127.0.0.2/31",
                    "--deny-cidr", f"{DENIED_IP}/32", "--port", str(cls.port), "--report-only"]
        cls.proxy = harness.Proxy(["--connect", f"127.0.0.1:{cls.proxy_port}",
                                   "--dns-server", cls.dns.address, "--workers", "2",
                                   "--admin", f"127.0.0.1:{cls.admin_port}"] + cls.args)
        cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    def curl(self, target):
        """A real curl through the proxy to https://target:port/; (CONNECT status, stderr)."""
        result = harness.curl("-x", f"http://127.0.0.1:{self.proxy_port}", "--cacert",
                              self.certs["ca"], "-w", "%{http_connect}", "-o", "/dev/null",
                              f"https://{target}:{self.port}/v2/")
        return result.stdout, result.stderr

    def log_for(self, target):
        return self.proxy.wait_for_log(lambda e: e.get("target") == target)

    # A name the host rules deny goes through; the line says allow, would_deny and the reason it
    # would have had; /metrics counts it under decision="would_deny".
    def test_denied_name_goes_through_marked_would_deny(self):
        status, err = self.curl(UNLISTED)
        self.assertEqual(status, "200", err)
        entry = self.log_for(UNLISTED)
        self.assertEqual(entry["decision"], "allow")
        self.assertIs(entry["would_deny"], True)
        self.assertEqual(entry["reason"], "host_not_allowed")
        self.assertTrue(entry["message"].startswith("report-only, would be denied: host"),
                        entry["message"])
        self.assertGreater(entry["bytes_down"], 0)
        metrics = harness.curl(f"http://127.0.0.1:{self.admin_port}/metrics").stdout
        self.assertIn('acr_egress_connections_total{listener="connect",decision="would_deny",'
                      'reason="host_not_allowed"} ', metrics)

    # An allowed name is logged as before, without would_deny.
    def test_allowed_name_is_not_marked(self):
        status, err = self.curl(ALLOWED)
        self.assertEqual(status, "200", err)
        entry = self.log_for(ALLOWED)
        self.assertEqual(entry["reason"], "host_allowed")
        self.assertNotIn("would_deny", entry)

    # Report-only never opens an SSRF path: the metadata address, by name or literal, loopback
    # and a --deny-cidr range stay refused with 403, and nothing is dialled.
    def test_special_and_denied_addresses_stay_refused(self):
        for target, reason in ((METADATA, "address_special"),
                               ("169.254.169.254", "address_special"),
                               ("127.0.0.1", "address_special"),
                               (DENIED, "address_denied")):
            status, err = self.curl(target)
            self.assertEqual(status, "403", (target, err))
            entry = self.proxy.wait_for_log(
                lambda e: e.get("target") == target and e.get("reason") == reason)
            self.assertEqual(entry["decision"], "deny")
            self.assertNotIn("would_deny", entry)
            self.assertNotIn("dialled", entry)

    # Everyone is told that enforcement is off: /readyz, /policy, the startup log and
    # --check-config.
    def test_says_loudly_that_enforcement_is_off(self):
        ready = harness.curl(f"http://127.0.0.1:{self.admin_port}/readyz").stdout
        self.assertIn("REPORT-ONLY: enforcement is OFF", ready)
        policy = json.loads(harness.curl(f"http://127.0.0.1:{self.admin_port}/policy").stdout)
        self.assertIs(policy["report_only"], True)
        self.assertIn("REPORT-ONLY: enforcement is OFF", self.proxy.stderr_text())
        result = subprocess.run([harness.binary_path(), "--check-config"] + self.args,
                                capture_output=True, text=True, timeout=30,
                                env=dict(os.environ, ACR_EGRESS_CONFIG=""))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("REPORT-ONLY: enforcement is OFF", result.stdout)


    # suggest on a recorded log (this report-only proxy's, allowed, would-deny and refused lines
    # alike) writes a policy under which check allows exactly the logged targets: each one passes,
    # and neighbours that were not logged (another registry, region, name or port) do not.
    def test_suggest_allows_exactly_the_logged_targets(self):
        targets = [ALLOWED, DATA, UNLISTED, METADATA, "127.0.0.2"]
        with harness.Proxy(["--connect", f"127.0.0.1:{harness.free_port()}",
                            "--dns-server", self.dns.address, "--workers", "1"] +
                           self.args) as proxy:
            port = proxy.listen_address()[1]
            for target in targets:
                harness.curl("-x", f"http://127.0.0.1:{port}", "-k", "-o", "/dev/null",
                             f"https://{target}:{self.port}/v2/")
            proxy.wait_for_log_count(len(targets))
            lines = proxy.stdout_lines()
        self.assertTrue(any('"would_deny":true' in line for line in lines), lines)
        tmp = harness.TempDir()
        self.addCleanup(tmp.cleanup)
        log = os.path.join(tmp.path, "access.log")
        with open(log, "w") as f:
            f.write("\n".join(lines) + "\n")
        env = dict(os.environ, ACR_EGRESS_CONFIG="")
        suggested = subprocess.run([harness.binary_path(), "suggest", log], capture_output=True,
                                   text=True, timeout=30, env=env)
        self.assertEqual(suggested.returncode, 0, suggested.stderr)
        self.assertIn('registries = [\n  "myreg",  # 2 connections\n]', suggested.stdout)
        self.assertIn('"unlisted.example",  # 1 connection', suggested.stdout)
        self.assertNotIn("metadata", suggested.stdout)
        self.assertNotIn("*", suggested.stdout)
        config = os.path.join(tmp.path, "suggested.toml")
        with open(config, "w") as f:
            f.write(suggested.stdout)

        def check(target):
            return subprocess.run([harness.binary_path(), "check", "--config", config, target],
                                  capture_output=True, text=True, timeout=30, env=env)
        logged = [ALLOWED, DATA, UNLISTED, "127.0.0.2"]
        for target in logged:
            result = check(f"{target}:{self.port}")
            self.assertEqual(result.returncode, 0, (target, result.stdout, result.stderr))
        for target in ["other.azurecr.io", "myreg.eastus.data.azurecr.io", "other.example",
                       METADATA, "127.0.0.3", f"{ALLOWED}:443"]:
            if ":" not in target:
                target = f"{target}:{self.port}"
            result = check(target)
            self.assertEqual(result.returncode, 1, (target, result.stdout, result.stderr))

if __name__ == "__main__":
    unittest.main()
