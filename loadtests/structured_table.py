"""Table of a structured-outputs.sh run (standard library only).

    python3 loadtests/structured_table.py loadgen.jsonl
"""

import sys

from bench_table import modes_table, ratio


def main():
    med = modes_table(sys.argv[1])
    for c in (1, 8):
        ratio(med, f"json_schema / free tok/s, c={c}", ("json", c), ("free", c), "output_tok_s", ">= 0.9")
    ratio(med, "free rows' ITL p50, mixed / all-free batch of 8", ("mix-free", 4), ("all-free", 4),
          "itl_p50_ms", "<= 1.10")


if __name__ == "__main__":
    main()
