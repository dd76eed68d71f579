"""scripts/acr-egress-servicetags-refresh against a local HTTPS server (Python ssl, a test CA made
with the openssl CLI) on 127.0.0.1 serving the real ServiceTags_Public.json and broken or changed
copies of it. The script validates with ACR_BINARY and records reloads through RELOAD_COMMAND; the
last test drives a running proxy with `kill -HUP` inside a private network namespace.
"""

import http.server
import json
import os
import signal
import ssl
import subprocess
import threading
import unittest

import harness

TAG = "AzureContainerRegistry.WestEurope"
TEST_RANGE = "192.0.2.0/24"  # added to TAG in the "changed" file; not in the real file
TEST_ADDRESS = "192.0.2.1"


def script_path():
    source = os.environ.get("ACR_SOURCE_DIR",
                            os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    return os.path.join(source, "scripts", "acr-egress-servicetags-refresh")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HttpsFileServer:
    """https://127.0.0.1:PORT/NAME serving `files` {"/NAME": bytes}; every other path is 404."""

    def __init__(self, files, cert, key):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files = files
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"https://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class ServiceTagsRefreshTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A namespace with only `lo`: the running-proxy test dials 192.0.2.1, which must fail
        # at once there instead of leaving the machine.
        cls.isolated = harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        root = cls.tmp.path
        cls.certs = harness.make_ca_and_cert(os.path.join(root, "pki"), ["localhost"],
                                             ["127.0.0.1"])
        good = read_bytes(os.path.join(harness.shared_dir(), "data", "ServiceTags_Public.json"))
        document = json.loads(good)
        document["changeNumber"] += 1
        for value in document["values"]:
            if value["name"] == TAG:
                value["properties"]["addressPrefixes"].append(TEST_RANGE)
        changed = json.dumps(document, indent=2).encode()
        without_tag = dict(document, values=[v for v in document["values"] if v["name"] != TAG])
        cls.files = {
            "/good.json": good,
            "/truncated.json": good[:len(good) // 2],
            "/invalid.json": b'{"changeNumber": 1, "cloud": "Public", "values": {"a": 1}}\n',
            "/changed.json": changed,
            "/without-tag.json": json.dumps(without_tag).encode(),
        }
        cls.server = HttpsFileServer(cls.files, cls.certs["cert"], cls.certs["key"])
        cls.addClassCleanup(cls.server.stop)
        # Download pages of the shape of Microsoft's (details.aspx?id=56519): the file linked in
        # an <a href> and again in a JSON blob with \/-escaped slashes, as the page carries it.
        base = f"https://127.0.0.1:{cls.server.port}"
        cls.link_prefix = f"{base}/download/"
        folder = "/download/7/1/D/71D86715-5596-4529-9B13-DA13A5DE5B63"
        for date, name in (("20240101", "good"), ("20240108", "changed"), ("20240115", "truncated")):
            cls.files[f"{folder}/ServiceTags_Public_{date}.json"] = cls.files[f"/{name}.json"]
        # Later-dated, but outside the link prefix: never taken.
        cls.files["/elsewhere/ServiceTags_Public_29991231.json"] = cls.files["/invalid.json"]

        def page(*dates, outside=False):
            links = [f"{base}{folder}/ServiceTags_Public_{d}.json" for d in dates]
            html = "<html><body><h1>Azure IP Ranges and Service Tags – Public Cloud</h1>\n"
            html += "".join(f'<a href="{link}" class="mscom-link">Download</a>\n'
                            for link in links[:1])
            blob = {"dlcDetailsView": {"downloadFile": [
                {"name": link.rsplit("/", 1)[1], "url": link} for link in links]}}
            html += ("<script>window.__DLCDetails__=" + json.dumps(blob).replace("/", "\\/") +
                     "</script>\n")
            if outside:
                html += f'<a href="{base}/elsewhere/ServiceTags_Public_29991231.json">x</a>\n'
            return (html + "</body></html>\n").encode()

        cls.files["/en-us/download/details.aspx?id=56519"] = page("20240101", "20240108",
                                                                 outside=True)
        cls.files["/page-good.html"] = page("20240101")
        cls.files["/page-truncated.html"] = page("20240101", "20240115")
        cls.files["/page-without-link.html"] = b"<html><body>Page not found</body></html>\n"
        cls.page_url = f"{base}/en-us/download/details.aspx?id=56519"

    def setUp(self):
        self.dir = os.path.join(self.tmp.path, self.id().rsplit(".", 1)[-1])
        os.makedirs(self.dir)
        self.dest = os.path.join(self.dir, "ServiceTags_Public.json")
        self.config = os.path.join(self.dir, "acr-egress.toml")
        with open(self.config, "w") as f:
            f.write("[listeners]\nconnect = [\"127.0.0.1:3128\"]\n\n[policy]\n"
                    f"service_tags_file = \"{self.dest}\"\nservice_tags = [\"{TAG}\"]\n")
        self.reloads = os.path.join(self.dir, "reloads.log")

    def refresh(self, name, reload_command=None, **extra):
        """Runs the script for https://.../NAME; returns the CompletedProcess."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SERVICETAGS_DEFAULTS": "/nonexistent",
            "SERVICETAGS_URL": self.server.url(name),
            "SERVICETAGS_FILE": self.dest,
            "SERVICETAGS_CA_FILE": self.certs["ca"],
            "SERVICETAGS_TIMEOUT": "20",
            "ACR_EGRESS_CONFIG": self.config,
            "ACR_EGRESS_BINARY": harness.binary_path(),
            "RELOAD_COMMAND": reload_command or f"echo reload >> '{self.reloads}'",
            "ASAN_OPTIONS": "detect_leaks=0",
        }
        env.update(extra)
        return subprocess.run(["sh", script_path()], capture_output=True, text=True, timeout=60,
                              env=env, stdin=subprocess.DEVNULL)

    def reload_count(self):
        if not os.path.exists(self.reloads):
            return 0
        with open(self.reloads) as f:
            return len(f.read().splitlines())

    def install_good(self):
        result = self.refresh("good.json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(read_bytes(self.dest), self.files["/good.json"])
        return os.stat(self.dest)

    # A good file is installed byte-identical, readable, with no temporary file left beside it,
    # and the reload command runs once.
    def test_good_file_is_installed_and_reload_runs_once(self):
        result = self.refresh("good.json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("installed:", result.stderr)
        self.assertIn("reload requested", result.stderr)
        self.assertEqual(read_bytes(self.dest), self.files["/good.json"])
        self.assertEqual(self.reload_count(), 1)
        self.assertEqual(os.stat(self.dest).st_mode & 0o777, 0o644)
        self.assertEqual(sorted(os.listdir(self.dir)),
                         sorted(["ServiceTags_Public.json", "acr-egress.toml", "reloads.log"]))

    # The same file again leaves the installed file alone (same inode, same mtime) and does not
    # reload.
    def test_same_file_again_is_not_replaced_and_not_reloaded(self):
        before = self.install_good()
        result = self.refresh("good.json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("unchanged", result.stderr)
        after = os.stat(self.dest)
        self.assertEqual((after.st_ino, after.st_mtime_ns), (before.st_ino, before.st_mtime_ns))
        self.assertEqual(self.reload_count(), 1)

    # A changed file (changeNumber bumped) replaces the old one and reloads again.
    def test_changed_file_replaces_and_reloads(self):
        self.install_good()
        result = self.refresh("changed.json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(read_bytes(self.dest), self.files["/changed.json"])
        self.assertEqual(self.reload_count(), 2)

    def assert_rejected(self, name, code, message):
        before = self.install_good()
        result = self.refresh(name)
        self.assertEqual(result.returncode, code, result.stderr)
        self.assertIn(message, result.stderr)
        self.assertIn("is unchanged", result.stderr)
        self.assertEqual(read_bytes(self.dest), self.files["/good.json"])
        self.assertEqual(os.stat(self.dest).st_ino, before.st_ino)
        self.assertEqual(self.reload_count(), 1)
        self.assertEqual(sorted(os.listdir(self.dir)),
                         sorted(["ServiceTags_Public.json", "acr-egress.toml", "reloads.log"]))
        return result

    # A truncated download is rejected by the proxy's JSON parser; nothing changes.
    def test_truncated_file_is_rejected(self):
        self.assert_rejected("truncated.json", 3, "invalid JSON")

    # A file that is JSON but not the service-tags schema is rejected naming the JSON path.
    def test_invalid_schema_is_rejected(self):
        self.assert_rejected("invalid.json", 3, "$.values: must be an array")

    # A well-formed file that lacks a tag the configuration names is rejected too.
    def test_file_without_configured_tag_is_rejected(self):
        result = self.assert_rejected("without-tag.json", 3, "rejected")
        self.assertIn(TAG, result.stderr)

    # A failed download (404) leaves the file alone and exits 2.
    def test_failed_download_keeps_file(self):
        self.assert_rejected("missing.json", 2, "downloading")

    def discover(self, page="/en-us/download/details.aspx?id=56519", **extra):
        """Runs the script without SERVICETAGS_URL against the local download page PAGE."""
        env = {"SERVICETAGS_URL": "", "SERVICETAGS_LINK_PREFIX": self.link_prefix,
               "SERVICETAGS_PAGE_URL": f"https://127.0.0.1:{self.server.port}{page}"}
        env.update(extra)
        return self.refresh("unused", **env)

    # Without SERVICETAGS_URL the script reads the download page and installs the newest
    # ServiceTags_Public_YYYYMMDD.json it links under the link prefix (not the later-dated link
    # elsewhere); the same page again leaves the file alone and does not reload.
    def test_without_url_installs_newest_file_the_page_links(self):
        result = self.discover()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("ServiceTags_Public_20240108.json", result.stderr)
        self.assertEqual(read_bytes(self.dest), self.files["/changed.json"])
        self.assertEqual(self.reload_count(), 1)
        before = os.stat(self.dest)
        result = self.discover()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("unchanged", result.stderr)
        self.assertEqual(os.stat(self.dest).st_mtime_ns, before.st_mtime_ns)
        self.assertEqual(self.reload_count(), 1)
        self.assertEqual(sorted(os.listdir(self.dir)),
                         sorted(["ServiceTags_Public.json", "acr-egress.toml", "reloads.log"]))

    # The page's newest file is truncated: rejected, the last good file stays.
    def test_without_url_truncated_newest_file_is_rejected(self):
        self.install_good()
        result = self.discover("/page-truncated.html")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("invalid JSON", result.stderr)
        self.assertEqual(read_bytes(self.dest), self.files["/good.json"])
        self.assertEqual(self.reload_count(), 1)

    # A page that links no file (its layout changed, or an error page) fails the run and says
    # what to set; nothing is installed.
    def test_without_url_page_without_link_fails_clearly(self):
        result = self.discover("/page-without-link.html")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("links no ServiceTags_Public_YYYYMMDD.json", result.stderr)
        self.assertIn("SERVICETAGS_URL", result.stderr)
        self.assertFalse(os.path.exists(self.dest))
        result = self.discover("/missing-page.html")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("reading the download page", result.stderr)
        self.assertFalse(os.path.exists(self.dest))

    # A file whose changeNumber is lower than the installed one is refused (a stale mirror or a
    # page rolled back), by URL and by page; the newer file stays and nothing reloads.
    def test_change_number_going_backwards_is_refused(self):
        self.assertEqual(self.refresh("changed.json").returncode, 0)
        before = os.stat(self.dest)
        for result in (self.refresh("good.json"), self.discover("/page-good.html")):
            self.assertEqual(result.returncode, 3, result.stderr)
            self.assertIn("older than the installed file's", result.stderr)
            self.assertEqual(read_bytes(self.dest), self.files["/changed.json"])
            self.assertEqual(os.stat(self.dest).st_ino, before.st_ino)
            self.assertEqual(self.reload_count(), 1)

    # Plain http is refused for the URL and for the page.
    def test_non_https_urls_are_refused(self):
        result = self.refresh("good.json", SERVICETAGS_URL="http://127.0.0.1:9/x.json")
        self.assertEqual(result.returncode, 1, result.stderr)
        result = self.discover(SERVICETAGS_PAGE_URL="http://127.0.0.1:9/page.html")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("https://", result.stderr)

    # An unchanged file whose mtime is older than SERVICETAGS_MAX_AGE days is reported stale
    # (exit 5, a warning), and is still not replaced or reloaded.
    def test_stale_unchanged_file_warns(self):
        self.install_good()
        subprocess.run(["touch", "-d", "20 days ago", self.dest], check=True)
        mtime = os.stat(self.dest).st_mtime_ns
        result = self.refresh("good.json", SERVICETAGS_MAX_AGE="14")
        self.assertEqual(result.returncode, 5, result.stderr)
        self.assertIn("warning", result.stderr)
        self.assertIn("has not changed for 20 days", result.stderr)
        self.assertEqual(os.stat(self.dest).st_mtime_ns, mtime)
        self.assertEqual(self.reload_count(), 1)
        # Within the limit it is fine.
        result = self.refresh("good.json", SERVICETAGS_MAX_AGE="30")
        self.assertEqual(result.returncode, 0, result.stderr)

    # A running proxy reloads (SIGHUP) onto a changed file, and keeps that policy when a later
    # download is truncated: the allowed range added by the changed file stays allowed.
    def test_running_proxy_keeps_policy_after_bad_file(self):
        if not self.isolated:
            self.skipTest("needs a network namespace (root, iproute2) to dial 192.0.2.1 safely")
        self.install_good()
        port = harness.free_port()
        proxy = harness.Proxy(["--config", self.config, "--connect", f"127.0.0.1:{port}",
                               "--connect-timeout", "2s", "--workers", "1"])
        proxy.start()
        self.addCleanup(proxy.stop)
        hup = f"kill -HUP {proxy.pid}"

        def reason():
            status, headers, _, sock = harness.connect_via_proxy(f"127.0.0.1:{port}",
                                                                 f"{TEST_ADDRESS}:443")
            sock.close()
            return status, headers.get("x-acr-egress-reason")

        self.assertEqual(reason(), (403, "address_not_allowed"))

        def reloads():
            return proxy.stderr_text().count("reloaded the policy")

        result = self.refresh("changed.json", reload_command=hup)
        self.assertEqual(result.returncode, 0, result.stderr)
        harness.wait_until(lambda: reloads() == 1, 10, message="the proxy's first reload")
        # Allowed now: the proxy dials 192.0.2.1, which has no route in the namespace.
        status, why = reason()
        self.assertNotEqual(status, 403, why)
        self.assertEqual(why, "upstream_unreachable")

        result = self.refresh("truncated.json", reload_command=hup)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertEqual(read_bytes(self.dest), self.files["/changed.json"])
        # Not reloaded by the script; an explicit reload re-reads the unchanged good file.
        self.assertEqual(reloads(), 1)
        os.kill(proxy.pid, signal.SIGHUP)
        harness.wait_until(lambda: reloads() == 2, 10, message="the proxy's second reload")
        self.assertEqual(reason(), (502, "upstream_unreachable"))
        self.assertTrue(proxy.running())


if __name__ == "__main__":
    unittest.main()
