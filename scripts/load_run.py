#!/usr/bin/env python3
"""A simple end-to-end load run of the connect listener, on loopback only.

Starts a local TCP echo upstream on 127.0.0.2 and acr-egress (--allow-non-tls, the upstream's
address allowed), then measures, from /proc:
  - CPU time (user+sys) of the proxy per short tunnel: N sequential CONNECT + 1 KiB echo + close;
  - memory per idle tunnel: RSS with M open idle tunnels minus RSS before them, divided by M.
Usage: scripts/load_run.py BINARY [--tunnels 2000] [--idle 1000]
"""
import argparse
import os
import resource
import signal
import socket
import subprocess
import threading
import time


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def echo_server(host, port, stop):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(4096)
    server.settimeout(0.2)

    def serve(conn):
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return

    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    server.close()


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_tunnel(proxy_port, target):
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("proxy closed: " + response.decode(errors="replace"))
        response += chunk
    if not response.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(response.decode(errors="replace"))
    return s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--tunnels", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    upstream_port = free_port("127.0.0.2")
    proxy_port = free_port("127.0.0.1")
    stop = threading.Event()
    threading.Thread(target=echo_server, args=("127.0.0.2", upstream_port, stop),
                     daemon=True).start()
    proxy = subprocess.Popen(
        [args.binary, "--connect", f"127.0.0.1:{proxy_port}", "--workers", "1",
         "--allow-non-tls", "--allow-cidr", "127.0.0.2/32", "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", proxy_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    target = f"127.0.0.2:{upstream_port}"
    payload = b"x" + os.urandom(1023)  # not TLS-like: the tunnel is relayed as non-TLS
    try:
        cpu_before = proc_cpu_seconds(proxy.pid)
        started = time.time()
        for _ in range(args.tunnels):
            s = open_tunnel(proxy_port, target)
            s.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += s.recv(65536)
            assert received == payload
            s.close()
        elapsed = time.time() - started
        cpu = proc_cpu_seconds(proxy.pid) - cpu_before
        print(f"short tunnels: {args.tunnels} in {elapsed:.2f} s "
              f"({args.tunnels / elapsed:.0f}/s); proxy CPU {cpu * 1e6 / args.tunnels:.1f} us "
              f"per tunnel (CONNECT + 1 KiB echo + close)")
        time.sleep(0.5)
        rss_before = proc_rss_kib(proxy.pid)
        idle = []
        for _ in range(args.idle):
            s = open_tunnel(proxy_port, target)
            s.sendall(b"x")  # into the relay state, as a real tunnel after its handshake
            assert s.recv(1) == b"x"
            idle.append(s)
        time.sleep(0.5)
        rss_after = proc_rss_kib(proxy.pid)
        print(f"idle tunnels: {args.idle}; proxy RSS {rss_before} KiB -> {rss_after} KiB = "
              f"{(rss_after - rss_before) * 1024 / args.idle:.0f} bytes per idle tunnel")
        for s in idle:
            s.close()
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=30)
        stop.set()


if __name__ == "__main__":
    main()
