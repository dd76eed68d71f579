"""The admin endpoint (--admin): /metrics in the Prometheus text format 0.0.4, /healthz, /readyz,
/policy, and the refusal of a non-loopback address.

Each test starts its own acr-egress with --admin on a free loopback port and scrapes it with the
real curl binary. The upstream is an echo server on 127.0.0.2 reached through a CONNECT tunnel
(--allow-non-tls), its name resolved by a dnsmasq the class starts.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
import unittest

import harness

ECHO_NAME = "echo.azurecr.io"
UPSTREAM_IP = "127.0.0.2"
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')
VALUE = re.compile(r"[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf)\Z|NaN\Z")


def unescape(value):
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_labels(text, line):
    """{name: value} of a label set `a="x",b="y"` (a trailing comma allowed); strict."""
    labels = {}
    pos = 0
    while pos < len(text):
        match = LABEL.match(text, pos)
        if not match:
            raise AssertionError(f"bad label set in: {line!r}")
        if match.group(1) in labels:
            raise AssertionError(f"label {match.group(1)} twice in: {line!r}")
        labels[match.group(1)] = unescape(match.group(2))
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise AssertionError(f"bad label separator in: {line!r}")
            pos += 1
    return labels


def parse_exposition(text):
    """Parses the text exposition format strictly. Returns (types, samples): types
    {family: type}, samples [(name, {label: value}, float)]. Every line must be
    `# HELP name text`, `# TYPE name counter|gauge|histogram` (each once per family, before its
    samples) or a sample `name{labels} value` of a TYPE'd family (histograms: _bucket, _sum,
    _count)."""
    types, helped, samples = {}, set(), []
    if not text.endswith("\n"):
        raise AssertionError("the exposition does not end with a newline")
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE"):
                raise AssertionError(f"bad comment line: {line!r}")
            name = parts[2]
            if not METRIC_NAME.match(name):
                raise AssertionError(f"bad metric name in: {line!r}")
            if parts[1] == "HELP":
                if name in helped or len(parts) != 4:
                    raise AssertionError(f"HELP twice or empty: {line!r}")
                helped.add(name)
            else:
                if name in types or len(parts) != 4 or \
                        parts[3] not in ("counter", "gauge", "histogram"):
                    raise AssertionError(f"bad or repeated TYPE: {line!r}")
                if any(family_of(s[0], types) == name for s in samples):
                    raise AssertionError(f"TYPE after samples: {line!r}")
                types[name] = parts[3]
            continue
        series, _, value = line.rpartition(" ")
        if not series or not VALUE.match(value):
            raise AssertionError(f"bad sample line: {line!r}")
        if "{" in series:
            if not series.endswith("}"):
                raise AssertionError(f"bad sample line: {line!r}")
            name, _, labels_text = series[:-1].partition("{")
            labels = parse_labels(labels_text, line)
        else:
            name, labels = series, {}
        if not METRIC_NAME.match(name):
            raise AssertionError(f"bad metric name in: {line!r}")
        if family_of(name, types) not in types:
            raise AssertionError(f"sample before its TYPE: {line!r}")
        samples.append((name, labels, float(value.replace("Inf", "inf"))))
    return types, samples


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)]
        if name.endswith(suffix) and types.get(base) == "histogram":
            return base
    return name


def value_of(samples, name, **labels):
    found = [v for n, l, v in samples if n == name and all(l.get(k) == x
                                                            for k, x in labels.items())]
    return sum(found) if found else None


class AdminTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.isolate_in_netns(cls)
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.echo_port = harness.free_port(UPSTREAM_IP)
        cls.echo = harness.RawServer(UPSTREAM_IP, cls.echo_port, handler=harness.echo_handler)
        cls.addClassCleanup(cls.echo.stop)
        cls.dns = harness.Dnsmasq({ECHO_NAME: [UPSTREAM_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

    def start_proxy(self, *extra, policy=True):
        port = harness.free_port()
        self.admin_port = harness.free_port()
        args = ["--connect", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{self.admin_port}",
                "--dns-server", self.dns.address, "--workers", "2", "--allow-non-tls"]
        if policy:
            args += ["--allow-host", "*.azurecr.io", "--allow-cidr", f"{UPSTREAM_IP}/32",
                     "--port", str(self.echo_port)]
        proxy = harness.Proxy(args + list(extra))
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy, f"127.0.0.1:{port}"

    def get(self, path, *args):
        """(status, headers {lower-case name: value}, body) of GET `path` with real curl."""
        result = harness.curl("-i", "--max-time", "5", *args,
                              f"http://127.0.0.1:{self.admin_port}{path}", timeout=10)
        self.assertEqual(result.returncode, 0, result.stderr)
        head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
        lines = head.split("\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, body

    def scrape(self):
        status, headers, body = self.get("/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-type"),
                         "text/plain; version=0.0.4; charset=utf-8")
        return parse_exposition(body)

    def echo_tunnel(self, addr):
        status, headers, _, sock = harness.connect_via_proxy(
            addr, f"{ECHO_NAME}:{self.echo_port}", timeout=5)
        self.addCleanup(sock.close)
        self.assertEqual(status, 200, headers)
        sock.sendall(b"ping")
        data = sock.acr_early
        deadline = time.monotonic() + 5
        while len(data) < 4 and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        self.assertEqual(data, b"ping")
        return sock

    def test_metrics_count_allowed_and_denied_connections(self):
        """One allowed and one denied CONNECT show up as connection counters labelled with the
        listener, the decision and the access log's reason, in a strictly valid exposition with
        histograms whose +Inf bucket equals their count."""
        proxy, addr = self.start_proxy()
        tunnel = self.echo_tunnel(addr)
        tunnel.close()
        status, _, _, denied = harness.connect_via_proxy(
            addr, f"evil.example.com:{self.echo_port}", timeout=5)
        denied.close()
        self.assertEqual(status, 403)
        allowed_entry = proxy.wait_for_log(lambda e: e.get("decision") == "allow")
        denied_entry = proxy.wait_for_log(lambda e: e.get("decision") == "deny")
        self.assertEqual(denied_entry["reason"], "host_not_allowed")

        def counted():
            _, samples = self.scrape()
            return samples if value_of(samples, "acr_egress_connections_total") == 2 else None
        samples = harness.wait_until(counted, 10, 0.1, "two connections counted")
        types, samples = self.scrape()
        self.assertEqual(value_of(samples, "acr_egress_connections_total", listener="connect",
                                  decision="allow", reason=allowed_entry["reason"]), 1)
        self.assertEqual(value_of(samples, "acr_egress_connections_total", listener="connect",
                                  decision="deny", reason="host_not_allowed"), 1)
        self.assertEqual(types["acr_egress_connections_total"], "counter")
        self.assertEqual(types["acr_egress_active_connections"], "gauge")
        self.assertEqual(value_of(samples, "acr_egress_accepted_total"), 2)
        self.assertEqual(value_of(samples, "acr_egress_rejected_overload_total"), 0)
        self.assertEqual(value_of(samples, "acr_egress_accept_errors_total"), 0)
        self.assertGreaterEqual(value_of(samples, "acr_egress_bytes_up_total"), 4)
        self.assertGreaterEqual(value_of(samples, "acr_egress_bytes_down_total"), 4)
        self.assertEqual(value_of(samples, "acr_egress_dns_cache_misses_total"), 1)
        self.assertEqual(value_of(samples, "acr_egress_policy_generation"), 1)
        for family in ("acr_egress_dns_lookup_duration_seconds",
                       "acr_egress_decision_duration_seconds"):
            self.assertEqual(types[family], "histogram")
            buckets = [(float(l["le"].replace("Inf", "inf")), v) for n, l, v in samples
                       if n == family + "_bucket"]
            self.assertEqual(buckets, sorted(buckets), family)
            self.assertEqual(buckets[-1][0], float("inf"))
            self.assertEqual(buckets[-1][1], value_of(samples, family + "_count"))
            self.assertIsNotNone(value_of(samples, family + "_sum"))
        self.assertEqual(value_of(samples, "acr_egress_dns_lookup_duration_seconds_count"), 1)
        self.assertEqual(value_of(samples, "acr_egress_decision_duration_seconds_count"), 2)

    def test_bytes_and_active_tunnels_are_live(self):
        """An open tunnel is an active tunnel, and its bytes are counted while it relays (a
        long image pull shows progress), not only when it ends; closing it ends the tunnel."""
        proxy, addr = self.start_proxy()
        tunnel = self.echo_tunnel(addr)
        payload = b"x" * 200_000
        tunnel.sendall(payload)
        received = 0
        deadline = time.monotonic() + 10
        while received < len(payload) and time.monotonic() < deadline:
            tunnel.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = tunnel.recv(65536)
            if not chunk:
                break
            received += len(chunk)
        self.assertEqual(received, len(payload))
        _, samples = self.scrape()
        self.assertEqual(value_of(samples, "acr_egress_active_tunnels"), 1)
        self.assertEqual(value_of(samples, "acr_egress_active_connections"), 1)
        self.assertGreaterEqual(value_of(samples, "acr_egress_bytes_up_total"), len(payload) + 4)
        self.assertGreaterEqual(value_of(samples, "acr_egress_bytes_down_total"), len(payload) + 4)
        self.assertEqual(value_of(samples, "acr_egress_connections_total"), None)  # still open
        tunnel.close()
        proxy.wait_for_log(lambda e: e.get("decision") == "allow")

        def ended():
            _, samples = self.scrape()
            return samples if value_of(samples, "acr_egress_active_tunnels") == 0 else None
        samples = harness.wait_until(ended, 10, 0.1, "the tunnel to end")
        self.assertEqual(value_of(samples, "acr_egress_active_connections"), 0)
        self.assertGreaterEqual(value_of(samples, "acr_egress_bytes_up_total"), len(payload) + 4)

    def test_health_ready_policy_and_errors(self):
        """/healthz and /readyz answer 200, /policy is JSON naming the configured patterns and
        ports, an unknown path is 404 and a method other than GET/HEAD is 405."""
        self.start_proxy("--registry", "myreg", "--deny-cidr", "198.51.100.0/24", policy=False)
        self.assertEqual(self.get("/healthz")[0], 200)
        status, _, body = self.get("/readyz")
        self.assertEqual((status, body.strip()), (200, "ready"))
        status, headers, body = self.get("/policy")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        policy = json.loads(body)
        self.assertEqual([h["pattern"] for h in policy["host_patterns"]],
                         ["myreg.azurecr.io", "myreg.*.data.azurecr.io",
                          "myreg.*.geo.azurecr.io"])
        self.assertEqual(policy["ports"], [443])
        self.assertEqual(policy["deny_cidr_count"], 1)
        self.assertEqual(policy["strict_ip"], False)
        self.assertEqual(policy["generation"], 1)
        self.assertEqual(self.get("/nope")[0], 404)
        status, headers, _ = self.get("/metrics", "-X", "POST")
        self.assertEqual(status, 405)
        self.assertEqual(headers.get("allow"), "GET, HEAD")
        head = harness.curl("-I", "--max-time", "5", f"http://127.0.0.1:{self.admin_port}/healthz")
        self.assertEqual(head.returncode, 0, head.stderr)
        self.assertIn("200", head.stdout.split("\n", 1)[0])

    def test_service_tags_gauges_and_policy(self):
        """With a service-tags file, /policy and the gauges report its changeNumber and tags, and
        the file age follows the file's mtime."""
        tags = os.path.join(self.tmp.path, "tags.json")
        with open(os.path.join(harness.shared_dir(), "data", "ServiceTags_Public.json"),
                  "rb") as src, open(tags, "wb") as dst:
            dst.write(src.read())
        with open(tags) as f:
            change_number = json.load(f)["changeNumber"]
        old = time.time() - 3600
        os.utime(tags, (old, old))
        self.start_proxy("--service-tags", tags, "--service-tag", "AzureContainerRegistry")
        policy = json.loads(self.get("/policy")[2])
        self.assertEqual(policy["service_tags"]["change_number"], change_number)
        self.assertEqual(policy["service_tags"]["tags"], ["AzureContainerRegistry"])
        self.assertGreater(policy["allowed_prefix_count"], 1)
        _, samples = self.scrape()
        self.assertEqual(value_of(samples, "acr_egress_service_tags_change_number"),
                         change_number)
        age = value_of(samples, "acr_egress_service_tags_file_age_seconds")
        self.assertGreaterEqual(age, 3600)
        self.assertLess(age, 3600 + 120)

    def test_non_loopback_admin_is_refused(self):
        """--admin on a non-loopback address is a configuration error (exit 2) that names the
        option to allow it."""
        port = harness.free_port()
        result = subprocess.run([harness.binary_path(), "--connect", "127.0.0.1:1",
                                 "--admin", f"0.0.0.0:{port}"], capture_output=True, text=True,
                                timeout=20, stdin=subprocess.DEVNULL)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("is not a loopback address", result.stderr)
        self.assertIn("--admin-allow-remote", result.stderr)

    def test_reloads_are_counted(self):
        """SIGHUP with a valid configuration counts a successful reload and a new generation;
        with a broken file it counts a failed reload and keeps the generation."""
        config = os.path.join(self.tmp.path, "reload.toml")
        with open(config, "w") as f:
            f.write('[policy]\nallow_hosts = ["*.azurecr.io"]\n')
        proxy, _ = self.start_proxy("--config", config)
        _, samples = self.scrape()
        self.assertEqual(value_of(samples, "acr_egress_reloads_total", result="ok"), 0)
        self.assertEqual(value_of(samples, "acr_egress_reloads_total", result="failed"), 0)
        with open(config, "w") as f:
            f.write('[policy]\nallow_hosts = ["*.azurecr.io", "*.example.org"]\n')
        proxy.send_signal(signal.SIGHUP)

        def reloads(result, count):
            def check():
                _, s = self.scrape()
                return s if value_of(s, "acr_egress_reloads_total", result=result) == count \
                    else None
            return harness.wait_until(check, 10, 0.1, f"{count} {result} reload(s)")
        samples = reloads("ok", 1)
        self.assertEqual(value_of(samples, "acr_egress_policy_generation"), 2)
        patterns = [h["pattern"] for h in json.loads(self.get("/policy")[2])["host_patterns"]]
        self.assertIn("*.example.org", patterns)
        with open(config, "w") as f:
            f.write("this is [not toml\n")
        proxy.send_signal(signal.SIGHUP)
        samples = reloads("failed", 1)
        self.assertEqual(value_of(samples, "acr_egress_reloads_total", result="ok"), 1)
        self.assertEqual(value_of(samples, "acr_egress_policy_generation"), 2)
        self.assertEqual(self.get("/readyz")[0], 200)

    def test_readyz_is_503_while_draining(self):
        """After SIGTERM with a tunnel open (and a long drain timeout) /readyz answers 503 while
        /healthz still answers 200; the process exits 0 once the tunnel closes, and the admin
        endpoint does not keep it alive."""
        proxy, addr = self.start_proxy("--drain-timeout", "30s")
        tunnel = self.echo_tunnel(addr)
        self.assertEqual(self.get("/readyz")[0], 200)
        proxy.send_signal(signal.SIGTERM)
        harness.wait_until(lambda: self.get("/readyz")[0] == 503, 5, 0.1, "/readyz 503")
        status, _, body = self.get("/readyz")
        self.assertEqual((status, body.strip()), (503, "draining"))
        self.assertEqual(self.get("/healthz")[0], 200)
        self.assertIsNone(proxy.wait(0), "exited with a tunnel open")
        tunnel.close()
        self.assertEqual(proxy.wait(10), 0, proxy.stderr_text()[-2000:])
        with socket.socket() as s:
            s.settimeout(2)
            self.assertNotEqual(s.connect_ex(("127.0.0.1", self.admin_port)), 0)
        self.assertEqual(proxy.stop(), 0)


if __name__ == "__main__":
    unittest.main()
