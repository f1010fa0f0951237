"""Tables of an overhead.sh run (standard library only).

    python3 loadtests/overhead_table.py loadgen.jsonl

One row per server run (mode a, b or c, repetition n), then per mode the mean over the
repetitions with their spread (min-max), and the differences between modes: the overhead
per request of what one mode runs and the other does not.
"""

import json
import sys
from collections import defaultdict
from statistics import mean

MODES = {
    "a": "auth + limits + ledger",
    "b": "auth off (limits + ledger)",
    "c": "no tenancy, no ledger (baseline build)",
}
FIGURES = ("e2e_mean_ms", "e2e_p50_ms", "e2e_p95_ms")


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    print("| mode | rep | requests | errors | req/s | mean ms | p50 ms | p95 ms | server CPU s |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    per_mode = defaultdict(list)
    for r in rows:
        mode, rep = r["labels"]["mode"], r["labels"]["rep"]
        per_mode[mode].append(r)
        errors = " ".join(f"{k}:{n}" for k, n in r["errors"].items()) or "0"
        cpu = r["server_cpu_s"]
        print(f"| {mode} {MODES[mode]} | {rep} | {r['requests']} | {errors} "
              f"| {r['requests'] / r['wall_s']:.0f} | {r['e2e_mean_ms']:.2f} | {r['e2e_p50_ms']:.2f} "
              f"| {r['e2e_p95_ms']:.2f} | {'-' if cpu is None else f'{cpu:.2f}'} |")

    print("\n| mode | mean ms | p50 ms | p95 ms | server CPU ms / request |")
    print("|---|---:|---:|---:|---:|")
    avg = {}
    for mode in sorted(per_mode):
        rs = per_mode[mode]
        avg[mode] = {f: mean(r[f] for r in rs) for f in FIGURES}
        cells = []
        for f in FIGURES:
            vals = [r[f] for r in rs]
            cells.append(f"{mean(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})")
        cpu = [r["server_cpu_s"] * 1000 / r["requests"] for r in rs if r["server_cpu_s"] is not None]
        cpu_cell = f"{mean(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})" if cpu else "-"
        print(f"| {mode} {MODES[mode]} | {' | '.join(cells)} | {cpu_cell} |")

    print("\n| overhead per request | mean ms | p50 ms | p95 ms |")
    print("|---|---:|---:|---:|")
    for hi, lo, what in (("a", "b", "authentication (key lookup)"),
                         ("b", "c", "limits + ledger"),
                         ("a", "c", "auth + limits + ledger")):
        if hi in avg and lo in avg:
            diffs = " | ".join(f"{avg[hi][f] - avg[lo][f]:+.3f}" for f in FIGURES)
            print(f"| {what} ({hi} - {lo}) | {diffs} |")


if __name__ == "__main__":
    main()
