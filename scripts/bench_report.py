#!/usr/bin/env python3
"""Prints the benchmark figures the README promises, as ratios measured in the same run."""
import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    median = {}
    counters = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name", "median") != "median":
            continue
        name = b["run_name"] if "run_name" in b else b["name"]
        scale = {"ns": 1.0, "us": 1e3, "ms": 1e6}[b.get("time_unit", "ns")]
        median[name] = b["cpu_time"] * scale
        counters[name] = b
    def ns(name):
        return median.get(name)
    print("\n== figures (median CPU time per operation)")
    for name in sorted(median):
        extra = []
        for key in ("allocs_per_lookup", "allocs_per_decision", "patterns"):
            if key in counters[name]:
                extra.append(f"{key}={counters[name][key]:g}")
        print(f"  {name:45s} {median[name]:12.1f} ns  {' '.join(extra)}")
    print("\n== ratios")
    for family in ("V4Random", "V4Inside", "V6Random", "V6Inside"):
        for size in (8192, 65536):
            radix = ns(f"BM_CidrLookup_{family}/{size}")
            binary = ns(f"BM_CidrBinarySearch_{family}/{size}")
            if radix and binary:
                print(f"  CIDR {family} over {size} addresses: CidrSet {radix:.1f} ns, "
                      f"binary search {binary:.1f} ns = {binary / radix:.1f}x")
    for threads in (1, 2):
        cached = ns(f"BM_SlabTunnelCached/real_time/threads:{threads}")
        locked = ns(f"BM_SlabTunnelLocked/real_time/threads:{threads}")
        if cached and locked:
            print(f"  a tunnel's 12 slab slots, {threads} thread(s): cached {cached:.0f} ns, "
                  f"locked {locked:.0f} ns = {locked / cached:.1f}x")
    small, large = ns("BM_HostMatch/25"), ns("BM_HostMatch/10000")
    if small and large:
        print(f"  host match 40,002 patterns / 102 patterns = {large / small:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1])
