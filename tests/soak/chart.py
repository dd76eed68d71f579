#!/usr/bin/python3
"""Draws a soak run's samples (the JSON soak.py writes) as a PNG: RSS, open descriptors and CPU
share of the proxy per second, with the least-squares line over the second half, and the reloads
(valid: green, invalid: red ticks). Needs Debian's python3-matplotlib.

Usage: chart.py SOAK.json OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fit(points):
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points) or 1.0
    k = sum((x - mx) * (y - my) for x, y in points) / sxx
    return k, my - k * mx


def main():
    with open(sys.argv[1]) as f:
        run = json.load(f)
    samples = run["samples"]
    t = [s["t"] for s in samples]
    rows = [("rss_kib", "RSS (MiB)", 1 / 1024.0), ("fds", "open descriptors", 1.0),
            ("cpu_pct", "CPU (% of one core)", 1.0)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 8), sharex=True)
    half = run["duration_s"] / 2
    for ax, (key, label, scale) in zip(axes, rows):
        y = [s[key] * scale for s in samples]
        ax.plot(t, y, linewidth=0.8, color="tab:blue")
        points = [(x, v) for x, v in zip(t, y) if x >= half]
        if len(points) >= 2:
            k, b = fit(points)
            xs = [points[0][0], points[-1][0]]
            ax.plot(xs, [k * x + b for x in xs], color="tab:orange", linewidth=1.5,
                    label=f"second-half fit: {k / scale:+.4g} {key.split('_')[-1]}/s")
            ax.legend(loc="upper left", fontsize=8)
        for when, _, valid in run["reload_events"]:
            ax.axvline(when, color="tab:green" if valid else "tab:red", alpha=0.35,
                       linewidth=0.8)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("seconds")
    ops = run["ops_total"]
    reloads = run["reloads"]
    fig.suptitle(f"acr-egress soak: {run['duration_s']:.0f} s, {ops} operations, "
                 f"{run['unexpected']} unexpected, {reloads['total']} reloads "
                 f"({reloads['invalid']} invalid)", fontsize=11)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=90)


if __name__ == "__main__":
    main()
