"""The .deb itself, read with dpkg-deb (nothing is installed): its layout does not depend on how
the build was configured, its control data names the dependencies and conffiles, and every
program a unit runs (each Exec*= line, including the absolute paths inside `/bin/sh -c '...'`)
is a file the package ships or one that a dependency, or an Essential package, provides.

ACR_DEB names the package (scripts/check-package builds it and runs this suite).
"""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

UNITS = ("acr-egress.service", "acr-egress.socket", "acr-egress-servicetags.service",
         "acr-egress-servicetags.timer")
UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system")
CONFFILES = ("/etc/acr-egress/acr-egress.toml", "/etc/acr-egress/acr-egress.nft",
             "/etc/default/acr-egress-servicetags")
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop",
             "ExecStopPost", "ExecCondition")
# An absolute program path anywhere in an Exec line (also inside a shell command).
PROGRAM = re.compile(r"(?<![\w/.-])(/(?:usr/)?(?:s?bin|libexec(?:/[\w.-]+)?)/[\w.+-]+)")


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def parse_depends(text):
    """Package names of a Depends field (alternatives included)."""
    names = set()
    for clause in text.split(","):
        for alternative in clause.split("|"):
            name = alternative.strip().split(" ")[0].split(":")[0]
            if name:
                names.add(name)
    return names


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.deb = os.environ.get("ACR_DEB")
        if not cls.deb:
            raise unittest.SkipTest("ACR_DEB is not set: scripts/check-package builds the "
                                    "package and runs this suite with it")
        cls.info = run("dpkg-deb", "--info", cls.deb)
        cls.fields = {}
        for key in ("Package", "Architecture", "Depends", "Recommends"):
            cls.fields[key] = run("dpkg-deb", "--field", cls.deb, key).strip()
        cls.contents = {}
        for line in run("dpkg-deb", "--contents", cls.deb).splitlines():
            mode, _, _, _, _, path = line.split(None, 5)
            path = path.split(" -> ")[0]
            cls.contents[path[1:].rstrip("/") or "/"] = mode
        cls.tmp = tempfile.mkdtemp(prefix="acr-package-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        run("dpkg-deb", "--extract", cls.deb, cls.tmp)
        run("dpkg-deb", "--control", cls.deb, os.path.join(cls.tmp, "DEBIAN"))

    def control(self, name):
        with open(os.path.join(self.tmp, "DEBIAN", name)) as f:
            return f.read()

    # The layout the units and the README name, whatever CMAKE_INSTALL_PREFIX the build used.
    def test_layout(self):
        expected = {
            "/usr/bin/acr-egress": "-rwxr-xr-x",
            "/usr/libexec/acr-egress/acr-egress-servicetags-refresh": "-rwxr-xr-x",
            "/usr/lib/sysusers.d/acr-egress.conf": "-rw-r--r--",
            "/usr/lib/tmpfiles.d/acr-egress.conf": "-rw-r--r--",
            "/usr/share/doc/acr-egress/README.md": "-rw-r--r--",
            "/usr/share/doc/acr-egress/docs/configuration.md": "-rw-r--r--",
            "/usr/share/doc/acr-egress/docs/troubleshooting.md": "-rw-r--r--",
            "/usr/share/doc/acr-egress/examples/systemd/transparent.conf": "-rw-r--r--",
        }
        for path in CONFFILES:
            expected[path] = "-rw-r--r--"
        for path, mode in expected.items():
            self.assertEqual(self.contents.get(path), mode, path)
        for unit in UNITS:
            self.assertTrue(any(f"{d}/{unit}" in self.contents for d in UNIT_DIRS), unit)
        for path in self.contents:
            self.assertFalse(path.startswith("/usr/local"), path)
            self.assertTrue(path == "/" or path.split("/")[1] in ("usr", "etc", "lib"), path)

    def test_control_fields_and_conffiles(self):
        self.assertEqual(self.fields["Package"], "acr-egress")
        self.assertEqual(self.fields["Architecture"], run("dpkg", "--print-architecture").strip())
        depends = parse_depends(self.fields["Depends"])
        for name in ("systemd", "libevent-core-2.1-7", "libc-ares2", "libsystemd0"):
            self.assertIn(name, depends, self.fields["Depends"])
        self.assertTrue([d for d in depends if d.startswith("android-libboringssl")], depends)
        self.assertFalse([d for d in depends if d.startswith(("libasan", "libubsan"))],
                         "a sanitizer build was packaged")
        self.assertEqual(sorted(self.control("conffiles").split()), sorted(CONFFILES))
        for script in ("postinst", "prerm", "postrm"):
            self.assertIn(script, self.info)

    # prerm stops and disables every unit, the socket included (a socket left listening after
    # removal has no service behind it).
    def test_prerm_stops_and_disables_socket(self):
        prerm = self.control("prerm")
        for verb in ("stop", "disable"):
            commands = " ".join(line.strip().rstrip("\\") for line in prerm.splitlines())
            match = re.search(rf"systemctl {verb} ([^>|;&]*)", commands)
            self.assertIsNotNone(match, f"prerm does not {verb} the units")
            self.assertIn("acr-egress.socket", match.group(1), f"prerm does not {verb} the socket")

    def unit_text(self, unit):
        for directory in UNIT_DIRS:
            path = os.path.join(self.tmp, directory[1:], unit)
            if os.path.exists(path):
                with open(path) as f:
                    return f.read()
        self.fail(f"{unit} is not in the package")

    def owner_package(self, path):
        """The installed package that ships PATH on this machine, or None."""
        for candidate in (path, re.sub(r"^/usr/", "/", path), "/usr" + path):
            result = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True,
                                    text=True)
            if result.returncode == 0:
                for line in result.stdout.splitlines():
                    if not line.startswith("diversion by"):
                        return line.split(":")[0].split(",")[0].strip()
        return None

    # Every program an Exec*= line names exists once the package and its dependencies are
    # installed: shipped by the package, or by a package in Depends, or by an Essential one.
    def test_every_exec_path_is_shipped_or_provided(self):
        depends = parse_depends(self.fields["Depends"])
        checked = []
        for unit in UNITS:
            for line in self.unit_text(unit).splitlines():
                key, _, value = line.partition("=")
                if key.strip() not in EXEC_KEYS:
                    continue
                command = value.strip().lstrip("@-:+!")
                self.assertTrue(command.startswith("/"), f"{unit}: {line}: not an absolute path")
                for program in PROGRAM.findall(command):
                    checked.append(program)
                    if program in self.contents:
                        self.assertTrue(self.contents[program].startswith("-rwx"), program)
                        continue
                    owner = self.owner_package(program)
                    self.assertIsNotNone(owner, f"{unit}: {program} is neither in the package "
                                                "nor in any installed package")
                    essential = run("dpkg-query", "-W", "-f=${Essential}", owner).strip()
                    self.assertTrue(owner in depends or essential == "yes",
                                    f"{unit}: {program} comes from {owner}, which is neither "
                                    f"in Depends ({self.fields['Depends']}) nor Essential")
        self.assertIn("/usr/bin/acr-egress", checked)
        self.assertIn("/usr/libexec/acr-egress/acr-egress-servicetags-refresh", checked)


if __name__ == "__main__":
    unittest.main()
