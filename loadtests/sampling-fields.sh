#!/usr/bin/env bash
# What the sampling fields cost: streamed chat-128 on Qwen2.5-Coder-0.5B (ignore_eos, so
# every request produces 128 tokens), one server, these runs:
#   plain      no sampling fields, concurrency 1 and 8
#   logprobs   logprobs + top_logprobs 5 on every request, concurrency 1 and 8
#   n4         n = 4 at concurrency 2 (8 sequences, the prompt prefilled once per request),
#              against plain at concurrency 8 (8 separate requests)
#   base       optional, BASELINE_BIN: the same plain runs on a build before these fields
#              (started in BASELINE_DIR, a checkout of that commit), for "within noise"
# Runs alternate REPS times (plain, logprobs, n4[, base]) so drift on a shared machine hits
# every mode alike; the table shows each mode's median over the repetitions and the ratios.
#
#   bash loadtests/sampling-fields.sh
#   BASELINE_DIR=/work/wt-base BASELINE_BIN=/work/wt-base/target/release/tiergate bash loadtests/sampling-fields.sh
#
# Env: SKIP_BUILD=1, THREADS (CPU threads per replica), REPS (2), REQUESTS (16), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtests/lib.sh
source loadtests/lib.sh
REPS=${REPS:-2}
REQUESTS=${REQUESTS:-16}
MODEL=qwen2.5-coder-0.5b-instruct
modes=(plain logprobs n4)
if [[ -n ${BASELINE_BIN:-} ]]; then
    : "${BASELINE_DIR:?set BASELINE_DIR to the checkout BASELINE_BIN runs in}"
    BASELINE_BIN=$(realpath "$BASELINE_BIN")
    modes+=(base)
fi

build
tmp=$(mktemp -d /tmp/tiergate-sampling.XXXXXX)
server=
cleanup() {
    [[ -n $server ]] && stop_server "$server"
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# A config serving the 0.5B model alone: the shipped one with the other models removed.
config=$(config_with_threads "$tmp")
single_model_config "$config" "$tmp/serve.toml" "$MODEL"
# The baseline predates `limits.max_n` (and refuses unknown keys).
grep -v '^max_n = ' "$tmp/serve.toml" >"$tmp/serve-base.toml"

# start BIN DIR PORT CONFIG
start() {
    start_open "$1" "$2" "$3" "$4" "$tmp"
}

# load URL MODE REP EXTRA CONCURRENCY
load() {
    run_load "$1" loadtests/scenarios/chat-128-qwen-0.5b.toml sampling-fields "$2" "$3" "$4" "$5" "$tmp"
}

echo "start: $(machine_load)" >&2
port=$(free_port)
start "$(realpath "$TIERGATE")" . "$port" "$tmp/serve.toml"
ours=$server
for rep in $(seq 1 "$REPS"); do
    for mode in "${modes[@]}"; do
        echo "mode $mode rep $rep; $(machine_load)" >&2
        url="http://127.0.0.1:$port"
        case $mode in
        plain) load "$url" plain "$rep" '{}' 1,8 ;;
        logprobs) load "$url" logprobs "$rep" '{"logprobs": true, "top_logprobs": 5}' 1,8 ;;
        n4) load "$url" n4 "$rep" '{"n": 4}' 2 ;;
        base)
            server=$ours
            stop_server "$ours"
            bport=$(free_port)
            start "$BASELINE_BIN" "$BASELINE_DIR" "$bport" "$tmp/serve-base.toml"
            load "http://127.0.0.1:$bport" base "$rep" '{}' 1,8
            stop_server "$server"
            start "$(realpath "$TIERGATE")" . "$port" "$tmp/serve.toml"
            ours=$server
            ;;
        esac
    done
done
echo "end: $(machine_load)" >&2
mkdir -p loadtests/results
cat "$tmp/loadgen.csv" >>loadtests/results/sampling-fields.csv
cat "$tmp/loadgen.jsonl" >>loadtests/results/sampling-fields.jsonl
python3 loadtests/sampling_fields_table.py "$tmp/loadgen.jsonl"
