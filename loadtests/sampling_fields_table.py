"""Table of a sampling-fields.sh run (standard library only).

    python3 loadtests/sampling_fields_table.py loadgen.jsonl
"""

import sys

from bench_table import modes_table, ratio


def main():
    med = modes_table(sys.argv[1])
    for c in (1, 8):
        ratio(med, f"plain / base tok/s, c={c}", ("plain", c), ("base", c), "output_tok_s", "within noise of 1")
        ratio(med, f"logprobs / plain tok/s, c={c}", ("logprobs", c), ("plain", c), "output_tok_s", ">= 0.9")
    ratio(med, "n=4 c=2 / n=1 c=8 tok/s", ("n4", 2), ("plain", 8), "output_tok_s", ">= 1.0")
    ratio(med, "n=4 c=2 / n=1 c=8 TTFT p50", ("n4", 2), ("plain", 8), "ttft_p50_ms", "< 1")


if __name__ == "__main__":
    main()
