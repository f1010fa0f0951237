"""Tables and cross-checks of a mixed-tiers.sh run (standard library only).

    python3 loadtests/mixed_tiers_table.py DIR B_START_MS B_END_MS RESEARCH_SPAN_MS FLOOD_SECS

DIR holds what the script collected: loadgen.jsonl (one row per tenant and phase, labelled
tenant= and phase=), ready-before-B.json / ready-after-B.json (GET /ready), ledger.json (every
usage record, from sqlite3 -json) and report.json (`tiergate usage report --format json`).
Phase B is the window [B_START_MS, B_END_MS]: every record of a request that ended in it.
"""

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

MODEL = "smollm2-135m-instruct"
# Weights of config/tiers.toml and the replica's decode slots (max_batch_size).
WEIGHTS = {"commercial": 2.0, "aiss": 2.0, "research": 1.0}
SLOTS = 8


def hkd(micro):
    return f"{micro / 1e6:.4f}"


def ms(v):
    return "-" if v is None else f"{v:.0f}"


def pct(part, whole):
    return "-" if not whole else f"{100.0 * part / whole:.1f}%"


def main():
    d = Path(sys.argv[1])
    b_start, b_end, research_span, flood_secs = (int(float(a)) for a in sys.argv[2:6])
    rows = [json.loads(line) for line in (d / "loadgen.jsonl").read_text().splitlines() if line]
    ledger = json.loads((d / "ledger.json").read_text() or "[]")
    report = json.loads((d / "report.json").read_text())
    admitted = {}
    for when in ("before", "after"):
        ready = json.loads((d / f"ready-{when}-B.json").read_text())
        admitted[when] = ready["models"][MODEL]["admitted_tokens_by_tier"]

    tier_of = {r["tenant"]: r["tier"] for r in ledger}
    run = lambda tenant, phase: next(
        (r for r in rows if r["labels"] == {"tenant": tenant, "phase": phase}), None
    )
    in_b = [r for r in ledger if b_start <= r["time_ms"] <= b_end]
    tiers = sorted({r["tier"] for r in in_b}, key=lambda t: -WEIGHTS.get(t, 0))
    by_tier = defaultdict(list)
    for r in in_b:
        by_tier[r["tier"]].append(r)

    # --- Phase B, per tier -------------------------------------------------------------
    adm = {t: admitted["after"].get(t, 0) - admitted["before"].get(t, 0) for t in tiers}
    slot_ms = {t: sum(r["compute_ms"] for r in by_tier[t] if r["outcome"] == "ok") for t in tiers}
    print(f"\n### Phase B: {flood_secs} s flood, per tier (ledger records that ended in the window)\n")
    print("| tier (tenant) | weight | requests | ok | 429 by reason | other | prompt + completion tok "
          "| admitted tok share | slot-time share | list HKD | subsidy HKD | charge HKD |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for t in tiers:
        recs = by_tier[t]
        tenants = sorted({r["tenant"] for r in recs})
        outcomes = Counter(r["outcome"] for r in recs)
        reasons = Counter(r["reason"] for r in recs if r["outcome"] in ("rate_limited", "over_budget"))
        other = {o: n for o, n in outcomes.items() if o not in ("ok", "rate_limited", "over_budget")}
        tok = sum(r["prompt_tokens"] + r["completion_tokens"] for r in recs)
        print(f"| {t} ({', '.join(tenants)}) | {WEIGHTS.get(t, '?'):g} | {len(recs)} | {outcomes['ok']} "
              f"| {' '.join(f'{k}:{n}' for k, n in sorted(reasons.items())) or '0'} "
              f"| {' '.join(f'{k}:{n}' for k, n in sorted(other.items())) or '-'} | {tok} "
              f"| {pct(adm[t], sum(adm.values()))} | {pct(slot_ms[t], sum(slot_ms.values()))} "
              f"| {hkd(sum(r['list_micro_hkd'] for r in recs))} "
              f"| {hkd(sum(r['subsidy_micro_hkd'] for r in recs))} "
              f"| {hkd(sum(r['charge_micro_hkd'] for r in recs))} |")
    total_w = sum(WEIGHTS[t] for t in tiers if t in WEIGHTS)
    print(f"\nWeighted share while all wait: " + ", ".join(
        f"{t} {100 * WEIGHTS[t] / total_w:.0f}% ({SLOTS * WEIGHTS[t] / total_w:.1f} slots)"
        for t in tiers if t in WEIGHTS) + ". Admitted tokens: prompt + max_tokens at admission "
        "(GET /ready, after minus before B); slot-time: sum of compute_ms of the tier's ok requests.")

    # --- Per tenant, from the load generator ---------------------------------------------
    print("\n### Phase B, per tenant (load generator)\n")
    print("| tenant | conc | requests | ok | errors | out tok/s | TTFT p50 / p95 ms | e2e p50 / p95 ms |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for tenant in ("demo-commercial", "demo-aiss", "demo-research"):
        r = run(tenant, "B")
        if r:
            errors = " ".join(f"{k}:{n}" for k, n in sorted(r["errors"].items())) or "0"
            print(f"| {tenant} | {r['concurrency']} | {r['requests']} | {r['ok']} | {errors} "
                  f"| {r['output_tok_s']:.1f} | {ms(r['ttft_p50_ms'])} / {ms(r['ttft_p95_ms'])} "
                  f"| {ms(r['e2e_p50_ms'])} / {ms(r['e2e_p95_ms'])} |")

    # --- Research latency against its fair share -----------------------------------------
    a, b, full = run("demo-research", "A"), run("demo-research", "B"), run("demo-commercial", "A2")
    share = SLOTS * WEIGHTS["research"] / total_w
    factor = max(1.0, b["concurrency"] / share)
    bound = factor * full["e2e_p95_ms"]
    print("\n### demo-research (c=2, 16 requests): alone, under the flood, and its fair-share bound\n")
    print("| run | TTFT p50 / p95 ms | ITL p50 / p95 ms | e2e p50 / p95 ms |")
    print("|---|---:|---:|---:|")
    for name, r in (("A: research alone", a), ("A2: full batch, no queue (commercial c=8)", full),
                    ("B: research under the flood", b)):
        print(f"| {name} | {ms(r['ttft_p50_ms'])} / {ms(r['ttft_p95_ms'])} "
              f"| {r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f} "
              f"| {ms(r['e2e_p50_ms'])} / {ms(r['e2e_p95_ms'])} |")
    verdict = "holds" if b["e2e_p95_ms"] <= bound else "EXCEEDED"
    print(f"\nFair-share bound on research's e2e p95 under the flood: {factor:.2f} x A2 p95 = "
          f"{bound:.0f} ms (its {b['concurrency']} streams against {share:.1f} slots owed by weight); "
          f"measured {b['e2e_p95_ms']:.0f} ms ({b['e2e_p95_ms'] / a['e2e_p95_ms']:.1f}x alone): {verdict}.")
    if research_span / 1000 > flood_secs:
        print(f"WARNING: research ran {research_span / 1000:.0f} s, past the {flood_secs} s flood: "
              "its last requests saw no flood; raise FLOOD_SECS.")

    # --- Cross-checks ----------------------------------------------------------------------
    print("\n### Checks\n")
    print("| tier | loadgen requests (all phases) | ledger records | report requests | |")
    print("|---|---:|---:|---:|---|")
    sent = Counter()
    for r in rows:
        sent[tier_of.get(r["labels"]["tenant"], "?")] += r["requests"]
    recorded = Counter(r["tier"] for r in ledger)
    reported = Counter()
    for row in report["rows"]:
        reported[row["tier"]] += row["requests"]
    ok = True
    for t in sorted(set(sent) | set(recorded) | set(reported)):
        same = sent[t] == recorded[t] == reported[t]
        ok &= same
        print(f"| {t} | {sent[t]} | {recorded[t]} | {reported[t]} | {'OK' if same else 'MISMATCH'} |")
    sums = {
        "requests": len(ledger),
        "prompt_tokens": sum(r["prompt_tokens"] for r in ledger),
        "completion_tokens": sum(r["completion_tokens"] for r in ledger),
        "list_micro_hkd": sum(r["list_micro_hkd"] for r in ledger),
        "subsidy_micro_hkd": sum(r["subsidy_micro_hkd"] for r in ledger),
        "charge_micro_hkd": sum(r["charge_micro_hkd"] for r in ledger),
    }
    for k, v in sums.items():
        same = report["totals"][k] == v
        ok &= same
        print(f"| total {k} | | {v} | {report['totals'][k]} | {'OK' if same else 'MISMATCH'} |")
    split = all(r["list_micro_hkd"] == r["subsidy_micro_hkd"] + r["charge_micro_hkd"] for r in ledger)
    ok &= split
    print(f"| every record: list = subsidy + charge | | {len(ledger)} | | {'OK' if split else 'MISMATCH'} |")
    for tenant in ("demo-commercial", "demo-aiss", "demo-research"):
        r, t = run(tenant, "B"), tier_of.get(tenant)
        lg429 = r["errors"].get("429", 0) if r else 0
        led = by_tier.get(t, [])
        led429 = sum(1 for x in led if x["outcome"] in ("rate_limited", "over_budget"))
        same = (r["requests"] if r else 0) == len(led) and lg429 == led429
        ok &= same
        print(f"| B {t}: requests / 429s | {r['requests'] if r else 0} / {lg429} | {len(led)} / {led429} "
              f"| | {'OK' if same else 'MISMATCH'} |")
        tokens = sum(x["prompt_tokens"] + x["completion_tokens"] for x in led if x["outcome"] == "ok")
        same = tokens == adm.get(t, 0)
        ok &= same
        print(f"| B {t}: tokens of ok records vs /ready admitted | | {tokens} | {adm.get(t, 0)} (ready) "
              f"| {'OK' if same else 'MISMATCH'} |")
    print(f"\nAll checks: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
