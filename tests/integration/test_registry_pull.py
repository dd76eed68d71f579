"""A real image pull through the CONNECT listener (THREATS F17, B19).

Real peers only: Debian's docker-registry (distribution 2.8) with TLS and filesystem storage, an
OCI image built here from random bytes and pushed with skopeo, nginx playing ACR's login server
(307 for every blob GET to a data endpoint, as ACR does), dnsmasq as the proxy's resolver, and
skopeo and rootful podman pulling through acr-egress with HTTPS_PROXY, as README.md's "Client
setup" documents. Every name resolves to a loopback address (127.0.0.2-4) through the proxy's own
DNS server; skopeo and podman never resolve a name themselves (podman's resolv.conf names only a
trap that records any query, see registry_fixtures.Podman).
"""

import os
import unittest

import harness
from registry_fixtures import (DnsTrap, Dockerd, Nginx, OciImage, Podman, Registry, Skopeo,
                               acr_front_http_body, cert_dir_with_ca, dir_blob_digests)

LOGIN_HOST = "myreg.azurecr.io"
DATA_HOST = "myreg.eastus.data.azurecr.io"
OTHER_HOST = "other.azurecr.io"
REGISTRY_IP = "127.0.0.2"  # docker-registry itself
LOGIN_IP = "127.0.0.3"     # nginx as ACR's login server
DATA_IP = "127.0.0.4"      # nginx as ACR's data endpoint
REPOSITORY = "library/test"
TAG = "1"


class RegistryPullTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        root = cls.tmp.path
        cls.certs = harness.make_ca_and_cert(os.path.join(root, "pki"),
                                             [LOGIN_HOST, DATA_HOST],
                                             [REGISTRY_IP, LOGIN_IP, DATA_IP])
        cls.cert_dir = cert_dir_with_ca(os.path.join(root, "ca-dir"), cls.certs["ca"])
        # One port on all three addresses: the registry, login and data endpoints all use it,
        # so the proxy policy allows exactly that one port.
        cls.port = harness.common_free_port([REGISTRY_IP, LOGIN_IP, DATA_IP])

        cls.registry = Registry(os.path.join(root, "registry"), REGISTRY_IP, cls.port,
                                cls.certs["cert"], cls.certs["key"])
        cls.registry.start()
        cls.addClassCleanup(cls.registry.stop)

        cls.image = OciImage(os.path.join(root, "oci"), tag="test").build()
        cls.skopeo = Skopeo(os.path.join(root, "skopeo"))
        cls.skopeo.push_oci(cls.image.directory, "test",
                            f"{cls.registry.hostport}/{REPOSITORY}:{TAG}", cls.cert_dir)

        cls.nginx = Nginx(os.path.join(root, "nginx"),
                          acr_front_http_body(cls.certs["cert"], cls.certs["key"], LOGIN_HOST,
                                              LOGIN_IP, DATA_HOST, DATA_IP, cls.port,
                                              cls.registry),
                          [(LOGIN_IP, cls.port), (DATA_IP, cls.port)])
        cls.nginx.start()
        cls.addClassCleanup(cls.nginx.stop)

    def start_proxy(self, records, allow_cidrs):
        """dnsmasq answering `records` and acr-egress (CONNECT on loopback) allowing registry
        myreg on the test's port and `allow_cidrs`; both stopped when the test ends."""
        dns = harness.Dnsmasq(records)
        dns.__enter__()
        self.addCleanup(dns.__exit__, None, None, None)
        self.proxy_port = harness.free_port("127.0.0.1")
        args = ["--connect", f"127.0.0.1:{self.proxy_port}", "--registry", "myreg",
                "--port", str(self.port), "--dns-server", dns.address,
                "--workers", "2"]
        for cidr in allow_cidrs:
            args += ["--allow-cidr", cidr]
        proxy = harness.Proxy(args)
        proxy.__enter__()
        self.addCleanup(proxy.__exit__, None, None, None)
        return dns, proxy

    def pull(self, host, out_name):
        """skopeo copy docker://HOST:PORT/library/test:1 dir:OUT through the proxy."""
        out = os.path.join(self.tmp.path, out_name)
        proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        result = self.skopeo.run(
            ["copy", "--src-cert-dir", self.cert_dir, "--src-no-creds",
             f"docker://{host}:{self.port}/{REPOSITORY}:{TAG}", f"dir:{out}"],
            env={"HTTPS_PROXY": proxy_url, "https_proxy": proxy_url}, timeout=120)
        return result, out

    def podman_pull(self, host, name):
        """README's step, literally: `HTTPS_PROXY=http://127.0.0.1:PROXYPORT podman pull
        HOST:PORT/library/test:1` (HTTPS_PROXY is the only proxy variable set), plus only the
        test's isolation: a Podman whose storage and state live in a fresh directory `name`, the
        test CA as --cert-dir, and a DnsTrap as its only resolver (stopped when the test ends).
        Returns (CompletedProcess, Podman, DnsTrap, reference)."""
        trap = DnsTrap()
        self.addCleanup(trap.stop)
        podman = Podman(os.path.join(self.tmp.path, name), trap.address)
        reference = f"{host}:{self.port}/{REPOSITORY}:{TAG}"
        result = podman.pull(reference, self.cert_dir,
                             env={"HTTPS_PROXY": f"http://127.0.0.1:{self.proxy_port}"},
                             timeout=120)
        return result, podman, trap, reference

    def start_dockerd(self, name):
        """Debian's dockerd 20.10 with README's systemd drop-in environment, literally
        (`Environment="HTTPS_PROXY=http://127.0.0.1:PROXYPORT" "NO_PROXY=localhost,127.0.0.0/8"`:
        Engine 23's daemon.json `proxies` is not in Debian 12), trusting the test CA for the
        registry names through certs.d, and a DnsTrap as its only resolver. Stopped when the
        test ends. Returns (Dockerd, DnsTrap)."""
        trap = DnsTrap()
        self.addCleanup(trap.stop)
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{self.proxy_port}",
               "NO_PROXY": "localhost,127.0.0.0/8"}
        registries = [f"{host}:{self.port}" for host in (LOGIN_HOST, DATA_HOST, OTHER_HOST)]
        dockerd = Dockerd(os.path.join(self.tmp.path, name), trap.address, self.certs["ca"],
                          registries, env)
        self.addCleanup(dockerd.stop)
        dockerd.start()
        return dockerd, trap

    def assert_blobs_redirected_to_data_endpoint(self, served):
        """`served` (nginx access lines) holds, for every blob of the image, the login server's
        307 and then the data endpoint's 200 for the signed URL."""
        for digest in self.image.blob_digests:
            self.assertIn([LOGIN_HOST, "GET", f"/v2/{REPOSITORY}/blobs/{digest}", "307"],
                          [line[:4] for line in served])
            self.assertTrue(any(line[0] == DATA_HOST and line[1] == "GET" and line[3] == "200"
                                and line[2].startswith(f"/v2/{REPOSITORY}/blobs/{digest}?se=")
                                for line in served), served)

    def assert_blobs_identical(self, out):
        pulled = dir_blob_digests(out)
        for digest in self.image.blob_digests:
            self.assertIn(digest, pulled, f"blob {digest} missing from the pull")
            self.assertEqual(pulled[digest], digest, f"blob {digest} corrupted through the proxy")

    def registry_requests(self):
        return self.registry.log_text().count('"response completed"')

    # A pull through the CONNECT listener gets every layer and the config byte-identical.
    def test_pull_through_connect_listener_gets_identical_blobs(self):
        dns, proxy = self.start_proxy({LOGIN_HOST: [REGISTRY_IP]}, [f"{REGISTRY_IP}/32"])
        result, out = self.pull(LOGIN_HOST, "pull-direct")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr +
                         proxy.stderr_text())
        self.assert_blobs_identical(out)

        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(line["decision"], "allow", line)
            self.assertEqual(line["target"], LOGIN_HOST, line)
            self.assertEqual(line["port"], self.port, line)
            self.assertEqual(line["dialled"], f"{REGISTRY_IP}:{self.port}", line)
        self.assertGreaterEqual(sum(line["bytes_down"] for line in lines),
                                self.image.total_bytes)

    # The ACR flow: blob GETs on the login server answer 307 to the data endpoint, skopeo opens
    # a second CONNECT to it, and the policy for --registry myreg allows both.
    def test_pull_follows_307_to_data_endpoint(self):
        dns, proxy = self.start_proxy({LOGIN_HOST: [LOGIN_IP], DATA_HOST: [DATA_IP]},
                                      [f"{LOGIN_IP}/32", f"{DATA_IP}/32"])
        result, out = self.pull(LOGIN_HOST, "pull-redirect")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr +
                         proxy.stderr_text())
        self.assert_blobs_identical(out)

        # The data endpoint served every blob after a 307 from the login server.
        self.assert_blobs_redirected_to_data_endpoint(self.nginx.access_lines())

        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        data_lines = [line for line in lines if line.get("target") == DATA_HOST]
        self.assertTrue(data_lines, lines)
        for line in data_lines:
            self.assertEqual(line["decision"], "allow", line)
            self.assertEqual(line["reason"], "host_allowed", line)
            self.assertEqual(line["dialled"], f"{DATA_IP}:{self.port}", line)
        self.assertGreaterEqual(sum(line["bytes_down"] for line in data_lines),
                                self.image.total_bytes)
        self.assertTrue(any(line.get("target") == LOGIN_HOST and line["decision"] == "allow"
                            for line in lines), lines)
        self.assertFalse([line for line in lines if line["decision"] != "allow"], lines)

    # A registry the policy does not name is refused before any DNS or dial, and skopeo's error
    # carries the reason (Go reports only the status text of a refused CONNECT).
    def test_pull_from_registry_not_allowed_fails_with_reason(self):
        dns, proxy = self.start_proxy({OTHER_HOST: [REGISTRY_IP], LOGIN_HOST: [REGISTRY_IP]},
                                      [f"{REGISTRY_IP}/32"])
        requests_before = self.registry_requests()
        result, out = self.pull(OTHER_HOST, "pull-denied")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("host_not_allowed", result.stderr)
        self.assertFalse(dir_blob_digests(out) if os.path.isdir(out) else {})

        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(line["target"], OTHER_HOST, line)
            self.assertEqual(line["decision"], "deny", line)
            self.assertEqual(line["reason"], "host_not_allowed", line)
            self.assertFalse(line.get("dialled"), line)
        self.assertEqual(self.registry_requests(), requests_before)
        # A denied name is never resolved (B19: no DNS exfiltration through the proxy).
        self.assertNotIn(OTHER_HOST, dns.queries())

    # podman as README's "Client setup" documents it (HTTPS_PROXY, nothing else) through the ACR
    # flow: the stored image is the one pushed (image ID = config digest, manifest digest, every
    # layer's diff ID and every file's content), every blob came from the data endpoint after a
    # 307, every byte came through allowed CONNECTs, and podman resolved no name itself: the
    # proxy's dnsmasq resolved both names.
    def test_podman_pull_as_documented_gets_identical_image(self):
        dns, proxy = self.start_proxy({LOGIN_HOST: [LOGIN_IP], DATA_HOST: [DATA_IP]},
                                      [f"{LOGIN_IP}/32", f"{DATA_IP}/32"])
        served_before = len(self.nginx.access_lines())
        result, podman, trap, reference = self.podman_pull(LOGIN_HOST, "podman-allowed")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr +
                         proxy.stderr_text())

        image = podman.inspect(reference)
        self.assertEqual("sha256:" + image["Id"], self.image.config_digest, image)
        self.assertEqual(image["Digest"], self.image.manifest_digest, image)
        self.assertIn(f"{LOGIN_HOST}:{self.port}/{REPOSITORY}@{self.image.manifest_digest}",
                      image["RepoDigests"])
        self.assertEqual(image["RootFS"]["Layers"], self.image.diff_ids, image)
        self.assertEqual(podman.image_file_digests(reference), self.image.file_digests)

        # Every blob (layers and config) this pull fetched: a 307 from the login server, then
        # the data endpoint's 200.
        self.assert_blobs_redirected_to_data_endpoint(self.nginx.access_lines()[served_before:])

        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertFalse([line for line in lines if line["decision"] != "allow"], lines)
        dialled = {LOGIN_HOST: f"{LOGIN_IP}:{self.port}", DATA_HOST: f"{DATA_IP}:{self.port}"}
        for line in lines:
            self.assertIn(line["target"], dialled, line)
            self.assertEqual(line["port"], self.port, line)
            self.assertEqual(line["dialled"], dialled[line["target"]], line)
            self.assertTrue(line["client"].startswith("127.0.0.1:"), line)
        self.assertTrue([line for line in lines if line["target"] == LOGIN_HOST], lines)
        data_lines = [line for line in lines if line["target"] == DATA_HOST]
        self.assertGreaterEqual(sum(line["bytes_down"] for line in data_lines),
                                self.image.total_bytes)
        self.assertEqual(trap.queries(), [])
        self.assertEqual(set(dns.queries()), {LOGIN_HOST, DATA_HOST})

    # The same documented podman pull of a registry the policy does not name fails with the
    # proxy's reason in podman's error; the proxy refuses every CONNECT before any DNS or dial,
    # nothing reaches the registry, and no image is stored.
    def test_podman_pull_from_registry_not_allowed_fails_with_reason(self):
        dns, proxy = self.start_proxy({OTHER_HOST: [REGISTRY_IP], LOGIN_HOST: [REGISTRY_IP]},
                                      [f"{REGISTRY_IP}/32"])
        requests_before = self.registry_requests()
        result, podman, trap, reference = self.podman_pull(OTHER_HOST, "podman-denied")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("Forbidden (acr-egress: host_not_allowed)", result.stderr)
        self.assertFalse(podman.image_exists(reference))

        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(line["target"], OTHER_HOST, line)
            self.assertEqual(line["decision"], "deny", line)
            self.assertEqual(line["reason"], "host_not_allowed", line)
            self.assertFalse(line.get("dialled"), line)
        self.assertEqual(self.registry_requests(), requests_before)
        self.assertEqual(dns.queries(), [])
        self.assertEqual(trap.queries(), [])

    # docker, the client this product exists for, configured as README's drop-in says: the
    # daemon pulls through acr-egress (including the 307 to the data endpoint) and stores the
    # image pushed (ID = config digest, manifest digest, diff IDs), resolving no name itself.
    def test_docker_pull_with_documented_drop_in_gets_identical_image(self):
        dns, proxy = self.start_proxy({LOGIN_HOST: [LOGIN_IP], DATA_HOST: [DATA_IP]},
                                      [f"{LOGIN_IP}/32", f"{DATA_IP}/32"])
        dockerd, trap = self.start_dockerd("docker-allowed")
        reference = f"{LOGIN_HOST}:{self.port}/{REPOSITORY}:{TAG}"
        result = dockerd.cli(["pull", reference])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr +
                         dockerd.log_text()[-4000:] + proxy.stderr_text())
        image = dockerd.inspect(reference)
        self.assertEqual(image["Id"], self.image.config_digest, image)
        self.assertIn(f"{LOGIN_HOST}:{self.port}/{REPOSITORY}@{self.image.manifest_digest}",
                      image["RepoDigests"])
        self.assertEqual(image["RootFS"]["Layers"], self.image.diff_ids, image)

        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertFalse([line for line in lines if line["decision"] != "allow"], lines)
        targets = {line["target"] for line in lines}
        self.assertEqual(targets, {LOGIN_HOST, DATA_HOST}, lines)
        data_bytes = sum(line["bytes_down"] for line in lines if line["target"] == DATA_HOST)
        self.assertGreaterEqual(data_bytes, sum(self.image.layer_sizes))
        # dockerd looks the registry's name up itself (to test it against its insecure-registry
        # CIDRs) even with a proxy; the host's resolver refusing it does not stop the pull. It
        # never asks for the data endpoint.
        self.assertLessEqual(set(trap.queries()), {LOGIN_HOST})
        self.assertEqual(set(dns.queries()), {LOGIN_HOST, DATA_HOST})

    # A registry the policy does not name: docker's error carries the proxy's reason, as the
    # README's troubleshooting quotes it; nothing is resolved, dialled or stored.
    def test_docker_pull_from_registry_not_allowed_fails_with_reason(self):
        dns, proxy = self.start_proxy({OTHER_HOST: [REGISTRY_IP]}, [f"{REGISTRY_IP}/32"])
        dockerd, trap = self.start_dockerd("docker-denied")
        reference = f"{OTHER_HOST}:{self.port}/{REPOSITORY}:{TAG}"
        requests_before = self.registry_requests()
        result = dockerd.cli(["pull", reference])
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn(f'Error response from daemon: Get "https://{OTHER_HOST}:{self.port}/v2/": '
                      "Forbidden (acr-egress: host_not_allowed)", result.stderr)
        self.assertFalse(dockerd.image_exists(reference))
        proxy.stop()
        lines = [line for line in proxy.access_log() if line.get("listener") == "connect"]
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual((line["target"], line["decision"], line["reason"]),
                             (OTHER_HOST, "deny", "host_not_allowed"), line)
        self.assertEqual(self.registry_requests(), requests_before)
        self.assertEqual(dns.queries(), [])
        self.assertLessEqual(set(trap.queries()), {OTHER_HOST})  # dockerd's own lookup, as above


if __name__ == "__main__":
    unittest.main()
