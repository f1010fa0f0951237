"""Tables of a scale-out.sh run (standard library only).

    python3 loadtests/scale_out_table.py DIR LIMITER GATEWAYS

DIR holds what the script collected: responses.jsonl (one line per response: t, phase,
tenant, status, kind of the limit that refused it, gateway), events.txt (`NAME VALUE` lines:
phase times, lease counts, the probe's wait, verify's exit code), ledger.json (every usage
record of the run's schema) and verify.txt (`tiergate ledger verify`). Limits are read from
config/tiers.toml. Exit status 1 when the cluster admitted more than a tenant's limit or the
ledger does not verify.
"""

import json
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

TIER = {"demo-commercial": "commercial", "demo-aiss": "aiss", "demo-aiss-special": "aiss-special",
        "demo-research": "research", "demo-sandbox": "sandbox"}
# The limit each tenant's flood load binds (scale-out.sh, phase flood).
FLOOD_KIND = {"demo-commercial": "requests", "demo-sandbox": "requests",
              "demo-research": "requests", "demo-aiss": "tokens"}


def main():
    d, limiter, gateways = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rows = [json.loads(l) for l in (d / "responses.jsonl").read_text().splitlines() if l]
    ledger = json.loads((d / "ledger.json").read_text() or "[]")
    events = {}
    for line in (d / "events.txt").read_text().splitlines():
        name, _, value = line.partition(" ")
        events[name] = value.strip()
    tiers = tomllib.loads(Path("config/tiers.toml").read_text())["tiers"]
    failed = []
    print(f"\n## Scale-out: {gateways} gateways behind HAProxy, limiter `{limiter}`\n")
    flood_table(rows, ledger, events, tiers, gateways, failed)
    kill_table(rows, events)
    outage_table(rows, events)
    ledger_table(rows, ledger)
    verify = (d / "verify.txt").read_text().strip()
    print("\n### `tiergate ledger verify` (exit {})\n\n```\n{}\n```".format(
        events.get("verify_exit", "?"), verify))
    if events.get("verify_exit") != "0":
        failed.append("ledger verify failed")
    if failed:
        print("\nFAILED: " + "; ".join(failed))
        sys.exit(1)


def flood_table(rows, ledger, events, tiers, gateways, failed):
    start, end = float(events["flood_start"]), float(events["flood_end"])
    secs = end - start
    print(f"### Flood ({secs:.1f} s): admitted across the cluster vs the tier's limit\n")
    print("Bound over a window of T s from a full bucket: burst + limit x T / 60 (GCRA; burst = "
          "the per-minute figure). One gateway's own limits would admit up to "
          f"{gateways}x that.\n")
    print("| tenant | tier | limit kind | limit /min | admitted | bound in window | admitted / bound "
          "| refused by kind |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    flood = [r for r in rows if r["phase"] == "flood"]
    for tenant, kind in FLOOD_KIND.items():
        mine = [r for r in flood if r["tenant"] == tenant]
        if not mine:
            continue
        terms = tiers[TIER[tenant]]
        refused = Counter(r["kind"] for r in mine if r["status"] != 200)
        refused_text = " ".join(f"{k}:{n}" for k, n in sorted(refused.items())) or "-"
        if kind == "requests":
            per_min = terms["requests_per_minute"]
            burst = terms.get("burst_requests", per_min)
            admitted = sum(r["status"] == 200 for r in mine)
        else:
            per_min = terms["tokens_per_minute"]
            burst = terms.get("burst_tokens", per_min)
            admitted = sum(r["prompt_tokens"] + r["completion_tokens"] for r in ledger
                           if r["tenant"] == tenant and r["outcome"] == "ok"
                           and start * 1000 <= r["time_ms"] <= end * 1000 + 1000)
        bound = burst + per_min * secs / 60
        ratio = admitted / bound
        print(f"| {tenant} | {TIER[tenant]} | {kind}{' (tokens from the ledger)' if kind == 'tokens' else ''} "
              f"| {per_min} | {admitted} | {bound:.0f} | {ratio:.2f} | {refused_text} |")
        # One request of slack: the window is measured at the client, a little wider than
        # the limiter's.
        slack = 1 if kind == "requests" else 1000
        if admitted > bound + slack:
            failed.append(f"{tenant} admitted {admitted} > bound {bound:.0f} ({kind})")
    print()


def kill_table(rows, events):
    streams = [r for r in rows if r["phase"] == "streams"]
    probes = [r for r in rows if r["phase"] == "probe"]
    print("### kill -9 of gw1 (port {}) holding 2 of demo-research's 4 concurrency leases "
          "(max_concurrent 4)\n".format(events.get("gw1_port", "?")))
    print("| what | value |")
    print("|---|---|")
    print(f"| streams (status: count) | {dict(Counter(r['status'] for r in streams))} "
          "(0: cut by the kill) |")
    ports = Counter((r["gateway"].rsplit(":", 1)[-1], r["status"]) for r in streams)
    print(f"| streams (gateway port, status): count | {dict(ports)} |")
    for name in ("leases_before_kill", "leases_after_kill", "leases_after_probe"):
        members, _, live = events.get(name, "- -").partition(" ")
        print(f"| {name.replace('_', ' ')}: in Redis / unexpired | {members} / {live} |")
    print(f"| stale leases expired after (s since kill, Redis clock) "
          f"| {events.get('stale_leases_expired_after_s', '-')} |")
    print(f"| probe admitted after (s since kill) | {events.get('probe_admitted_after_s', '-')} |")
    print(f"| probes refused by kind | {dict(Counter(r['kind'] for r in probes if r['status'] != 200))} |")
    live_end = float(events["streams_end"]) - float(events["kill"])
    print(f"| surviving streams ended (s since kill) | {live_end:.1f} |")
    print()


def outage_table(rows, events):
    down, up = float(events["redis_down"]), float(events["redis_up"])
    windows = defaultdict(Counter)
    for r in rows:
        if r["phase"] != "outage":
            continue
        when = "before" if r["t"] < down else "during" if r["t"] < up else "after"
        windows[when][f"{r['status']}{' ' + r['kind'] if r['kind'] else ''}"] += 1
    print(f"### Redis outage ({up - down:.1f} s): demo-aiss-special's statuses\n")
    print("| window | responses | status (kind): count |")
    print("|---|---:|---|")
    for when in ("before", "during", "after"):
        c = windows[when]
        text = ", ".join(f"{k}: {n}" for k, n in sorted(c.items())) or "-"
        print(f"| {when} | {sum(c.values())} | {text} |")
    print()


def ledger_table(rows, ledger):
    print("### Ledger rows vs responses, per tenant\n")
    print("Every answer a gateway gave should have a row. Streams cut by the kill got no answer "
          "(status 0) and no row; 5xx from HAProxy itself (no `x-served-by`) none either.\n")
    print("| tenant | responses | 200 | cut | from HAProxy | ledger rows | ledger ok | rows by chain "
          "| answered - rows |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    by_tenant = defaultdict(list)
    for r in rows:
        by_tenant[r["tenant"]].append(r)
    recs = defaultdict(list)
    for r in ledger:
        recs[r["tenant"]].append(r)
    for tenant in sorted(set(by_tenant) | set(recs)):
        mine, led = by_tenant[tenant], recs[tenant]
        cut = sum(r["status"] == 0 for r in mine)
        lb = sum(r["status"] != 0 and not r["gateway"] for r in mine)
        answered = len(mine) - cut - lb
        chains = dict(sorted(Counter(r["chain"] for r in led).items()))
        print(f"| {tenant} | {len(mine)} | {sum(r['status'] == 200 for r in mine)} | {cut} | {lb} "
              f"| {len(led)} | {sum(r['outcome'] == 'ok' for r in led)} | {chains} "
              f"| {answered - len(led)} |")


if __name__ == "__main__":
    main()
