#!/usr/bin/env bash
# What authentication + limits + the usage ledger add to each request: the same tiny request
# (non-streamed completion, prompt "Hi", max_tokens 1) at closed-loop concurrency 4, against
#   a  the gateway as shipped: auth on (demo-commercial's key), limits, ledger;
#   b  the same binary with auth off (every request is the `anonymous` tenant on the
#      commercial tier: limits and ledger still run, only the key lookup is gone);
#   c  optional, BASELINE_BIN: a build without tenancy and ledger at all (e.g. the commit
#      before they were merged), started in BASELINE_DIR (a checkout of that commit, for its
#      config/ and models/).
# One server at a time, each started fresh (full buckets, empty ledger), modes alternating
# a b c a b c ... REPS times, so drift on a shared machine hits every mode alike.
#
#   bash loadtests/overhead.sh
#   BASELINE_DIR=/tmp/tg-base BASELINE_BIN=/tmp/tg-base/target/release/tiergate bash loadtests/overhead.sh
#
# Env: SKIP_BUILD=1, THREADS (CPU threads per replica, all modes; default: each config's),
# REPS (3), REQUESTS (200), CONCURRENCY (4), KEEP=1.
# Prints one row per server run and the overhead per request (mean, p50, p95 differences).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtests/lib.sh
source loadtests/lib.sh
REPS=${REPS:-3}
REQUESTS=${REQUESTS:-200}
CONCURRENCY=${CONCURRENCY:-4}
modes=(a b)
if [[ -n ${BASELINE_BIN:-} ]]; then
    : "${BASELINE_DIR:?set BASELINE_DIR to the checkout BASELINE_BIN runs in}"
    BASELINE_BIN=$(realpath "$BASELINE_BIN")
    modes+=(c)
fi

build
tmp=$(mktemp -d /tmp/tiergate-overhead.XXXXXX)
mkdir "$tmp/base"
server=
cleanup() {
    [[ -n $server ]] && stop_server "$server"
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# The gateway's own settings for modes a and b; the flood guard is raised because this
# single client sends far more than 50 requests/s from 127.0.0.1, in every mode alike.
gateway_env=(
    TIERGATE_TENANCY__KEYS_FILE="$tmp/keys.toml"
    TIERGATE_TENANCY__IP_REQUESTS_PER_SECOND=100000
    TIERGATE_TENANCY__IP_BURST=100000
)
config=$(config_with_threads "$tmp")
key=$(env "${gateway_env[@]}" "$TIERGATE" --config "$config" keys create --tenant demo-commercial)

# run MODE REP: start that mode's server, run the load once, stop it.
run() {
    local mode=$1 rep=$2 port url auth=() metrics=()
    port=$(free_port)
    url="http://127.0.0.1:$port"
    if m=$(metrics_env config/tiergate.toml); then metrics=("$m"); fi
    case $mode in
    a)
        env "${gateway_env[@]}" "${metrics[@]}" TIERGATE_LEDGER__URL="sqlite://$tmp/ledger-$mode-$rep.db" \
            TIERGATE_LISTEN="127.0.0.1:$port" "$TIERGATE" --config "$config" serve \
            >"$tmp/server-$mode-$rep.log" 2>&1 &
        auth=(--api-key "$key")
        ;;
    b)
        env "${gateway_env[@]}" "${metrics[@]}" TIERGATE_LEDGER__URL="sqlite://$tmp/ledger-$mode-$rep.db" \
            TIERGATE_TENANCY__AUTH=off TIERGATE_TENANCY__ANONYMOUS_TIER=commercial \
            TIERGATE_LISTEN="127.0.0.1:$port" "$TIERGATE" --config "$config" serve \
            >"$tmp/server-$mode-$rep.log" 2>&1 &
        ;;
    c)
        (cd "$BASELINE_DIR" && TIERGATE_LISTEN="127.0.0.1:$port" \
            exec "$BASELINE_BIN" --config "$(config_with_threads "$tmp/base")" serve) \
            >"$tmp/server-$mode-$rep.log" 2>&1 &
        ;;
    esac
    server=$!
    if [[ $mode == a ]]; then wait_ready "$url" "$key"; else wait_ready "$url"; fi
    echo "mode $mode rep $rep; $(machine_load)" >&2
    "$LOADGEN" --url "$url" "${auth[@]}" --keep-alive --name overhead \
        --endpoint completions --stream false --max-tokens 1 --prompt "Hi" \
        --concurrency "$CONCURRENCY" --requests "$REQUESTS" --warmup 20 \
        --label mode="$mode" --label rep="$rep" --server-pid "$server" \
        --csv "$tmp/loadgen.csv" --json "$tmp/loadgen.jsonl" >/dev/null
    stop_server "$server"
    server=
}

echo "start: $(machine_load)" >&2
for rep in $(seq 1 "$REPS"); do
    for mode in "${modes[@]}"; do
        run "$mode" "$rep"
    done
done
echo "end: $(machine_load)" >&2
mkdir -p loadtests/results
cat "$tmp/loadgen.csv" >>loadtests/results/overhead.csv
cat "$tmp/loadgen.jsonl" >>loadtests/results/overhead.jsonl
python3 loadtests/overhead_table.py "$tmp/loadgen.jsonl"
