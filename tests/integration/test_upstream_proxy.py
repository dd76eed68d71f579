"""acr-egress chained to an upstream proxy (docs/listeners.md "Upstream proxy", issue 11 §3).

Real peers only: Debian's Squid 5, started here with its own configuration in a temporary
folder, requiring Basic auth (basic_ncsa_auth over an htpasswd file made with `openssl passwd
-apr1`) and resolving the registry's name from its own hosts_file; Debian's docker-registry with
TLS holding an OCI image built from random bytes; skopeo pulling through acr-egress with
HTTPS_PROXY. acr-egress judges every target itself, then asks Squid for the tunnel with
`CONNECT name:port`: it never resolves the name (its own DNS server, a dnsmasq that knows
nothing, must see no query) and a denied name never reaches Squid.
"""

import base64
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import shutil
import unittest

import harness
from registry_fixtures import (OciImage, Registry, Skopeo, _die_with_parent, cert_dir_with_ca,
                               dir_blob_digests, wait_for_tcp)

SQUID_BINARY = "/usr/sbin/squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
LOGIN_HOST = "myreg.azurecr.io"
OTHER_HOST = "other.azurecr.io"
REGISTRY_IP = "127.0.0.2"
REPOSITORY = "library/test"
TAG = "1"
USER = "alice"
PASSWORD = "c0rp-Pa55word-9f3a"


class Squid:
    """Squid on 127.0.0.1:port (-N, foreground) with Basic auth for `user`:`password`, names
    resolved from its own hosts file (`hosts` {name: address}), no cache, its access log in
    `access_lines()`. Squid refuses to run as root and switches to the `proxy` user, so its
    folder (made here, outside the caller's private temporary folder) belongs to that user.
    stop() ends it by its pid and removes the folder."""

    def __init__(self, hosts, user, password):
        self.directory = tempfile.mkdtemp(prefix="acr-it-squid-")
        os.chmod(self.directory, 0o755)
        self.port = harness.free_port("127.0.0.1")
        self.address = f"127.0.0.1:{self.port}"
        self.access_log = os.path.join(self.directory, "access.log")
        hashed = subprocess.run(["openssl", "passwd", "-apr1", password], capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        self._write("htpasswd", f"{user}:{hashed}\n")
        self._write("hosts", "".join(f"{address} {name}\n" for name, address in hosts.items()))
        d = self.directory
        self.config = self._write("squid.conf", "\n".join([
            f"http_port 127.0.0.1:{self.port}",
            f"pid_filename {d}/squid.pid",
            f"cache_log {d}/cache.log",
            f"access_log stdio:{self.access_log} squid",
            "cache_store_log none",
            "cache deny all",
            f"coredump_dir {d}",
            "netdb_filename none",
            "pinger_enable off",
            f"hosts_file {d}/hosts",
            # Names not in the hosts file go nowhere: no DNS server answers on this port.
            "dns_nameservers 127.0.0.1",
            f"auth_param basic program {NCSA_AUTH} {d}/htpasswd",
            "auth_param basic realm acr-egress-test",
            "acl authed proxy_auth REQUIRED",
            "http_access deny !authed",
            "http_access allow authed",
            "shutdown_lifetime 0 seconds",
            "",
        ]))
        proxy_user = pwd.getpwnam("proxy")
        for name in os.listdir(d) + [""]:
            os.chown(os.path.join(d, name), proxy_user.pw_uid, proxy_user.pw_gid)
        self.proc = None

    def _write(self, name, text):
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self):
        self._out = open(os.path.join(self.directory, "stdout"), "wb")
        self.proc = subprocess.Popen([SQUID_BINARY, "-N", "-f", self.config],
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        wait_for_tcp("127.0.0.1", self.port, timeout=30, proc=self.proc)
        return self

    def access_lines(self):
        """Squid's access log, one list of fields per line (field 6 is the method, 7 the URL,
        8 the user)."""
        if not os.path.exists(self.access_log):
            return []
        with open(self.access_log) as f:
            return [line.split() for line in f if line.strip()]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self._out.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def connect_through(proxy_port, target):
    """A raw CONNECT to acr-egress; returns the answer's head (bounded: 5 s, 64 KiB)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")


class UpstreamProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        root = cls.tmp.path
        cls.certs = harness.make_ca_and_cert(os.path.join(root, "pki"), [LOGIN_HOST],
                                             [REGISTRY_IP])
        cls.cert_dir = cert_dir_with_ca(os.path.join(root, "ca-dir"), cls.certs["ca"])
        cls.port = harness.free_port(REGISTRY_IP)
        cls.registry = Registry(os.path.join(root, "registry"), REGISTRY_IP, cls.port,
                                cls.certs["cert"], cls.certs["key"])
        cls.registry.start()
        cls.addClassCleanup(cls.registry.stop)
        cls.image = OciImage(os.path.join(root, "oci"), tag="test").build()
        cls.skopeo = Skopeo(os.path.join(root, "skopeo"))
        cls.skopeo.push_oci(cls.image.directory, "test",
                            f"{cls.registry.hostport}/{REPOSITORY}:{TAG}", cls.cert_dir)
        # Squid knows both names: if acr-egress let OTHER_HOST through, Squid would open it.
        cls.squid = Squid({LOGIN_HOST: REGISTRY_IP, OTHER_HOST: REGISTRY_IP}, USER, PASSWORD)
        cls.addClassCleanup(cls.squid.stop)
        cls.squid.start()

    def credentials_file(self, name, text, mode=0o600):
        path = os.path.join(self.tmp.path, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def start_proxy(self, password, extra=(), records=None, upstream=None):
        """dnsmasq knowing only `records` (default: no name at all), and acr-egress allowing
        registry myreg on the test's port through Squid (`upstream`, default its address) with
        `password`."""
        dns = harness.Dnsmasq(records or {})
        dns.__enter__()
        self.addCleanup(dns.__exit__, None, None, None)
        self.proxy_port = harness.free_port("127.0.0.1")
        credentials = self.credentials_file(f"credentials-{self.proxy_port}",
                                            f"{USER}:{password}\n")
        proxy = harness.Proxy(["--connect", f"127.0.0.1:{self.proxy_port}", "--registry", "myreg",
                               "--port", str(self.port), "--dns-server", dns.address,
                               "--workers", "2",
                               "--upstream-proxy", upstream or f"http://{self.squid.address}",
                               "--upstream-proxy-credentials", credentials] + list(extra))
        proxy.__enter__()
        self.addCleanup(proxy.__exit__, None, None, None)
        return dns, proxy

    def pull(self, out_name):
        out = os.path.join(self.tmp.path, out_name)
        proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        result = self.skopeo.run(
            ["copy", "--src-cert-dir", self.cert_dir, "--src-no-creds",
             f"docker://{LOGIN_HOST}:{self.port}/{REPOSITORY}:{TAG}", f"dir:{out}"],
            env={"HTTPS_PROXY": proxy_url, "https_proxy": proxy_url}, timeout=120)
        return result, out

    def assert_no_secret(self, proxy):
        encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        for text in [proxy.stderr_text(), "\n".join(map(str, proxy.access_log()))]:
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn(encoded, text)

    # A real skopeo pull goes client -> acr-egress -> Squid (Basic auth) -> registry, every blob
    # byte-identical; acr-egress never resolves the name and never shows the password.
    def test_pull_through_squid_with_basic_auth(self):
        dns, proxy = self.start_proxy(PASSWORD)
        squid_before = len(self.squid.access_lines())
        result, out = self.pull("pull-chained")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr +
                         proxy.stderr_text())
        pulled = dir_blob_digests(out)
        for digest in self.image.blob_digests:
            self.assertEqual(pulled.get(digest), digest, f"blob {digest} missing or corrupted")
        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(line["decision"], "allow", line)
            self.assertEqual(line["target"], LOGIN_HOST, line)
            self.assertEqual(line["dialled"], self.squid.address, line)
        self.assertGreaterEqual(sum(line["bytes_down"] for line in lines),
                                self.image.total_bytes)
        squid_connects = [f for f in self.squid.access_lines()[squid_before:]
                          if f[5] == "CONNECT" and f[6] == f"{LOGIN_HOST}:{self.port}"]
        self.assertTrue(squid_connects)
        self.assertTrue(all(f[7] == USER and "/200" in f[3] for f in squid_connects),
                        squid_connects)
        self.assertEqual(dns.queries(), [])
        self.assert_no_secret(proxy)

    # Wrong credentials: Squid answers 407, skopeo's pull fails with 502 upstream_proxy_refused
    # and the access log's sentence names Squid's status.
    def test_bad_credentials_give_502_upstream_proxy_refused(self):
        dns, proxy = self.start_proxy("wrong-password")
        result, out = self.pull("pull-bad-credentials")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("upstream_proxy_refused", result.stderr)
        self.assertIn("502 Bad Gateway", connect_through(self.proxy_port,
                                                         f"{LOGIN_HOST}:{self.port}"))
        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(line["decision"], "deny", line)
            self.assertEqual(line["reason"], "upstream_proxy_refused", line)
            self.assertIn("with 407", line["message"], line)
        self.assert_no_secret(proxy)

    # A name the policy denies is refused by acr-egress itself: Squid never sees it.
    def test_denied_host_never_reaches_squid(self):
        dns, proxy = self.start_proxy(PASSWORD)
        head = connect_through(self.proxy_port, f"{OTHER_HOST}:{self.port}")
        self.assertIn("403", head.split("\r\n")[0])
        self.assertIn("host_not_allowed", head)
        # An allowed CONNECT after it, so that Squid's log is known to be written up to here.
        self.assertIn(" 200 ", connect_through(self.proxy_port, f"{LOGIN_HOST}:{self.port}")
                      .split("\r\n")[0] + " ")
        harness.wait_until(lambda: any(f[6] == f"{LOGIN_HOST}:{self.port}"
                                       for f in self.squid.access_lines()),
                           timeout=10, message="Squid logged the allowed CONNECT")
        self.assertFalse([f for f in self.squid.access_lines() if OTHER_HOST in f[6]])
        self.assertEqual(dns.queries(), [])

    # An upstream proxy given by name is resolved by acr-egress's own resolver (the only name it
    # looks up); the target's name still goes to Squid unresolved.
    def test_upstream_proxy_by_name(self):
        dns, proxy = self.start_proxy(PASSWORD, records={"proxy.corp.test": ["127.0.0.1"]},
                                      upstream=f"http://proxy.corp.test:{self.squid.port}")
        head = connect_through(self.proxy_port, f"{LOGIN_HOST}:{self.port}")
        self.assertIn(" 200 ", head.split("\r\n")[0] + " ", head)
        self.assertEqual(set(dns.queries()), {"proxy.corp.test"})

    # An IP-literal target is judged by the address rules here (inside --allow-cidr: tunnelled
    # through Squid as CONNECT ip:port; outside: 403, and Squid never sees it).
    def test_ip_literal_targets_keep_address_rules(self):
        dns, proxy = self.start_proxy(PASSWORD, extra=["--allow-cidr", f"{REGISTRY_IP}/32"])
        allowed = connect_through(self.proxy_port, f"{REGISTRY_IP}:{self.port}")
        self.assertIn(" 200 ", allowed.split("\r\n")[0] + " ", allowed)
        denied = connect_through(self.proxy_port, f"127.0.0.5:{self.port}")
        self.assertIn("403", denied.split("\r\n")[0])
        self.assertIn("address_not_allowed", denied)
        harness.wait_until(lambda: any(f[6] == f"{REGISTRY_IP}:{self.port}"
                                       for f in self.squid.access_lines()),
                           timeout=10, message="Squid logged the literal CONNECT")
        self.assertFalse([f for f in self.squid.access_lines() if "127.0.0.5" in f[6]])

    # The sni listener asks Squid for its SNI at --sni-upstream-port: curl reaches the registry
    # (TLS verified end to end) through acr-egress and Squid.
    def test_sni_listener_through_squid(self):
        sni_port = harness.free_port("127.0.0.1")
        dns, proxy = self.start_proxy(PASSWORD, extra=["--sni", f"127.0.0.1:{sni_port}",
                                                       "--sni-upstream-port", str(self.port)])
        result = harness.curl("--max-time", "20", "--cacert", self.certs["ca"], "--resolve",
                              f"{LOGIN_HOST}:{sni_port}:127.0.0.1", "-o", "/dev/null", "-w",
                              "%{http_code}", f"https://{LOGIN_HOST}:{sni_port}/v2/")
        self.assertEqual(result.returncode, 0, result.stderr + proxy.stderr_text())
        self.assertEqual(result.stdout, "200")
        entry = proxy.wait_for_log(lambda e: e.get("listener") == "sni")
        self.assertEqual(entry["decision"], "allow", entry)
        self.assertEqual(entry["dialled"], self.squid.address, entry)
        self.assertEqual(dns.queries(), [])

    # A credentials file others may read is refused at startup, without quoting it.
    def test_credentials_file_readable_by_others_refused(self):
        path = self.credentials_file("credentials-world-readable", f"{USER}:{PASSWORD}\n", 0o644)
        result = subprocess.run(
            [harness.binary_path(), "--connect", f"127.0.0.1:{harness.free_port()}",
             "--upstream-proxy",
             f"http://{self.squid.address}", "--upstream-proxy-credentials", path],
            capture_output=True, text=True, timeout=30, env={**os.environ,
                                                             "ACR_EGRESS_CONFIG": ""})
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("readable or writable by others", result.stderr)
        self.assertIn(path, result.stderr)
        self.assertNotIn(PASSWORD, result.stderr + result.stdout)

    # --strict-ip cannot be enforced when the upstream proxy resolves the names.
    def test_strict_ip_with_upstream_proxy_is_config_error(self):
        result = subprocess.run(
            [harness.binary_path(), "--check-config", "--strict-ip", "--upstream-proxy",
             f"http://{self.squid.address}"],
            capture_output=True, text=True, timeout=30, env={**os.environ,
                                                             "ACR_EGRESS_CONFIG": ""})
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertIn("--strict-ip", result.stderr)
        self.assertIn("upstream proxy", result.stderr)


if __name__ == "__main__":
    unittest.main()
