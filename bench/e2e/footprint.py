#!/usr/bin/python3
"""Footprint of an idle acr-egress (issue 9 section 2): private memory (USS = Private_Clean +
Private_Dirty from /proc/PID/smaps_rollup) once READY=1 has been sent and the process has sat
idle, and the time from exec to READY=1 (sd_notify on a NOTIFY_SOCKET this script listens on).

Two policies: the embedded default, and the real service-tags file with the tags
AzureContainerRegistry + Storage. Each is started --runs times (median reported). The proxy
listens on 127.0.0.1 only and gets no traffic.

Usage: bench/e2e/footprint.py [--binary build/bench/proxy/acr-egress] [--runs 5]
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uss_kib(pid):
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def one_run(binary, extra, settle):
    with tempfile.TemporaryDirectory(prefix="acr-footprint-") as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.05)
        env = dict(os.environ, NOTIFY_SOCKET=path, ACR_EGRESS_CONFIG="")
        argv = [binary, "--connect", f"127.0.0.1:{free_port()}"] + extra
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready_ms = None
        try:
            deadline = t0 + 30
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    data = sock.recv(4096)
                except socket.timeout:
                    continue
                if b"READY=1" in data:
                    ready_ms = (time.monotonic() - t0) * 1000
                    break
            if ready_ms is None:
                raise RuntimeError(f"no READY=1: {proc.stderr.read1(4096) if proc.poll() else ''}")
            time.sleep(settle)
            return ready_ms, uss_kib(proc.pid), rss_kib(proc.pid)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            sock.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(SOURCE_DIR, "build", "bench", "proxy",
                                                         "acr-egress"))
    parser.add_argument("--service-tags", default=os.path.join(
        SOURCE_DIR, "..", "shared", "data", "ServiceTags_Public.json"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=1.0)
    args = parser.parse_args()
    policies = {
        "default policy": [],
        "service tags AzureContainerRegistry + Storage": [
            "--service-tags", os.path.abspath(args.service_tags), "--service-tag",
            "AzureContainerRegistry", "--service-tag", "Storage"],
    }
    results = {}
    for name, extra in policies.items():
        runs = [one_run(args.binary, extra, args.settle) for _ in range(max(1, min(args.runs, 50)))]
        results[name] = {
            "ready_ms_median": statistics.median(r[0] for r in runs),
            "ready_ms_min": min(r[0] for r in runs),
            "uss_mib_median": statistics.median(r[1] for r in runs) / 1024,
            "rss_mib_median": statistics.median(r[2] for r in runs) / 1024,
            "runs": len(runs),
        }
    print("| policy | USS idle (MiB) | RSS idle (MiB) | exec -> READY=1 (ms, median / min) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['uss_mib_median']:.2f} | {r['rss_mib_median']:.2f} | "
              f"{r['ready_ms_median']:.1f} / {r['ready_ms_min']:.1f} |")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
