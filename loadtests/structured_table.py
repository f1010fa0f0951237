"""Table of a structured-outputs.sh run (standard library only).

    python3 loadtests/structured_table.py loadgen.jsonl

Per mode and concurrency: the median over repetitions of output tokens/s, TTFT p50 and ITL
p50; then the ratios the structured-outputs issue asks for.
"""

import json
import sys
from collections import defaultdict
from statistics import median


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    runs = defaultdict(list)
    for r in rows:
        runs[(r["labels"]["mode"], r["concurrency"])].append(r)
    med = {}
    print("| mode | concurrency | reps | errors | output tok/s | each rep's tok/s | TTFT p50 ms | ITL p50 ms |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for (mode, conc), rs in sorted(runs.items()):
        m = {k: median(r[k] for r in rs) for k in ("output_tok_s", "ttft_p50_ms", "itl_p50_ms")}
        med[(mode, conc)] = m
        errors = sum(sum(r["errors"].values()) if isinstance(r["errors"], dict) else r["errors"] for r in rs)
        each = ", ".join(f"{r['output_tok_s']:.1f}" for r in rs)
        print(f"| {mode} | {conc} | {len(rs)} | {errors} | {m['output_tok_s']:.1f} | {each} "
              f"| {m['ttft_p50_ms']:.0f} | {m['itl_p50_ms']:.1f} |")
    print()
    print("| comparison | ratio | asked |")
    print("|---|---:|---|")

    def ratio(name, a, b, key, asked):
        if a in med and b in med and med[b][key]:
            print(f"| {name} | {med[a][key] / med[b][key]:.2f} | {asked} |")

    for c in (1, 8):
        ratio(f"json_schema / free tok/s, c={c}", ("json", c), ("free", c), "output_tok_s", ">= 0.9")
    ratio("free rows' ITL p50, mixed / all-free batch of 8", ("mix-free", 4), ("all-free", 4),
          "itl_p50_ms", "<= 1.10")


if __name__ == "__main__":
    main()
