"""The .deb and its units under a real systemd (PID 1): a Debian 12 tree booted with
systemd-nspawn (nspawn_fixtures.BootedTree), the package installed inside with
`apt-get install ./acr-egress_*.deb`, driven with systemctl as an operator would.

ACR_DEB names the package under test (scripts/check-package builds it from the Release build and
runs this suite). The container has a private network with only `lo`: the test's own peers (an
echo upstream on 127.0.0.3:443, an HTTPS file server for the refresh) listen on the container's
loopback, created from the host in the container's network namespace (`in_container_net`).

One container serves the whole module (a boot costs seconds, the tree copy and install more);
every test starts from the packaged defaults (`reset()`) and undoes its drop-ins.
"""

import ctypes
import json
import os
import re
import signal
import socket
import sys
import subprocess
import threading
import time
import unittest

import harness
import nspawn_fixtures
from test_reload import worker_thread
from test_servicetags_refresh import HttpsFileServer

UNIT = "acr-egress.service"
CONFIG = "/etc/acr-egress/acr-egress.toml"
UPSTREAM = ("127.0.0.3", 443)
DENIED = "denied.example.org"
TAG = "AzureContainerRegistry.WestEurope"
CA_INSIDE = "/etc/acr-egress/test-ca.pem"
TAGS_FILE = "/var/lib/acr-egress/ServiceTags_Public.json"

BOX = None  # the BootedTree shared by the module


def setUpModule():
    global BOX
    reason = nspawn_fixtures.unavailable_reason()
    if reason:
        raise unittest.SkipTest(reason)
    deb = os.environ.get("ACR_DEB")
    if not deb:
        raise unittest.SkipTest("ACR_DEB is not set: scripts/check-package builds the package "
                                "and runs this suite with it")
    BOX = nspawn_fixtures.BootedTree(deb)
    try:
        BOX.start()
        BOX.run(["apt-get", "install", "-y", "-qq", BOX.deb_inside], timeout=300)
    except BaseException:
        BOX.stop()
        raise


def tearDownModule():
    if BOX is not None:
        BOX.stop()


def in_container_net(fn):
    """fn() run by a thread that joined the container's network namespace; sockets it creates
    stay in that namespace whichever thread uses them later."""
    result = {}

    def body():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{BOX.leader}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            result["value"] = fn()
        except BaseException as error:  # re-raised in the caller
            result["error"] = error

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def connect_request(target, timeout=10):
    """(status, reason header, socket) of CONNECT target through 127.0.0.1:3128 in the box."""
    def go():
        status, headers, _, sock = harness.connect_via_proxy("127.0.0.1:3128", target,
                                                              timeout=timeout)
        return status, headers.get("x-acr-egress-reason"), sock
    return in_container_net(go)


def show(prop, unit=UNIT):
    return BOX.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()


def journal(unit=UNIT, since_cursor=None, priority=None):
    """The journal of UNIT (None: the whole journal) after the cursor, as text."""
    argv = ["journalctl", "--no-pager", "-o", "cat"] + (["-u", unit] if unit else [])
    if since_cursor:
        argv += ["--after-cursor", since_cursor]
    if priority:
        argv += ["-p", priority]
    return BOX.run(argv, check=False).stdout


def cursor():
    out = BOX.run(["journalctl", "--no-pager", "-n", "0", "--show-cursor"], check=False).stdout
    match = re.search(r"-- cursor: (\S+)", out)
    return match.group(1) if match else None


def wait_for(predicate, timeout, message):
    harness.wait_until(predicate, timeout=timeout, interval=0.2, message=message)


CONFIG_TEXT = """[listeners]
connect = ["127.0.0.1:3128"]

[policy]
ports = [443]
allow_cidrs = ["127.0.0.3/32"]
{extra_policy}
[proxy]
allow_non_tls = true
{extra_proxy}
[limits]
drain_timeout = "20s"
"""


def write_config(extra_policy="", extra_proxy=""):
    BOX.write(CONFIG, CONFIG_TEXT.format(extra_policy=extra_policy, extra_proxy=extra_proxy))


class EchoUpstream:
    """An echo server on 127.0.0.3:443 inside the box (the tunnels' upstream)."""

    def __init__(self):
        def listen():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(UPSTREAM)
            sock.listen(16)
            return sock
        self.sock = in_container_net(listen)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    @staticmethod
    def echo(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def close(self):
        # shutdown() wakes the accept() of serve(); close() alone would leave the port bound.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


def tunnel_echo(sock, payload=b"ping\n", timeout=10):
    sock.settimeout(timeout)
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


# Freezes one thread of another process (argv[1], a host tid) while the others run on: ptrace
# SEIZE + INTERRUPT stop only that thread (SIGSTOP would stop the process). Unlike
# test_reload.FrozenThread it lives in its own process and reaps the thread's ptrace events, so
# that the process can die (systemd's watchdog SIGABRT) instead of lingering as a traced zombie.
FREEZE_THREAD = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
tid = int(sys.argv[1])
for request in (0x4206, 0x4207):  # PTRACE_SEIZE, PTRACE_INTERRUPT
    if libc.ptrace(request, tid, None, None) != 0:
        sys.exit(f"ptrace {request:#x} {tid}: {os.strerror(ctypes.get_errno())}")
print("frozen", flush=True)
while True:
    try:
        _, status = os.waitpid(tid, 0x40000000)  # __WALL
    except ChildProcessError:
        break
    if not os.WIFSTOPPED(status):
        break  # the thread is gone
    if status >> 16 == 128:  # PTRACE_EVENT_STOP: the frozen state; stay
        continue
    # A signal for this thread (the watchdog's SIGABRT): deliver it, so the process dies.
    libc.ptrace(7, tid, None, ctypes.c_void_p(os.WSTOPSIG(status)))  # PTRACE_CONT
"""


class SystemdUnitsTest(unittest.TestCase):
    def setUp(self):
        self.reset()

    def reset(self):
        """The packaged state: units stopped and disabled, no drop-ins, a known config."""
        BOX.sh("systemctl stop acr-egress.socket acr-egress.service "
               "acr-egress-servicetags.timer acr-egress-servicetags.service 2>/dev/null; "
               "systemctl disable acr-egress.socket acr-egress.service "
               "acr-egress-servicetags.timer 2>/dev/null; "
               "rm -rf /run/systemd/system/acr-egress.service.d "
               "/etc/systemd/system/acr-egress.service.d; "
               "systemctl daemon-reload; systemctl reset-failed; true", timeout=120)
        if BOX.run(["dpkg-query", "-W", "-f=${Status}", "acr-egress"],
                   check=False).stdout != "install ok installed":
            BOX.run(["apt-get", "install", "-y", "-qq", BOX.deb_inside], timeout=300)
        write_config()

    def drop_in(self, text):
        BOX.sh("mkdir -p /run/systemd/system/acr-egress.service.d")
        BOX.write("/run/systemd/system/acr-egress.service.d/test.conf", "[Service]\n" + text)
        BOX.run(["systemctl", "daemon-reload"])

    def start(self):
        BOX.run(["systemctl", "enable", "--now", UNIT], timeout=90)
        self.assertEqual(show("ActiveState"), "active")

    # enable --now: Type=notify reaches READY (active/running only after READY=1) with the
    # proxy's STATUS line; a denied host gets 403 with its reason.
    def test_enable_now_reaches_ready_with_status_and_denies(self):
        self.start()
        self.assertEqual(show("SubState"), "running")
        self.assertEqual(show("UnitFileState"), "enabled")
        self.assertRegex(show("StatusText"), r"^serving; policy generation 1")
        status, reason, sock = connect_request(f"{DENIED}:443")
        sock.close()
        self.assertEqual((status, reason), (403, "host_not_allowed"))

    # systemctl reload: a good config is applied (one journal line naming the change, not the
    # policy listing); a bad one fails the reload, logged at priority err, and the old policy
    # keeps serving. A SIGHUP that bypasses the check logs "reload failed" at err too.
    def test_reload_good_then_bad_keeps_policy(self):
        upstream = EchoUpstream()
        self.addCleanup(upstream.close)
        self.start()
        newly = "newly-allowed.example.net"
        status, reason, sock = connect_request(f"{newly}:443")
        sock.close()
        self.assertEqual((status, reason), (403, "host_not_allowed"))
        mark = cursor()
        write_config(extra_policy=f'allow_hosts = ["{newly}"]')
        BOX.run(["systemctl", "reload", UNIT], timeout=60)
        wait_for(lambda: "generation 2" in show("StatusText"), 20, "generation 2")
        status, reason, sock = connect_request(f"{newly}:443")
        sock.close()
        self.assertNotEqual(reason, "host_not_allowed")
        wait_for(lambda: "reloaded the policy" in journal(since_cursor=mark), 20,
                 "the reload's log line")
        lines = journal(None, since_cursor=mark).splitlines()
        reloaded = [line for line in lines if "reloaded the policy" in line]
        self.assertEqual(len(reloaded), 1, lines)
        self.assertIn(newly, reloaded[0])
        for listing in ("configuration OK", "host patterns:", "allowed prefixes:", "strict-ip:"):
            self.assertFalse([line for line in lines if listing in line], lines)

        mark = cursor()
        refused = "reload refused, keeping the old policy"
        refused_before = journal(None, priority="err").count(refused)
        write_config(extra_policy='allow_hosts = ["[broken"]\nnot toml at all')
        result = BOX.run(["systemctl", "reload", UNIT], check=False, timeout=60)
        self.assertNotEqual(result.returncode, 0, "a bad configuration must fail the reload")
        self.assertEqual(show("ActiveState"), "active")
        # Counted in `journalctl -p err` as an operator reads it (on systemd 252, --after-cursor
        # together with -p misses such stream lines); journald takes them asynchronously.
        try:
            wait_for(lambda: journal(None, priority="err").count(refused) > refused_before, 20,
                     "'reload refused' at err")
        except AssertionError:
            verbose = BOX.run(["journalctl", "--no-pager", "-o", "verbose", "--after-cursor",
                               mark], check=False).stdout
            self.fail(f"no 'reload refused' at err; reload: {result.stdout} {result.stderr}\n"
                      f"{verbose[-6000:]}")
        status, reason, sock = connect_request(f"{newly}:443")
        sock.close()
        self.assertNotEqual(reason, "host_not_allowed")
        status, reason, sock = connect_request(f"{DENIED}:443")
        sock.close()
        self.assertEqual(reason, "host_not_allowed")

        # The proxy's own error lines carry priority err ("<3>" on its journal stream).
        failed_before = journal(priority="err").count("reload failed")
        BOX.run(["systemctl", "kill", "-s", "HUP", "--kill-who=main", UNIT])
        wait_for(lambda: journal(priority="err").count("reload failed") > failed_before, 20,
                 "'reload failed' at priority err")
        self.assertEqual(show("ActiveState"), "active")

    def restarted_by_watchdog(self, freeze):
        # TimeoutAbortSec bounds the wait for a process that does not die of SIGABRT.
        self.drop_in("WatchdogSec=5s\nTimeoutAbortSec=10s\n")
        self.start()
        pid = int(show("MainPID"))
        restarts = int(show("NRestarts"))
        mark = cursor()
        freeze(pid)
        wait_for(lambda: show("MainPID") not in ("0", str(pid)) and show("ActiveState") ==
                 "active", 60, "a restart by the watchdog")
        self.assertEqual(int(show("NRestarts")), restarts + 1)
        self.assertIn("Watchdog timeout", journal(since_cursor=mark))
        return mark

    # A stopped process (SIGSTOP) stops feeding the watchdog: systemd aborts and restarts it.
    def test_watchdog_restarts_stopped_process(self):
        self.restarted_by_watchdog(lambda pid: os.kill(BOX.host_pid(pid), signal.SIGSTOP))

    # A stuck event loop (one worker thread frozen with ptrace, the main thread running on):
    # the proxy logs it at priority err and stops feeding the watchdog; systemd restarts it.
    def test_watchdog_restarts_stuck_event_loop(self):
        tracers = []

        def freeze(pid):
            tid = worker_thread(BOX.host_pid(pid), "acr-worker-0")
            tracer = subprocess.Popen([sys.executable, "-c", FREEZE_THREAD, str(tid)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            tracers.append(tracer)
            self.assertEqual(tracer.stdout.readline().strip(), "frozen")

        def release():
            for tracer in tracers:
                if tracer.poll() is None:
                    tracer.kill()
                tracer.wait(10)
                tracer.stdout.close()
        self.addCleanup(release)
        stuck_before = journal(priority="err").count("an event loop is stuck")
        self.restarted_by_watchdog(freeze)
        self.assertGreater(journal(priority="err").count("an event loop is stuck"), stuck_before)

    # systemctl stop drains: an open tunnel keeps relaying until it closes, and the stop then
    # completes well before TimeoutStopSec; new connections are refused meanwhile.
    def test_stop_drains_open_tunnel(self):
        upstream = EchoUpstream()
        self.addCleanup(upstream.close)
        self.start()
        status, reason, sock = connect_request(f"{UPSTREAM[0]}:{UPSTREAM[1]}")
        self.addCleanup(sock.close)
        self.assertEqual(status, 200, reason)
        self.assertEqual(tunnel_echo(sock, b"before\n"), b"before\n")
        stopper = subprocess.Popen(["nsenter", "-t", str(BOX.leader), "-a", "--",
                                    "systemctl", "stop", UNIT], stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: stopper.poll() is None and stopper.kill())
        wait_for(lambda: show("ActiveState") == "deactivating", 20, "deactivating")
        time.sleep(1)
        self.assertEqual(tunnel_echo(sock, b"while draining\n"), b"while draining\n")
        self.assertIsNone(stopper.poll(), "stop returned while a tunnel was open")
        started = time.monotonic()
        sock.close()
        stopper.wait(timeout=20)
        self.assertLess(time.monotonic() - started, 15)
        self.assertEqual(show("ActiveState"), "inactive")
        self.assertIn("draining on signal 15", journal())

    # Socket activation: connections made while the service restarts wait in the socket's queue
    # and are served by the new process.
    def test_socket_keeps_queued_connections_across_restart(self):
        BOX.run(["systemctl", "enable", "--now", "acr-egress.socket"])
        self.start()
        self.assertEqual(show("TriggeredBy"), "acr-egress.socket")
        old_pid = show("MainPID")
        restart = subprocess.Popen(["nsenter", "-t", str(BOX.leader), "-a", "--",
                                    "systemctl", "restart", UNIT], stdin=subprocess.DEVNULL)
        results = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(results) < 30:
            results.append(connect_request(f"{DENIED}:443", timeout=30))
        restart.wait(timeout=60)
        self.assertEqual(restart.returncode, 0)
        self.assertNotEqual(show("MainPID"), old_pid)
        for status, reason, sock in results:
            sock.close()
            self.assertEqual((status, reason), (403, "host_not_allowed"))
        self.assertGreater(len(results), 5)

    # The refresh: the timer is scheduled; a run against a local HTTPS server installs the file
    # and reloads the proxy (ExecReload works on a minimal Debian), skips an unchanged file, and
    # rejects a truncated one keeping the last good file.
    def test_refresh_timer_and_runs(self):
        BOX.run(["systemctl", "enable", "--now", "acr-egress-servicetags.timer"])
        self.assertEqual(show("ActiveState", "acr-egress-servicetags.timer"), "active")
        self.assertNotIn(show("NextElapseUSecRealtime", "acr-egress-servicetags.timer"),
                         ("", "n/a", "0"))
        with open(os.path.join(harness.shared_dir(), "data", "ServiceTags_Public.json"),
                  "rb") as f:
            good = f.read()
        document = json.loads(good)
        document["changeNumber"] += 1
        changed = json.dumps(document).encode()
        files = {"/good.json": good, "/changed.json": changed,
                 "/truncated.json": good[:len(good) // 2]}
        tmp = harness.TempDir()
        self.addCleanup(tmp.cleanup)
        certs = harness.make_ca_and_cert(tmp.path, ["localhost"], ["127.0.0.1"])
        server = in_container_net(lambda: HttpsFileServer(files, certs["cert"], certs["key"]))
        self.addCleanup(server.stop)
        with open(certs["ca"]) as f:
            BOX.write(CA_INSIDE, f.read())
        self.addCleanup(lambda: os.path.exists(BOX.path(CA_INSIDE)) and
                        os.unlink(BOX.path(CA_INSIDE)))

        def refresh(name):
            BOX.write("/etc/default/acr-egress-servicetags",
                      f"SERVICETAGS_URL={server.url(name)}\nSERVICETAGS_CA_FILE={CA_INSIDE}\n")
            mark = cursor()
            result = BOX.run(["systemctl", "start", "acr-egress-servicetags.service"],
                             check=False, timeout=120)
            return result.returncode, journal("acr-egress-servicetags.service", mark)

        code, log = refresh("good.json")
        self.assertEqual(code, 0, log)
        self.assertIn("installed:", log)
        with open(BOX.path(TAGS_FILE), "rb") as f:
            self.assertEqual(f.read(), good)
        write_config(extra_policy=f'service_tags_file = "{TAGS_FILE}"\n'
                                  f'service_tags = ["{TAG}"]')
        self.start()
        number = document["changeNumber"]
        self.assertIn(f"changeNumber {number - 1}", show("StatusText"))

        code, log = refresh("changed.json")
        self.assertEqual(code, 0, log)
        wait_for(lambda: f"changeNumber {number}" in show("StatusText"), 30,
                 "the reload onto the changed file")
        self.assertIn("generation 2", show("StatusText"))

        code, log = refresh("changed.json")
        self.assertEqual(code, 0, log)
        self.assertIn("unchanged:", log)
        time.sleep(1)
        self.assertIn("generation 2", show("StatusText"))

        code, log = refresh("truncated.json")
        self.assertNotEqual(code, 0, log)
        self.assertIn("rejected", log)
        self.assertEqual(show("Result", "acr-egress-servicetags.service"), "exit-code")
        self.assertEqual(show("ExecMainStatus", "acr-egress-servicetags.service"), "3")
        with open(BOX.path(TAGS_FILE), "rb") as f:
            self.assertEqual(f.read(), changed)
        self.assertIn("generation 2", show("StatusText"))
        self.assertEqual(show("ActiveState"), "active")

    def assert_no_live_unit(self):
        units = BOX.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                         "acr-egress*"]).stdout
        for line in units.splitlines():
            fields = line.split()
            self.assertNotIn(fields[2], ("active", "activating", "reloading", "failed",
                                         "deactivating"), units)
        def try_connect():
            with socket.socket() as sock:
                sock.settimeout(5)
                return sock.connect_ex(("127.0.0.1", 3128))
        refused = in_container_net(try_connect)
        self.assertNotEqual(refused, 0, "port 3128 still accepts connections")

    # dpkg -r, --purge and a reinstall leave no active or half-dead unit (the socket included),
    # and after the reinstall the socket serves again.
    def test_remove_purge_reinstall(self):
        BOX.run(["systemctl", "enable", "--now", "acr-egress.socket",
                 "acr-egress-servicetags.timer"])
        self.start()
        BOX.run(["dpkg", "-r", "acr-egress"], timeout=120)
        self.assert_no_live_unit()
        self.assertTrue(os.path.exists(BOX.path(CONFIG)), "dpkg -r keeps the conffiles")
        BOX.run(["apt-get", "install", "-y", "-qq", BOX.deb_inside], timeout=300)
        BOX.run(["systemctl", "enable", "--now", "acr-egress.socket"])
        status, reason, sock = connect_request(f"{DENIED}:443")
        sock.close()
        self.assertEqual((status, reason), (403, "host_not_allowed"))
        BOX.run(["dpkg", "--purge", "acr-egress"], timeout=120)
        self.assert_no_live_unit()
        for gone in ("/etc/acr-egress", "/var/lib/acr-egress", "/usr/bin/acr-egress"):
            self.assertFalse(os.path.exists(BOX.path(gone)), gone)
        BOX.run(["apt-get", "install", "-y", "-qq", BOX.deb_inside], timeout=300)
        self.assertEqual(BOX.run(["systemctl", "is-enabled", "acr-egress.socket"],
                                 check=False).stdout.strip(), "disabled")
        BOX.run(["systemctl", "enable", "--now", "acr-egress.socket"])
        write_config()
        status, reason, sock = connect_request(f"{DENIED}:443")
        sock.close()
        self.assertEqual((status, reason), (403, "host_not_allowed"))

    # Hardening with the packaged default: exposure 1.5 or less, no CAP_NET_ADMIN; the
    # documented drop-in adds CAP_NET_ADMIN for transparent mode and the proxy runs with it.
    def test_security_exposure_and_transparent_drop_in(self):
        out = BOX.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
        match = re.search(r"Overall exposure level for acr-egress\.service: ([0-9.]+)", out)
        self.assertIsNotNone(match, out[-2000:])
        print(f"\nsystemd-analyze security {UNIT}: {match.group(1)}", flush=True)
        self.assertLessEqual(float(match.group(1)), 1.5, out)
        self.assertNotIn("cap_net_admin", show("CapabilityBoundingSet"))
        BOX.sh("mkdir -p /etc/systemd/system/acr-egress.service.d && cp "
               "/usr/share/doc/acr-egress/examples/systemd/transparent.conf "
               "/etc/systemd/system/acr-egress.service.d/ && systemctl daemon-reload")
        upstream = EchoUpstream()
        self.addCleanup(upstream.close)
        write_config(extra_proxy="mark = 42")
        self.start()
        self.assertIn("cap_net_admin", show("CapabilityBoundingSet"))
        status, reason, sock = connect_request(f"{UPSTREAM[0]}:{UPSTREAM[1]}")
        self.addCleanup(sock.close)
        self.assertEqual(status, 200, reason)
        self.assertEqual(tunnel_echo(sock), b"ping\n")


if __name__ == "__main__":
    unittest.main()
