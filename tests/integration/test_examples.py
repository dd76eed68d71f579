"""The shipped example configurations (conf/examples/*.toml) validate with --check-config and
mean what their comments say; a broken copy is refused with file, line and column (issue 4,
"Config file")."""

import glob
import os
import subprocess
import unittest

import harness

EXAMPLES = os.path.join(os.environ.get("ACR_SOURCE_DIR", ""), "conf", "examples")


def check_config(*args):
    env = dict(os.environ, ACR_EGRESS_CONFIG="")
    return subprocess.run([harness.binary_path(), "--check-config", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def check(*args):
    env = dict(os.environ, ACR_EGRESS_CONFIG="")
    return subprocess.run([harness.binary_path(), "check", *args], capture_output=True,
                          text=True, timeout=60, env=env)


class ExamplesTest(unittest.TestCase):
    def setUp(self):
        self.tags = os.path.join(harness.shared_dir(), "data", "ServiceTags_Public.json")
        self.examples = sorted(glob.glob(os.path.join(EXAMPLES, "*.toml")))

    def test_every_example_validates(self):
        self.assertGreaterEqual(len(self.examples), 4, EXAMPLES)
        for path in self.examples:
            with self.subTest(example=os.path.basename(path)):
                # Examples that name a service-tags file get the real one in its place.
                result = check_config("--config", path, "--service-tags", self.tags)
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
                self.assertIn("host patterns:", result.stdout)

    def test_examples_mean_what_they_say(self):
        sidecar = os.path.join(EXAMPLES, "iotedge-sidecar.toml")
        result = check("--config", sidecar, "contosoedge.azurecr.io",
                       "contosoedge.westeurope.data.azurecr.io")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        result = check("--config", sidecar, "acct.blob.core.windows.net")
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertTrue(result.stdout.startswith("deny acct.blob.core.windows.net"), result.stdout)

        private = os.path.join(EXAMPLES, "private-link.toml")
        result = check("--config", private, "contoso.eastus.data.azurecr.io", "10.40.2.7")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        result = check("--config", private, "10.20.30.40")
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("10.20.30.40", result.stdout)

        # groups.toml: the build subnet reaches buildreg and basereg, the device subnet only
        # devicereg in westeurope, anyone else nothing.
        groups = os.path.join(EXAMPLES, "groups.toml")
        build = ("buildreg.azurecr.io", "basereg.westeurope.data.azurecr.io")
        device = ("devicereg.westeurope.data.azurecr.io",)
        for client, allowed, denied, group in (
                ("10.20.1.2", build, device + ("devicereg.eastus.data.azurecr.io",), "build"),
                ("10.30.4.5", device, build + ("devicereg.eastus.data.azurecr.io",), "device")):
            result = check("--config", groups, "--client", client, *allowed)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn(f"is in group {group}", result.stdout)
            for name in denied:
                result = check("--config", groups, "--client", client, name)
                self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
                self.assertIn("[host_not_allowed]", result.stdout)
        result = check("--config", groups, "--client", "192.0.2.1", *build)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("[client_not_allowed]", result.stdout)

    def test_broken_copy_names_file_line_and_column(self):
        with harness.TempDir() as tmp:
            for path in self.examples:
                with open(path) as f:
                    text = f.read()
                broken = os.path.join(tmp.path, os.path.basename(path))
                with open(broken, "w") as f:
                    f.write(text + "\n[nonsense]\nports = [\"https\"]\n")
                with self.subTest(example=os.path.basename(path)):
                    result = check_config("--config", broken, "--service-tags", self.tags)
                    self.assertEqual(result.returncode, 2, result.stdout)
                    self.assertRegex(result.stderr, rf"{broken}:\d+:\d+")
                    self.assertIn("nonsense", result.stderr)


if __name__ == "__main__":
    unittest.main()
