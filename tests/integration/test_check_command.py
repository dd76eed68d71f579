"""`acr-egress check` and `acr-egress --check-config` of the real binary on policies that the
outside review of issue 10 found wrong: deny ranges over IPv4-embedding IPv6 forms (defect 4) and
an explicitly empty host list (defect 5). No network: both commands only print decisions."""

import os
import subprocess
import unittest

import harness


def run(*args):
    env = dict(os.environ, ACR_EGRESS_CONFIG="")
    return subprocess.run([harness.binary_path(), *args], capture_output=True, text=True,
                          timeout=60, env=env)


class CheckCommandTest(unittest.TestCase):
    # Issue 10 defect 4 (THREATS B9): a --deny-cidr written over an IPv4-embedding IPv6 form
    # denies addresses written in that form even when --allow-cidr 0.0.0.0/0 admits the IPv4
    # address they embed: deny always wins, for every spelling.
    def test_deny_range_over_embedding_form_wins(self):
        # (range as given, target, embedded IPv4, the range as the sentence prints it)
        cases = [("64:ff9b::/96", "[64:ff9b::1414:101]", "20.20.1.1", "64:ff9b::/96"),
                 ("::ffff:0:0/96", "[::ffff:20.20.1.1]", "20.20.1.1", "::ffff:0.0.0.0/96"),
                 ("2002::/16", "[2002:1414:101::1]", "20.20.1.1", "2002::/16")]
        for deny, target, embedded, printed in cases:
            with self.subTest(deny=deny, target=target):
                result = run("check", "--allow-cidr", "0.0.0.0/0", "--deny-cidr", deny, target)
                self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
                self.assertTrue(result.stdout.startswith(f"deny {target} "), result.stdout)
                self.assertIn(f"(embedding {embedded}) is in denied range {printed}", result.stdout)
                self.assertTrue(result.stdout.rstrip().endswith("[address_denied]"),
                                result.stdout)
        # The IPv4 address itself, and another embedding form, stay allowed by 0.0.0.0/0.
        result = run("check", "--allow-cidr", "0.0.0.0/0", "--deny-cidr", "64:ff9b::/96",
                     "20.20.1.1", "[::ffff:20.20.1.1]")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    # Issue 10 defect 5: `allow_hosts = []` with `registries = []` allows no host name at all
    # (not the embedded default with *.blob.core.windows.net), and --check-config says so.
    def test_explicitly_empty_host_list_allows_no_name(self):
        with harness.TempDir() as tmp:
            path = os.path.join(tmp.path, "empty-hosts.toml")
            with open(path, "w") as f:
                f.write("[policy]\nallow_hosts = []\nregistries = []\n"
                        "allow_cidrs = [\"192.0.2.0/24\"]\n")
            result = run("check", "--config", path, "acct.blob.core.windows.net",
                         "myreg.azurecr.io")
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            lines = result.stdout.splitlines()
            self.assertEqual(len(lines), 2, result.stdout)
            for line in lines:
                self.assertTrue(line.startswith("deny "), line)
                self.assertTrue(line.endswith("[host_not_allowed]"), line)
            # Addresses in the allowed set still pass.
            self.assertEqual(run("check", "--config", path, "192.0.2.7").returncode, 0)

            summary = run("--check-config", "--config", path)
            self.assertEqual(summary.returncode, 0, summary.stdout + summary.stderr)
            self.assertIn(f"host patterns: 0 (the host list is explicitly empty at {path}:2:",
                          summary.stdout)
            self.assertIn("no host name is allowed", summary.stdout)
            self.assertNotIn("blob.core.windows.net", summary.stdout)

            # Without the keys the embedded default applies, and the summary lists it.
            absent = os.path.join(tmp.path, "no-hosts.toml")
            with open(absent, "w") as f:
                f.write("[policy]\nports = [443]\n")
            summary = run("--check-config", "--config", absent)
            self.assertEqual(summary.returncode, 0, summary.stdout + summary.stderr)
            self.assertIn("host *.blob.core.windows.net", summary.stdout)
            self.assertNotIn("explicitly empty", summary.stdout)


if __name__ == "__main__":
    unittest.main()
