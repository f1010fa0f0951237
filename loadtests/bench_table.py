"""The table every A/B loadtest prints (standard library only): per mode and concurrency,
the median over repetitions of output tokens/s, TTFT p50 and ITL p50, then the ratios a
script asks for. Used by sampling_fields_table.py and structured_table.py."""

import json
from collections import defaultdict
from statistics import median

KEYS = ("output_tok_s", "ttft_p50_ms", "itl_p50_ms")


def modes_table(path):
    """Prints the per-mode table of loadgen's JSON lines at `path`; returns the medians by
    (mode, concurrency)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    runs = defaultdict(list)
    for r in rows:
        runs[(r["labels"]["mode"], r["concurrency"])].append(r)
    med = {}
    print("| mode | concurrency | reps | errors | output tok/s | each rep's tok/s | TTFT p50 ms | ITL p50 ms |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for (mode, conc), rs in sorted(runs.items()):
        m = {k: median(r[k] for r in rs) for k in KEYS}
        med[(mode, conc)] = m
        errors = sum(sum(r["errors"].values()) if isinstance(r["errors"], dict) else r["errors"] for r in rs)
        each = ", ".join(f"{r['output_tok_s']:.1f}" for r in rs)
        print(f"| {mode} | {conc} | {len(rs)} | {errors} | {m['output_tok_s']:.1f} | {each} "
              f"| {m['ttft_p50_ms']:.0f} | {m['itl_p50_ms']:.1f} |")
    print()
    print("| comparison | ratio | asked |")
    print("|---|---:|---|")
    return med


def ratio(med, name, a, b, key, asked):
    """One row of the comparison table: median `key` of run `a` over run `b`."""
    if a in med and b in med and med[b][key]:
        print(f"| {name} | {med[a][key] / med[b][key]:.2f} | {asked} |")
