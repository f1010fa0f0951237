"""What every SDK script of tests/sdk shares: the check that prints or fails, and running a
script's checks on each chat model given as BASE_URL MODEL pairs in argv."""

import sys


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def on_each_model(one_model) -> None:
    """Runs `one_model(base_url, model)` for each BASE_URL MODEL pair of argv."""
    args = sys.argv[1:]
    for base_url, model in zip(args[0::2], args[1::2]):
        one_model(base_url, model)
    print("all checks passed")
