"""A Debian 12 tree booted under systemd (PID 1) with systemd-nspawn, for the package and unit
tests (test_systemd_units.py).

- The tree: `debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm` from the
  machine's own Debian mirror (its apt sources), with `apt-get update` done, cached in
  $ACR_NSPAWN_CACHE (default /var/cache/acr-egress-nspawn; `rm -rf` it to start over). Each
  BootedTree works in a copy of it, deleted when it stops: nothing of the container outlives it.
- The package goes in with `apt-get install ./acr-egress_*.deb` inside the booted container, so
  its Depends resolve as on a user's machine. The container has a private network (only `lo`),
  so the packages it needs are downloaded first (`apt-get install --download-only`, host network,
  not booted) into $ACR_NSPAWN_CACHE/archives and copied into the tree's own archive folder.
- Booted with `systemd-nspawn --boot --register=no --keep-unit --private-network` (the host runs
  no system bus); commands run inside with `nsenter -t LEADER -a`, LEADER being the container's
  PID 1 seen from the host. `net()` runs a host program in the container's network namespace
  only (host curl/python against the container's 127.0.0.1).

Needs root, debootstrap, systemd-container (systemd-nspawn) and util-linux (nsenter).
"""

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

SUITE = "bookworm"
INCLUDE = "systemd,systemd-sysv,dbus"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir():
    return os.environ.get("ACR_NSPAWN_CACHE", "/var/cache/acr-egress-nspawn")


def unavailable_reason():
    """Why this machine cannot boot a tree, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn, nsenter)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-deps --test)"
    return None


def host_mirror():
    """The machine's Debian mirror: the first URI of its apt sources that carries bookworm."""
    if os.environ.get("ACR_NSPAWN_MIRROR"):
        return os.environ["ACR_NSPAWN_MIRROR"]
    sources = "/etc/apt/sources.list.d"
    texts = []
    if os.path.isdir(sources):
        texts += [os.path.join(sources, n) for n in sorted(os.listdir(sources))
                  if n.endswith(".sources")]
    for path in texts:
        uri = None
        with open(path) as f:
            for line in f:
                if line.startswith("URIs:"):
                    uri = line.split()[1]
                elif line.startswith("Suites:") and SUITE in line.split()[1:] and uri:
                    return uri
    for path in ["/etc/apt/sources.list"] + [
            os.path.join(sources, n) for n in sorted(os.listdir(sources)) if n.endswith(".list")]:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                words = line.split()
                if words[:1] == ["deb"] and SUITE in words:
                    for word in words[1:]:
                        if re.match(r"^[a-z]+://", word):
                            return word
    return "http://deb.debian.org/debian"


def _run(argv, timeout=600, check=True, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@contextlib.contextmanager
def _locked(path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_tree():
    """The cached pristine tree (built on first use, ~1 min with a near mirror)."""
    root = cache_dir()
    os.makedirs(os.path.join(root, "archives", "partial"), exist_ok=True)
    base = os.path.join(root, f"{SUITE}-systemd")
    mirror = host_mirror()
    stamp = os.path.join(base, ".acr-egress-tree")
    with _locked(os.path.join(root, ".lock")):
        if os.path.exists(stamp):
            with open(stamp) as f:
                if f.read().strip() == f"{mirror} {INCLUDE}":
                    return base
        tmp = base + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
        _run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, tmp, mirror],
             timeout=1200)
        # No getty on a console nobody reads; a fixed machine id is not wanted either.
        for unit in ("console-getty.service", "getty@.service"):
            link = os.path.join(tmp, "etc/systemd/system", unit)
            if not os.path.lexists(link):
                os.symlink("/dev/null", link)
        with open(os.path.join(tmp, "etc/machine-id"), "w"):
            pass
        _nspawn_run(tmp, ["apt-get", "update", "-qq"])
        for name in os.listdir(os.path.join(tmp, "var/cache/apt/archives")):
            if name.endswith(".deb"):
                os.unlink(os.path.join(tmp, "var/cache/apt/archives", name))
        with open(os.path.join(tmp, ".acr-egress-tree"), "w") as f:
            f.write(f"{mirror} {INCLUDE}\n")
        os.rename(tmp, base)
    return base


def _nspawn_run(tree, argv, binds=(), timeout=600):
    """Runs ARGV in TREE without booting, on the host's network (apt reaches the mirror)."""
    cmd = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe",
           "--resolv-conf=copy-host", "-D", tree, "-E", f"PATH={PATH}",
           "-E", "DEBIAN_FRONTEND=noninteractive"]
    for source, target in binds:
        cmd.append(f"--bind={source}:{target}")
    return _run(cmd + ["--"] + list(argv), timeout=timeout)


def _status_fields(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def _children(pid):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if _status_fields(name).get("PPid") == [str(pid)]:
                out.append(int(name))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


class BootedTree:
    """A copy of the cached tree booted with systemd-nspawn; use as a context manager.

    deb: the package to make installable offline (its dependencies are downloaded first)."""

    def __init__(self, deb):
        self.deb = os.path.abspath(deb)
        self.tmp = tempfile.mkdtemp(prefix="acr-nspawn-", dir="/var/tmp")
        self.tree = os.path.join(self.tmp, "root")
        self.process = None
        self.leader = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        base = base_tree()
        _run(["cp", "-a", "--reflink=auto", base, self.tree], timeout=600)
        # apt's daily timers would take the dpkg lock at random in the middle of a test.
        for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
                     "e2scrub_all.timer", "fstrim.timer"):
            link = os.path.join(self.tree, "etc/systemd/system", unit)
            if not os.path.lexists(link):
                os.symlink("/dev/null", link)
        os.makedirs(os.path.join(self.tree, "deb"))
        shutil.copy(self.deb, os.path.join(self.tree, "deb"))
        self.deb_inside = "/deb/" + os.path.basename(self.deb)
        # The shared download cache is bound only for the download, under the cache's lock
        # (concurrent runs share it); the booted container gets its own copy of the files.
        archives = os.path.join(cache_dir(), "archives")
        binds = [(archives, "/var/cache/acr-archives")]
        download = ["apt-get", "install", "-y", "-qq", "--download-only",
                    "-o", "Dir::Cache::Archives=/var/cache/acr-archives", self.deb_inside]
        with _locked(os.path.join(cache_dir(), ".lock")):
            try:
                _nspawn_run(self.tree, download, binds)
            except RuntimeError:
                # Lists older than the mirror's packages: refresh them once.
                _nspawn_run(self.tree, ["apt-get", "update", "-qq"])
                _nspawn_run(self.tree, download, binds)
            own = os.path.join(self.tree, "var/cache/apt/archives")
            for name in os.listdir(archives):
                if name.endswith(".deb"):
                    shutil.copy(os.path.join(archives, name), own)
        self.log_path = os.path.join(self.tmp, "console.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
             "--private-network", "--console=read-only", "-D", self.tree,
             f"--machine=acr-egress-test-{os.getpid()}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.leader is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.process.returncode}: "
                                   f"{self.console()}")
            self.leader = self._find_leader()
            time.sleep(0.1)
        if self.leader is None:
            raise RuntimeError("the container's systemd did not start: " + self.console())
        # A boot takes about 2 s on an idle machine; a loaded CI runner gets far more.
        private = f"/proc/{self.leader}/root/run/systemd/private"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not os.path.exists(private):
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        if not os.path.exists(private):
            raise RuntimeError("the container's systemd opened no private socket: " +
                               self.console())
        result = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                          timeout=180)
        state = result.stdout.strip()
        if state not in ("running", "degraded"):
            raise RuntimeError(f"the container did not boot: {state} {result.stderr}\n"
                               f"{self.console()}")
        self.boot_state = state

    def _find_leader(self):
        """The container's PID 1 seen from the host: below nspawn, comm systemd, NSpid ... 1."""
        queue = [self.process.pid]
        for _ in range(4):
            next_queue = []
            for pid in queue:
                for child in _children(pid):
                    try:
                        fields = _status_fields(child)
                    except FileNotFoundError:
                        continue
                    if fields.get("Name") == ["systemd"] and fields.get("NSpid", [""])[-1] == "1":
                        return child
                    next_queue.append(child)
            queue = next_queue
        return None

    def console(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except (AttributeError, OSError):
            return ""

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            # nspawn turns SIGTERM into an orderly shutdown of the container's systemd.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if getattr(self, "log", None):
            self.log.close()
        # The container's last writes (its journal) can land while the tree is being removed.
        for _ in range(10):
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not os.path.exists(self.tmp):
                break
            time.sleep(0.5)

    # -- inside the container ------------------------------------------------------------------
    def run(self, argv, check=True, timeout=120, input=None):
        """ARGV inside the container (all its namespaces), with a clean environment."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i",
               f"PATH={PATH}", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
               "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"] + list(argv)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def sh(self, script, check=True, timeout=120):
        return self.run(["/bin/sh", "-c", script], check=check, timeout=timeout)

    def net(self, argv, **kwargs):
        """A host program in the container's network namespace only."""
        return ["nsenter", "-t", str(self.leader), "-n", "--"] + list(argv)

    def path(self, inside):
        """The host path of a file inside the running container."""
        return f"/proc/{self.leader}/root{inside}"

    def write(self, inside, text, mode=0o644):
        with open(self.path(inside), "w") as f:
            f.write(text)
        os.chmod(self.path(inside), mode)

    def host_pid(self, pid):
        """The host pid of the container's process PID."""
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                fields = _status_fields(name)
            except (FileNotFoundError, ProcessLookupError):
                continue
            nspid = fields.get("NSpid", [])
            if len(nspid) > 1 and nspid[-1] == str(pid):
                try:
                    if os.readlink(f"/proc/{name}/ns/pid") == os.readlink(
                            f"/proc/{self.leader}/ns/pid"):
                        return int(name)
                except OSError:
                    continue
        return None
