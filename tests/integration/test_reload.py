"""Reloads that drop nothing, and the systemd protocol around them (issue 4: "Reload that drops
nothing", "systemd": Type=notify, watchdog, socket activation).

The proxy runs a connect listener with --allow-non-tls and a --config file the test rewrites;
upstreams are echo servers on 127.0.0.3 reached through names a test dnsmasq answers. systemd
itself is not PID 1 here, so the test plays its part with the real protocol: a unix datagram
socket named by NOTIFY_SOCKET collects sd_notify messages, WATCHDOG_USEC asks for keepalives, and
Debian's `systemd-socket-activate` passes a listening socket (LISTEN_FDS).
"""

import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

import harness

UPSTREAM_IP = "127.0.0.3"
STABLE = "stable.azurecr.io"  # allowed by every valid config
ALPHA = "alpha.azurecr.io"  # allowed by the even configs
BETA = "beta.azurecr.io"  # allowed by the odd configs
RELOADS = 20


def worker_thread(pid, name):
    """The thread id of the proxy thread called `name` (see Worker::start)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == name:
                return int(tid)
    raise AssertionError(f"no thread named {name} in process {pid}")


class FrozenThread:
    """Stops one thread of another process with ptrace while the others run on (a context
    manager; the thread is released on exit). PTRACE_SEIZE sends no signal, and PTRACE_INTERRUPT
    stops only the seized thread, unlike SIGSTOP which stops the whole process."""

    PTRACE_DETACH = 17
    PTRACE_SEIZE = 0x4206
    PTRACE_INTERRUPT = 0x4207
    WALL = 0x40000000

    def __init__(self, tid):
        self.tid = tid
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.restype = ctypes.c_long
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]

    def _ptrace(self, request):
        if self.libc.ptrace(request, self.tid, None, None) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"ptrace({request}, {self.tid}): {os.strerror(error)}")

    def __enter__(self):
        self._ptrace(self.PTRACE_SEIZE)
        self._ptrace(self.PTRACE_INTERRUPT)
        os.waitpid(self.tid, self.WALL)  # returns once the thread is in its ptrace stop
        return self

    def __exit__(self, *exc):
        self._ptrace(self.PTRACE_DETACH)
        return False


class NotifySocket:
    """A unix datagram socket standing in for systemd's notification socket."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            message = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            message["_received"] = time.monotonic()  # not a systemd field: when it arrived
            with self._lock:
                self.messages.append(message)

    def snapshot(self):
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate, timeout=10):
        return harness.wait_until(
            lambda: next((m for m in self.snapshot() if predicate(m)), None), timeout, 0.02,
            "an sd_notify message")

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


class ReloadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = harness.TempDir()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.upstream_port = harness.free_port(UPSTREAM_IP)
        cls.upstream = harness.RawServer(UPSTREAM_IP, cls.upstream_port, handler=harness.echo_handler)
        cls.addClassCleanup(cls.upstream.stop)
        cls.dns = harness.Dnsmasq({STABLE: [UPSTREAM_IP], ALPHA: [UPSTREAM_IP],
                                   BETA: [UPSTREAM_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)

    def write_config(self, path, variant, revoke=False):
        """A valid config allowing STABLE plus ALPHA (even `variant`) or BETA (odd), or, for
        variant 'invalid', one that fails validation (an unknown service tag) or 'garbage' (not
        TOML at all). `revoke`: policy.revoke_on_reload = true."""
        if variant == "garbage":
            text = "[policy\nallow_hosts = ['unterminated\n"
        elif variant == "invalid":
            text = (f"[policy]\nallow_hosts = [\"{STABLE}\"]\n"
                    f"service_tags_file = \"{harness.shared_dir()}/data/ServiceTags_Public.json\"\n"
                    "service_tags = [\"AzureContainerRegistryy\"]\n")
        else:
            extra = ALPHA if variant % 2 == 0 else BETA
            text = (f"[policy]\nallow_hosts = [\"{STABLE}\", \"{extra}\"]\n"
                    f"ports = [{self.upstream_port}]\n"
                    f"allow_cidrs = [\"{UPSTREAM_IP}/32\"]\n"
                    + ("revoke_on_reload = true\n" if revoke else ""))
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def start_proxy(self, config, env=None, extra=()):
        listen = f"127.0.0.1:{harness.free_port()}"
        proxy = harness.Proxy(["--config", config, "--connect", listen, "--allow-non-tls",
                               "--dns-server", self.dns.address, "--workers", "2", *extra],
                              env=env)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy, listen

    def start_notified_proxy(self, name, watchdog_usec=None):
        """A proxy on the first valid config with NOTIFY_SOCKET (and WATCHDOG_USEC if given) set,
        started and READY; returns (proxy, listen address, NotifySocket)."""
        config = os.path.join(self.tmp.path, f"{name}.toml")
        self.write_config(config, 0)
        notify = NotifySocket(os.path.join(self.tmp.path, f"{name}.sock"))
        self.addCleanup(notify.close)
        env = {"NOTIFY_SOCKET": notify.path}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        proxy, listen = self.start_proxy(config, env=env)
        notify.wait_for(lambda m: m.get("READY") == "1")
        return proxy, listen, notify

    def tunnel(self, listen, host, payload=b"ping"):
        """CONNECT to host; returns (status, reason header, socket or None)."""
        status, headers, _, sock = harness.connect_via_proxy(
            listen, f"{host}:{self.upstream_port}", timeout=10)
        if status != 200:
            sock.close()
            return status, headers.get("x-acr-egress-reason"), None
        sock.sendall(payload)
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < len(payload) and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        self.assertEqual(got, payload)
        return status, None, sock

    def wait_for_service_line(self, proxy, text, count, timeout=10):
        return harness.wait_until(
            lambda: proxy.stderr_text().count(text) >= count or None, timeout, 0.02,
            f"{count} service-log lines containing {text!r}")

    # 20 reloads (every fourth one invalid) under a steady stream of new connections plus long
    # tunnels: no new connection fails, no tunnel drops, and each valid reload applies from the
    # very next connection while an invalid one leaves the previous policy in force.
    def test_twenty_reloads_drop_nothing_and_apply_at_once(self):
        config = os.path.join(self.tmp.path, "reload.toml")
        self.write_config(config, 0)
        notify = NotifySocket(os.path.join(self.tmp.path, "notify.sock"))
        self.addCleanup(notify.close)
        proxy, listen = self.start_proxy(config, env={"NOTIFY_SOCKET": notify.path})
        notify.wait_for(lambda m: m.get("READY") == "1")

        tunnels = []
        for _ in range(4):
            status, _, sock = self.tunnel(listen, ALPHA)
            self.assertEqual(status, 200)
            tunnels.append(sock)

        failures = []
        made = [0]
        stop = threading.Event()

        def stream():
            # Bounded: stops when the test says so, or after 120 s whatever happens.
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    status, reason, sock = self.tunnel(listen, STABLE, b"x" * 64)
                    if sock is not None:
                        sock.close()
                    if status != 200:
                        failures.append((status, reason))
                except (OSError, AssertionError) as error:
                    failures.append(repr(error))
                made[0] += 1

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        self.addCleanup(stop.set)

        allowed, denied = ALPHA, BETA
        ok_reloads = failed_reloads = 0
        for i in range(1, RELOADS + 1):
            variant = ("garbage" if i % 8 == 4 else "invalid") if i % 4 == 0 else i
            self.write_config(config, variant)
            proxy.send_signal(signal.SIGHUP)
            if isinstance(variant, int):
                ok_reloads += 1
                self.wait_for_service_line(proxy, "reloaded the policy", ok_reloads)
                allowed, denied = (ALPHA, BETA) if variant % 2 == 0 else (BETA, ALPHA)
            else:
                failed_reloads += 1
                self.wait_for_service_line(proxy, "reload failed, keeping the old policy",
                                           failed_reloads)
            # The next connection already sees the policy in force.
            status, _, sock = self.tunnel(listen, allowed)
            self.assertEqual(status, 200, f"reload {i} ({variant}): {allowed} refused")
            sock.close()
            status, reason, _ = self.tunnel(listen, denied)
            self.assertEqual((status, reason), (403, "host_not_allowed"),
                             f"reload {i} ({variant}): {denied} not refused")
            # The long tunnels opened before any reload still carry bytes.
            for n, sock in enumerate(tunnels):
                payload = f"reload {i} tunnel {n}".encode()
                sock.sendall(payload)
                self.assertEqual(harness.recv_exact(sock, len(payload)), payload)

        stop.set()
        streamer.join(timeout=30)
        self.assertFalse(streamer.is_alive())
        self.assertEqual(failures, [])
        self.assertGreater(made[0], RELOADS)
        self.assertEqual((ok_reloads, failed_reloads), (15, 5))
        for sock in tunnels:
            sock.close()

        service = proxy.stderr_text()
        self.assertIn(f"(generation {ok_reloads + 1})", service)
        self.assertIn("unknown service tag 'AzureContainerRegistryy'", service)
        self.assertIn(f"rules added: host {BETA}", service)
        self.assertIn(f"rules removed: host {ALPHA}", service)
        # systemd saw RELOADING=1 then READY=1 for every reload, and the failures as STATUS.
        messages = notify.snapshot()
        self.assertEqual(sum(1 for m in messages if m.get("RELOADING") == "1"), RELOADS)
        self.assertEqual(sum(1 for m in messages if m.get("READY") == "1"), RELOADS + 1)
        self.assertEqual(sum(1 for m in messages
                             if "reload failed" in m.get("STATUS", "")), failed_reloads)
        serving = [m["STATUS"] for m in messages if "policy generation" in m.get("STATUS", "")]
        self.assertIn(f"policy generation {ok_reloads + 1}", serving[-1])

        self.assertEqual(proxy.stop(), 0)
        self.assertTrue(any(m.get("STOPPING") == "1" for m in notify.snapshot()))
        lines = [e for e in proxy.access_log() if e.get("target") == ALPHA
                 and e.get("decision") == "allow"]
        long_lived = [e for e in lines if e.get("bytes_up", 0) > 200]
        self.assertEqual(len(long_lived), 4, lines)
        for entry in long_lived:
            self.assertEqual(entry["closed_by"], "client", entry)

    # A stuck-loop watchdog needs keepalives: with WATCHDOG_USEC set the proxy sends WATCHDOG=1
    # at a quarter of the period; without it, none.
    # F14: a reload removes the rule that allowed open tunnels.
    def reload_without_alpha(self, revoke):
        """A proxy on config 0 (STABLE + ALPHA), `revoke` as given; opens a tunnel to ALPHA and
        one to STABLE, and a connection that has sent only part of a CONNECT head for ALPHA;
        then reloads config 1 (STABLE + BETA: ALPHA's rule removed) and waits for the reload.
        Returns (proxy, listen, alpha tunnel, stable tunnel, partial socket)."""
        config = os.path.join(self.tmp.path, f"revoke-{revoke}.toml")
        self.write_config(config, 0, revoke=revoke)
        proxy, listen = self.start_proxy(config)
        status, _, alpha = self.tunnel(listen, ALPHA)
        self.assertEqual(status, 200)
        self.addCleanup(alpha.close)
        status, _, stable = self.tunnel(listen, STABLE)
        self.assertEqual(status, 200)
        self.addCleanup(stable.close)
        host, port = listen.rsplit(":", 1)
        partial = socket.create_connection((host, int(port)), timeout=10)
        self.addCleanup(partial.close)
        partial.sendall(f"CONNECT {ALPHA}:{self.upstream_port} HTTP/1.1\r\n".encode())
        time.sleep(0.2)  # accepted and reading its head under the old policy
        self.write_config(config, 1, revoke=revoke)
        proxy.send_signal(signal.SIGHUP)
        self.wait_for_service_line(proxy, "reloaded the policy", 1)
        time.sleep(0.5)  # each loop handles the reload's revoke event
        return proxy, listen, alpha, stable, partial

    def finish_head(self, sock):
        sock.sendall(f"Host: {ALPHA}:{self.upstream_port}\r\n\r\n".encode())
        return sock.recv(4096).split(b"\r\n")[0]

    def test_reload_keeps_tunnels_of_a_removed_rule_by_default(self):
        """F14, default: tunnels opened under a rule the reload removes keep running (and so
        does a connection already reading its head: it is judged by the policy it was accepted
        with); a new connection to the removed name is refused at once."""
        proxy, listen, alpha, stable, partial = self.reload_without_alpha(revoke=False)
        for sock in (alpha, stable):
            sock.sendall(b"still here")
            self.assertEqual(harness.recv_exact(sock, 10), b"still here")
        self.assertIn(b" 200 ", self.finish_head(partial))
        status, reason, _ = self.tunnel(listen, ALPHA)
        self.assertEqual((status, reason), (403, "host_not_allowed"))

    def test_revoke_on_reload_closes_tunnels_the_new_policy_denies(self):
        """F14, policy.revoke_on_reload = true: the reload closes the tunnel to ALPHA (RST; log
        line reason revoked, closed_by proxy, decision allow since it did relay, a sentence
        saying why) while the tunnel to STABLE, still allowed, carries on; a connection that was
        still reading its head is judged by the new policy (403 host_not_allowed)."""
        proxy, listen, alpha, stable, partial = self.reload_without_alpha(revoke=True)
        self.assertEqual(harness.recv_until_closed(alpha, 5)[1], "rst")
        entry = proxy.wait_for_log(lambda e: e.get("client") == alpha.acr_client)
        self.assertEqual((entry["reason"], entry["closed_by"], entry["decision"]),
                         ("revoked", "proxy", "allow"), entry)
        self.assertIn("revoked by a reload: denied", entry["message"])
        stable.sendall(b"still here")
        self.assertEqual(harness.recv_exact(stable, 10), b"still here")
        line = self.finish_head(partial)
        self.assertIn(b" 403 ", line)
        self.assertIn(b"host_not_allowed", line)
        status, reason, _ = self.tunnel(listen, ALPHA)
        self.assertEqual((status, reason), (403, "host_not_allowed"))

    def test_watchdog_keepalives_follow_watchdog_usec(self):
        proxy, _, notify = self.start_notified_proxy("watchdog", watchdog_usec=800000)
        time.sleep(1.5)
        beats = sum(1 for m in notify.snapshot() if m.get("WATCHDOG") == "1")
        self.assertGreaterEqual(beats, 4)
        self.assertLessEqual(beats, 12)
        proxy.stop()

        proxy, _, quiet = self.start_notified_proxy("quiet")
        time.sleep(1.0)
        self.assertEqual([m for m in quiet.snapshot() if "WATCHDOG" in m], [])
        proxy.stop()

    # The watchdog's point: a loop that hangs while the process lives on must get the service
    # restarted. One worker thread (acr-worker-1) is frozen from outside with ptrace
    # (PTRACE_SEIZE + PTRACE_INTERRUPT stop that one thread; the others keep running), exactly
    # what a loop stuck in a blocking call looks like to the rest of the process. The keepalives
    # must stop within the limit (half the period + one heartbeat) and the log must say why; once
    # the thread runs again they resume.
    def test_watchdog_stops_while_a_loop_hangs_and_resumes_after(self):
        proxy, listen, notify = self.start_notified_proxy("hang", watchdog_usec=800000)
        notify.wait_for(lambda m: m.get("WATCHDOG") == "1")
        status, _, sock = self.tunnel(listen, STABLE)
        self.assertEqual(status, 200)
        sock.close()
        tid = worker_thread(proxy.pid, "acr-worker-1")

        def beats_since(start):
            return [m for m in notify.snapshot()
                    if m.get("WATCHDOG") == "1" and m["_received"] >= start]

        with FrozenThread(tid):
            frozen_at = time.monotonic()
            # Limit 0.4 s + 1 s heartbeat period, checked every 0.2 s: silence by 1.6 s at most.
            harness.wait_until(lambda: "an event loop is stuck" in proxy.stderr_text(), 5, 0.05,
                               "the stuck-loop error")
            silent_from = time.monotonic()
            time.sleep(2.0)
            self.assertEqual(beats_since(silent_from), [])
            self.assertLess(silent_from - frozen_at, 2.5)
            # The process itself lives on, so only the watchdog can get it restarted.
            self.assertTrue(proxy.running())
        thawed_at = time.monotonic()
        harness.wait_until(lambda: beats_since(thawed_at), 5, 0.05, "keepalives after the thaw")
        for _ in range(4):  # both loops serve again (connections spread over them by the kernel)
            status, _, sock = self.tunnel(listen, STABLE)
            self.assertEqual(status, 200)
            sock.close()
        proxy.stop()

    # Socket activation: systemd-socket-activate binds the listener and passes it (LISTEN_FDS);
    # the proxy serves on it, including the connection that was waiting when it started.
    def test_socket_activation_serves_on_the_passed_socket(self):
        config = os.path.join(self.tmp.path, "activation.toml")
        self.write_config(config, 0)
        listen = f"127.0.0.1:{harness.free_port()}"
        env = dict(os.environ, ACR_EGRESS_CONFIG="", ASAN_OPTIONS="detect_leaks=1")
        activator = subprocess.Popen(
            ["systemd-socket-activate", "-l", listen, harness.binary_path(), "--config", config,
             "--connect", listen, "--allow-non-tls", "--dns-server", self.dns.address,
             "--workers", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.addCleanup(lambda: activator.poll() is None and activator.kill())
        # The activator binds first; the proxy starts when the first client arrives.
        harness.wait_until(lambda: _port_open(listen) or None, 10, 0.05, "the activated socket")
        status, _, sock = self.tunnel(listen, ALPHA)
        self.assertEqual(status, 200)
        sock.close()
        status, reason, _ = self.tunnel(listen, BETA)
        self.assertEqual((status, reason), (403, "host_not_allowed"))
        activator.send_signal(signal.SIGTERM)
        out, err = activator.communicate(timeout=30)
        self.assertEqual(activator.returncode, 0, err.decode())
        self.assertIn("socket activation", err.decode())
        self.assertEqual(out.decode().count('"decision":"allow"'), 1, out.decode())

    # A passed socket that matches no configured listener is a startup error, not a silently
    # ignored descriptor.
    def test_socket_activation_refuses_an_unmatched_socket(self):
        listen = f"127.0.0.1:{harness.free_port()}"
        other = f"127.0.0.1:{harness.free_port()}"
        env = dict(os.environ, ACR_EGRESS_CONFIG="", ASAN_OPTIONS="detect_leaks=1")
        activator = subprocess.Popen(
            ["systemd-socket-activate", "-l", listen, harness.binary_path(), "--connect", other],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.addCleanup(lambda: activator.poll() is None and activator.kill())
        harness.wait_until(lambda: _port_open(listen) or None, 10, 0.05, "the activated socket")
        out, err = activator.communicate(timeout=30)
        self.assertNotEqual(activator.returncode, 0)
        self.assertIn("matches no configured listener", err.decode())

    # Issue 12 §4: a reload applies the settings the table marks live and names the others.
    def write_settings_config(self, path, hosts=(STABLE,), sections=""):
        """A config allowing `hosts` on the upstream port, plus the TOML `sections` as given
        ("[limits]\nmax_connections = 1\n")."""
        allow = ", ".join(f'"{host}"' for host in hosts)
        text = (f"[policy]\nallow_hosts = [{allow}]\nports = [{self.upstream_port}]\n"
                f'allow_cidrs = ["{UPSTREAM_IP}/32"]\n' + sections)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def curl_connect_code(self, listen, host):
        """The status curl's CONNECT got from the proxy (`%{http_connect}`): "200" or the
        refusal's. Past the CONNECT the echo upstream answers curl's GET with its own bytes, so
        curl's exit status says nothing here."""
        result = harness.curl("-o", "/dev/null", "-w", "%{http_connect}", "-p", "-x",
                              f"http://{listen}", "--max-time", "5",
                              f"http://{host}:{self.upstream_port}/")
        return result.stdout.strip()

    def reload_and_wait(self, proxy, config_writer, line):
        """Rewrites the config, sends SIGHUP, and returns the service-log line containing
        `line` that the reload wrote."""
        before = proxy.stderr_text().count(line)
        config_writer()
        proxy.send_signal(signal.SIGHUP)
        self.wait_for_service_line(proxy, line, before + 1)
        return [entry for entry in proxy.stderr_text().splitlines() if line in entry][-1]

    def admin_policy(self, admin):
        return json.loads(harness.curl("--max-time", "5", f"http://{admin}/policy").stdout)

    def test_changed_max_connections_applies_after_sighup(self):
        """limits.max_connections lowered in the file applies to the next connection after
        SIGHUP, without a restart: with one tunnel open, curl's CONNECT is refused 503."""
        config = os.path.join(self.tmp.path, "limit.toml")
        self.write_settings_config(config, sections="[limits]\nmax_connections = 100\n")
        proxy, listen = self.start_proxy(config)
        status, _, tunnel = self.tunnel(listen, STABLE)
        self.assertEqual(status, 200)
        self.addCleanup(tunnel.close)
        self.assertEqual(self.curl_connect_code(listen, STABLE), "200")
        line = self.reload_and_wait(
            proxy, lambda: self.write_settings_config(
                config, sections="[limits]\nmax_connections = 1\n"), "reloaded the policy")
        self.assertIn("settings changed: limits.max_connections", line)
        self.assertEqual(self.curl_connect_code(listen, STABLE), "503")
        tunnel.sendall(b"still here")  # the open tunnel is not touched
        self.assertEqual(harness.recv_exact(tunnel, 10), b"still here")
        self.assertEqual(proxy.pid, proxy.pid)  # same process: no restart happened
        self.assertTrue(proxy.running())

    def test_raised_per_client_limit_applies_after_sighup(self):
        """R4: limits.max_connections_per_client raised by a reload applies to the next
        connection: with the limit 1 and one tunnel open from 127.0.0.1, curl's CONNECT is
        refused 503 client_overloaded; after SIGHUP with the limit 3 it gets its tunnel, and the
        open tunnel kept relaying."""
        config = os.path.join(self.tmp.path, "per-client.toml")
        self.write_settings_config(config,
                                   sections="[limits]\nmax_connections_per_client = 1\n")
        proxy, listen = self.start_proxy(config)
        status, _, tunnel = self.tunnel(listen, STABLE)
        self.assertEqual(status, 200)
        self.addCleanup(tunnel.close)
        self.assertEqual(self.tunnel(listen, STABLE)[:2], (503, "client_overloaded"))
        line = self.reload_and_wait(
            proxy, lambda: self.write_settings_config(
                config, sections="[limits]\nmax_connections_per_client = 3\n"),
            "reloaded the policy")
        self.assertIn("settings changed: limits.max_connections_per_client", line)
        self.assertEqual(self.curl_connect_code(listen, STABLE), "200")
        tunnel.sendall(b"still here")
        self.assertEqual(harness.recv_exact(tunnel, 10), b"still here")

    def test_changed_head_timeout_applies_to_new_connections(self):
        """limits.head_timeout shortened by a reload closes a new silent connection after the
        new timeout, while one accepted before the reload keeps the old one."""
        config = os.path.join(self.tmp.path, "head.toml")
        self.write_settings_config(config, sections='[limits]\nhead_timeout = "30s"\n')
        proxy, listen = self.start_proxy(config)
        host, port = listen.rsplit(":", 1)
        old = socket.create_connection((host, int(port)), timeout=10)
        self.addCleanup(old.close)
        time.sleep(0.2)  # accepted under the old settings
        self.reload_and_wait(proxy, lambda: self.write_settings_config(
            config, sections='[limits]\nhead_timeout = "300ms"\n'), "reloaded the policy")
        new = socket.create_connection((host, int(port)), timeout=10)
        self.addCleanup(new.close)
        started = time.monotonic()
        self.assertIn(b"408", new.recv(4096))  # head_timeout's refusal
        self.assertLess(time.monotonic() - started, 5)
        old.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            old.recv(1)  # still waiting for its head under the 30 s limit

    def test_changed_listener_needs_a_restart(self):
        """A listener address changed in the file is not applied: the reload line, the STATUS
        line and /policy name listeners.connect as needing a restart; the old address serves
        on and the new one does not listen."""
        config = os.path.join(self.tmp.path, "listener.toml")
        first = f"127.0.0.1:{harness.free_port()}"
        second = f"127.0.0.1:{harness.free_port()}"
        admin = f"127.0.0.1:{harness.free_port()}"
        self.write_settings_config(config, sections=f'[listeners]\nconnect = ["{first}"]\n')
        notify = NotifySocket(os.path.join(self.tmp.path, "listener.sock"))
        self.addCleanup(notify.close)
        proxy = harness.Proxy(["--config", config, "--allow-non-tls", "--dns-server",
                               self.dns.address, "--admin", admin],
                              env={"NOTIFY_SOCKET": notify.path})
        proxy.start()
        self.addCleanup(proxy.stop)
        self.assertEqual(self.admin_policy(admin)["needs_restart"], [])
        line = self.reload_and_wait(proxy, lambda: self.write_settings_config(
            config, sections=f'[listeners]\nconnect = ["{second}"]\n'), "reloaded the policy")
        self.assertIn("needs a restart: listeners.connect", line)
        self.assertNotIn("settings changed", line)
        self.assertEqual(self.admin_policy(admin)["needs_restart"], ["listeners.connect"])
        notify.wait_for(lambda m: "needs a restart: listeners.connect" in m.get("STATUS", ""))
        self.assertEqual(self.curl_connect_code(first, STABLE), "200")
        self.assertFalse(_port_open(second))

    def test_reload_line_names_every_changed_setting(self):
        """One reload line names each changed setting by its key (limits, dns, log) and the
        policy's change, and the policy listing is not written again."""
        config = os.path.join(self.tmp.path, "names.toml")
        self.write_settings_config(config)
        proxy, listen = self.start_proxy(config)
        sections = ('[limits]\nidle_timeout = "5m"\n[dns]\ntimeout = "2s"\n'
                    '[log]\ndeny_rate = 10\nformat = "json"\n')
        line = self.reload_and_wait(proxy, lambda: self.write_settings_config(
            config, hosts=(STABLE, BETA), sections=sections), "reloaded the policy")
        self.assertIn(f"rules added: host {BETA}", line)
        self.assertIn("settings changed: policy.allow_hosts, dns.timeout, limits.idle_timeout, "
                      "log.deny_rate", line)
        self.assertNotIn("log.format", line)  # json is the default: not a change
        self.assertEqual(proxy.stderr_text().count("reloaded the policy"), 1)
        for listing in ("host patterns:", "allowed prefixes:"):
            self.assertNotIn(listing, proxy.stderr_text())
        # Nothing changed: the line says so.
        line = self.reload_and_wait(proxy, lambda: None, "reloaded the policy (generation 3)")
        self.assertTrue(line.rstrip('"}').endswith("no change"), line)
        self.assertEqual(self.curl_connect_code(listen, BETA), "200")

    def test_changed_log_format_applies_at_once(self):
        """log.format changed to text by a reload: the next connection's access-log line and the
        service log are plain text lines instead of JSON objects."""
        config = os.path.join(self.tmp.path, "format.toml")
        self.write_settings_config(config)
        proxy, listen = self.start_proxy(config)
        mark = proxy.log_mark()
        self.assertEqual(self.curl_connect_code(listen, BETA), "403")
        harness.wait_until(lambda: len(proxy.stdout_lines()) > mark, 10, 0.02, "a JSON line")
        self.assertTrue(proxy.stdout_lines()[mark].startswith("{"), proxy.stdout_lines()[mark])
        self.reload_and_wait(proxy, lambda: self.write_settings_config(
            config, sections='[log]\nformat = "text"\n'), "reloaded the policy")
        mark = proxy.log_mark()
        self.assertEqual(self.curl_connect_code(listen, BETA), "403")
        harness.wait_until(lambda: len(proxy.stdout_lines()) > mark, 10, 0.02, "a text line")
        line = proxy.stdout_lines()[mark]
        self.assertFalse(line.startswith("{"), line)
        self.assertIn("host_not_allowed", line)
        self.reload_and_wait(proxy, lambda: None, "reloaded the policy (generation 3)")
        last = [entry for entry in proxy.stderr_text().splitlines() if "generation 3" in entry][-1]
        self.assertFalse(last.startswith("{"), last)

    def test_bad_config_keeps_the_old_settings_and_policy(self):
        """A reload whose settings are valid but whose policy is not applies neither (the new
        limit of 1 connection is not enforced), and one whose policy is valid but a setting is
        not applies neither (the removed host stays allowed)."""
        config = os.path.join(self.tmp.path, "bad.toml")
        self.write_settings_config(config)
        proxy, listen = self.start_proxy(config)

        def bad_policy():
            self.write_settings_config(
                config, sections="[limits]\nmax_connections = 1\n"
                '[policy.bad]\n')

        line = self.reload_and_wait(proxy, bad_policy, "reload failed, keeping the old policy")
        self.assertIn("policy.bad", line)
        status, _, tunnel = self.tunnel(listen, STABLE)
        self.assertEqual(status, 200)
        self.addCleanup(tunnel.close)
        self.assertEqual(self.curl_connect_code(listen, STABLE), "200")  # limit 1 not applied

        def bad_setting():
            self.write_settings_config(config, hosts=(BETA,),
                                       sections='[limits]\nhead_timeout = "10"\n')

        line = self.reload_and_wait(proxy, bad_setting, "reload failed, keeping the old policy")
        self.assertIn("invalid limits.head_timeout '10'", line)
        self.assertEqual(self.curl_connect_code(listen, STABLE), "200")
        self.assertNotEqual(self.curl_connect_code(listen, BETA), "200")


def _port_open(address):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    unittest.main()
