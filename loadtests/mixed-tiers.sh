#!/usr/bin/env bash
# Mixed-tier load run: does a flood from one tenant raise another tier's latency beyond its
# fair share, and do the ledger, the usage report and the load generator agree on every
# request? One server, its own keys file and SQLite ledger in a temporary directory.
#
#   bash loadtests/mixed-tiers.sh
#
# Phases (streamed chat, 64 output tokens, ignore_eos, same prompt for everybody):
#   A   demo-research alone, closed loop c=2, 16 requests: its latency with the replica free;
#   A2  demo-commercial alone, c=8 = max_batch_size: a request in a full batch, no queue
#       (the reference of the fair-share bound below);
#   B   FLOOD_SECS of demo-commercial at c=24 (above its max_concurrent 16: the extra
#       workers get 429 concurrency and back off BACKOFF_MS, as a client would) and
#       demo-aiss at c=2; RESEARCH_DELAY_SECS in, demo-research repeats phase A.
# Fair share: tiers share the replica's 8 decode slots by weight (commercial 2, aiss 2,
# research 1) while they wait, so research is owed 8 x 1/5 = 1.6 slots; its 2 streams may then
# queue for a slot, at worst 2/1.6 = 1.25x the time of a request in a full batch (A2).
#
# Env: SKIP_BUILD=1 (use the binaries in target/release), THREADS (CPU threads per replica;
# default: the config's), FLOOD_SECS (default: long enough for research's 8 rounds at 1.5x
# the bound, from A2), RESEARCH_DELAY_SECS (5), BACKOFF_MS (500), FLOOD_FIRST=1 (run B on
# a server whose tiers have no history yet, then A and A2; FLOOD_SECS default 150), KEEP=1
# (keep the temporary directory).
# Prints markdown tables; the loadgen rows go to $tmp/loadgen.{csv,jsonl}, and are also
# appended to loadtests/results/mixed-tiers.{csv,jsonl}.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtests/lib.sh
source loadtests/lib.sh
RESEARCH_DELAY_SECS=${RESEARCH_DELAY_SECS:-5}
BACKOFF_MS=${BACKOFF_MS:-500}

build
tmp=$(mktemp -d /tmp/tiergate-mixed.XXXXXX)
server=
cleanup() {
    [[ -n $server ]] && stop_server "$server"
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

port=$(free_port)
url="http://127.0.0.1:$port"
export TIERGATE_TENANCY__KEYS_FILE="$tmp/keys.toml"
export TIERGATE_LEDGER__URL="sqlite://$tmp/ledger.db"
export TIERGATE_LISTEN="127.0.0.1:$port"
# Every simulated tenant connects from 127.0.0.1: the per-IP flood guard (50/s) would
# otherwise refuse all of them together and measure itself, not the tiers.
export TIERGATE_TENANCY__IP_REQUESTS_PER_SECOND=100000
export TIERGATE_TENANCY__IP_BURST=100000
if metrics=$(metrics_env config/tiergate.toml); then export "${metrics?}"; fi

config=$(config_with_threads "$tmp")
declare -A key
for t in demo-commercial demo-aiss demo-research; do
    key[$t]=$("$TIERGATE" --config "$config" keys create --tenant "$t")
done
"$TIERGATE" --config "$config" serve >"$tmp/server.log" 2>&1 &
server=$!
wait_ready "$url" "${key[demo-research]}"
echo "server pid $server on $url; $(machine_load)" >&2

# loadgen TENANT PHASE [FLAGS...]: one run of the common request, rows to $tmp and results/.
loadgen() {
    local tenant=$1 phase=$2
    shift 2
    "$LOADGEN" --url "$url" --api-key "${key[$tenant]}" --name mixed-tiers \
        --endpoint chat --stream true --max-tokens 64 --warmup 0 \
        --prompt "Write a short story about a lighthouse keeper." \
        --label tenant="$tenant" --label phase="$phase" --server-pid "$server" \
        --csv "$tmp/loadgen.csv" --json "$tmp/loadgen.jsonl" "$@" >"$tmp/table-$phase-$tenant.md"
}
ready() { curl -sf -H "authorization: Bearer ${key[demo-research]}" "$url/ready"; }
now_ms() { date +%s%3N; }

echo "warm-up" >&2
loadgen demo-research warmup --concurrency 1 --requests 2
phase_a() {
    echo "phase A: demo-research alone" >&2
    loadgen demo-research A --concurrency 2 --requests 16
    echo "phase A2: demo-commercial alone, full batch" >&2
    loadgen demo-commercial A2 --concurrency 8 --requests 16
}

phase_b() {
    local flood aiss
    echo "phase B: flood (${FLOOD_SECS}s); $(machine_load)" >&2
    ready >"$tmp/ready-before-B.json"
    b_start=$(now_ms)
    loadgen demo-commercial B --concurrency 24 --requests 1000000 --duration-secs "$FLOOD_SECS" \
        --backoff-429-ms "$BACKOFF_MS" &
    flood=$!
    loadgen demo-aiss B --concurrency 2 --requests 1000000 --duration-secs "$FLOOD_SECS" &
    aiss=$!
    sleep "$RESEARCH_DELAY_SECS"
    loadgen demo-research B --concurrency 2 --requests 16
    research_end=$(now_ms)
    wait "$flood" "$aiss"
    b_end=$(now_ms)
    ready >"$tmp/ready-after-B.json"
    echo "phase B done; $(machine_load)" >&2
}

if [[ ${FLOOD_FIRST:-0} == 1 ]]; then
    # The flood on a server whose tiers have no history yet (A and A2 run after it).
    FLOOD_SECS=${FLOOD_SECS:-150}
    phase_b
    phase_a
else
    phase_a
    if [[ -z ${FLOOD_SECS:-} ]]; then
        # Research's 16 requests at c=2 are 8 rounds of at most 1.25x a full-batch request.
        a2_p95_ms=$(jq -r 'select(.labels.phase == "A2") | .e2e_p95_ms' "$tmp/loadgen.jsonl")
        FLOOD_SECS=$(python3 -c "print(round($RESEARCH_DELAY_SECS + 1.5 * 8 * 1.25 * $a2_p95_ms / 1000))")
    fi
    phase_b
fi

stop_server "$server"
server=
"$TIERGATE" --config "$config" usage report --month "$(date -u +%Y-%m)" --format json >"$tmp/report.json"
sqlite3 -json "$tmp/ledger.db" \
    "SELECT tenant, tier, outcome, COALESCE(reason, '') AS reason, time_ms,
            prompt_tokens, completion_tokens, compute_ms, device_seconds,
            list_micro_hkd, subsidy_micro_hkd, charge_micro_hkd
     FROM usage_records" >"$tmp/ledger.json"
mkdir -p loadtests/results
cat "$tmp/loadgen.csv" >>loadtests/results/mixed-tiers.csv
cat "$tmp/loadgen.jsonl" >>loadtests/results/mixed-tiers.jsonl

for f in "$tmp"/table-*.md; do
    echo "### $(basename "$f" .md)"
    cat "$f"
done
python3 loadtests/mixed_tiers_table.py "$tmp" "$b_start" "$b_end" \
    "$((research_end - b_start))" "$FLOOD_SECS"
