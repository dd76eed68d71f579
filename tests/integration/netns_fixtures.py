"""Network namespaces for the transparent-listener tests.

A NetNs is a private network namespace named `acrit-<pid>-<random>` with only `lo` (up) and the
documentation-range addresses the test asks for (on `lo`: the kernel here may lack the `dummy`
module, and an address on `lo` is just as local). Nothing in it routes anywhere else, so no
packet a test sends there can leave it.

`enter()` moves the calling thread (the unittest main thread) into the namespace with setns(2);
threads and processes it starts afterwards (harness.Proxy, Dnsmasq, TlsServer, curl, openssl)
live there too, so the harness API works unchanged. `argv()` prefixes `ip netns exec NAME`, which
additionally bind-mounts /etc/netns/NAME/{hosts,resolv.conf} over /etc for clients that resolve
names themselves (skopeo): they then read the test's hosts file and query only a resolver inside
the namespace, never the machine's.

Cleanup (namespace, its nft/iptables rules, /etc/netns/NAME) happens in destroy(), which the
tests register with addClassCleanup/addCleanup. Namespaces left by a killed run (the pid in the
name is gone) are swept at the next start, together with the processes still inside them.
"""

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import uuid

CLONE_NEWNET = 0x40000000
NETNS_PREFIX = "acrit-"
NETNS_ETC = "/etc/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _run(argv, timeout=30, check=True, input_text=None):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            input=input_text)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result


def sweep_stale():
    """Deletes namespaces (and their /etc/netns dirs) left by runs whose process is gone."""
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines()[:1000]:
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(NETNS_PREFIX + r"(\d+)-[0-9a-f]+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            # Children of the killed run may still live inside: end them by pid first.
            pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids[:1000]:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run(["ip", "netns", "del", name], check=False)
            shutil.rmtree(os.path.join(NETNS_ETC, name), ignore_errors=True)


def veth(a, a_name, a_addresses, b, b_name, b_addresses):
    """A veth pair between namespaces `a` and `b` (interfaces `a_name`, `b_name`, up), with the
    given addresses in CIDR form ("198.51.100.1/24", "2001:db8:1::1/64"). The pair goes away with
    either namespace."""
    _run(["ip", "link", "add", a_name, "netns", a.name, "type", "veth", "peer", "name", b_name,
          "netns", b.name])
    for ns, name, addresses in ((a, a_name, a_addresses), (b, b_name, b_addresses)):
        for address in addresses:
            extra = ["nodad"] if ":" in address else []
            ns.run(["ip", "addr", "add", address, "dev", name] + extra)
        ns.run(["ip", "link", "set", name, "up"])


class NetNs:
    def __init__(self, addresses=()):
        self.name = f"{NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.addresses = list(addresses)
        self.created = False
        self._home_fd = None

    def create(self):
        sweep_stale()
        _run(["ip", "netns", "add", self.name])
        self.created = True
        _run(self.argv(["ip", "link", "set", "lo", "up"]))
        for address in self.addresses:
            prefix = "/128" if ":" in address else "/32"
            # nodad: a documentation address on lo is usable at once (no tentative state).
            extra = ["nodad"] if ":" in address else []
            _run(self.argv(["ip", "addr", "add", address + prefix, "dev", "lo"] + extra))
        return self

    def argv(self, command):
        return ["ip", "netns", "exec", self.name] + list(command)

    def run(self, command, timeout=30, check=True, input_text=None):
        return _run(self.argv(command), timeout=timeout, check=check, input_text=input_text)

    def write_etc(self, hosts, nameserver="127.0.0.1"):
        """/etc/netns/NAME/hosts (`hosts`: {name: address}) and resolv.conf, which `ip netns
        exec` bind-mounts over /etc/hosts and /etc/resolv.conf for the processes it starts."""
        directory = os.path.join(NETNS_ETC, self.name)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n::1 localhost\n")
            for name, address in hosts.items():
                f.write(f"{address} {name}\n")
        with open(os.path.join(directory, "resolv.conf"), "w") as f:
            f.write(f"nameserver {nameserver}\noptions timeout:1 attempts:1\n")

    def redirect_443(self, to_port, mark):
        """Redirects locally generated TCP to port 443 (IPv4 and IPv6) to `to_port`, except
        packets carrying `mark`: nftables, family inet; falls back to iptables + ip6tables.
        Returns the name of the tool that installed the rules."""
        ruleset = f"""
table inet acr_egress_test {{
  chain output {{
    type nat hook output priority -100; policy accept;
    meta l4proto tcp tcp dport 443 meta mark != {mark} redirect to :{to_port}
  }}
}}
"""
        result = self.run(["nft", "-f", "-"], check=False, input_text=ruleset)
        if result.returncode == 0:
            return "nft"
        for tool in ("iptables", "ip6tables"):
            self.run([tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "443",
                      "-m", "mark", "!", "--mark", str(mark), "-j", "REDIRECT",
                      "--to-ports", str(to_port)])
        return "iptables"

    def ruleset_text(self):
        return self.run(["nft", "list", "ruleset"], check=False).stdout

    @contextlib.contextmanager
    def entered(self):
        """Runs the body with the calling thread inside the namespace."""
        self.enter()
        try:
            yield self
        finally:
            self.leave()

    def enter(self):
        if self._home_fd is not None:
            return
        self._home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
        except BaseException:
            os.close(self._home_fd)
            self._home_fd = None
            raise
        finally:
            os.close(target)

    def leave(self):
        if self._home_fd is None:
            return
        try:
            _setns(self._home_fd)
        finally:
            os.close(self._home_fd)
            self._home_fd = None

    def destroy(self):
        """Leaves the namespace and deletes it with everything in it (its rules included) and
        its /etc/netns directory. Idempotent."""
        self.leave()
        if self.created:
            # Processes still inside keep it alive but unnamed; the tests stop theirs first.
            _run(["ip", "netns", "del", self.name], check=False)
            self.created = False
        shutil.rmtree(os.path.join(NETNS_ETC, self.name), ignore_errors=True)


def forwarding_gateway(client_addresses, gateway_lan, wan_addresses, gateway_wan, lan_if):
    """Three namespaces joined by veth pairs: client (eth0) -- gateway (`lan_if`, "acr-wan",
    forwarding on) -- wan (eth0), each side's default routes via the gateway. Addresses are
    (v4, v6) pairs without prefix (/24 and /64). Returns (client, gateway, wan), created; the
    caller destroys them."""
    client, gateway, wan = NetNs(), NetNs(), NetNs()
    namespaces = (client, gateway, wan)
    try:
        for ns in namespaces:
            ns.create()
        veth(client, "eth0", [f"{client_addresses[0]}/24", f"{client_addresses[1]}/64"],
             gateway, lan_if, [f"{gateway_lan[0]}/24", f"{gateway_lan[1]}/64"])
        veth(wan, "eth0", [f"{wan_addresses[0]}/24", f"{wan_addresses[1]}/64"],
             gateway, "acr-wan", [f"{gateway_wan[0]}/24", f"{gateway_wan[1]}/64"])
        for ns, (v4, v6) in ((client, gateway_lan), (wan, gateway_wan)):
            ns.run(["ip", "route", "add", "default", "via", v4])
            ns.run(["ip", "-6", "route", "add", "default", "via", v6])
        gateway.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        gateway.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
    except BaseException:
        for ns in namespaces:
            ns.destroy()
        raise
    return namespaces
