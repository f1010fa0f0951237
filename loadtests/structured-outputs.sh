#!/usr/bin/env bash
# Structured outputs against free text on Qwen2.5-Coder-0.5B, streamed chat, one server:
#   - tokens/s of a json_schema request vs the same request unconstrained, at concurrency 1
#     and 8 (asked: >= 0.9);
#   - a batch mixing 4 constrained and 4 free streams: the free streams' inter-token latency
#     against an all-free batch of 8 (asked: within 10%);
#   - then grammar_bench: trie build, compile time of a 5-function tool list, mask time.
# Repetitions interleave the modes, so that machine noise hits them alike.
#
#   bash loadtests/structured-outputs.sh
#
# Env: SKIP_BUILD=1, THREADS (CPU threads per replica), REPS (2), REQUESTS (16), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtests/lib.sh
source loadtests/lib.sh
REPS=${REPS:-2}
REQUESTS=${REQUESTS:-16}
MODEL=qwen2.5-coder-0.5b-instruct
# A story as a title and paragraphs: long enough to decode for the whole max_tokens.
JSON='{"response_format": {"type": "json_schema", "json_schema": {"name": "story", "schema": {"type": "object", "properties": {"title": {"type": "string"}, "paragraphs": {"type": "array", "items": {"type": "string"}}}, "required": ["title", "paragraphs"], "additionalProperties": false}}}}'

build
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --example grammar_bench
tmp=$(mktemp -d /tmp/tiergate-structured.XXXXXX)
server=
cleanup() {
    [[ -n $server ]] && stop_server "$server"
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

single_model_config "$(config_with_threads "$tmp")" "$tmp/serve.toml" "$MODEL"
port=$(free_port)
start_open "$(realpath "$TIERGATE")" . "$port" "$tmp/serve.toml" "$tmp"
url="http://127.0.0.1:$port"

# load MODE REP EXTRA CONCURRENCY
load() {
    run_load "$url" loadtests/scenarios/chat-128-qwen-0.5b.toml structured-outputs "$1" "$2" "$3" "$4" "$tmp"
}

echo "start: $(machine_load)" >&2
for rep in $(seq 1 "$REPS"); do
    echo "rep $rep: free and json_schema at c=1,8; $(machine_load)" >&2
    load free "$rep" '{}' 1,8
    load json "$rep" "$JSON" 1,8
    echo "rep $rep: mixed batches; $(machine_load)" >&2
    load mix-free "$rep" '{}' 4 & a=$!
    load mix-json "$rep" "$JSON" 4 & b=$!
    wait "$a" "$b"
    load all-free "$rep" '{}' 4 & a=$!
    load all-free-other "$rep" '{}' 4 & b=$!
    wait "$a" "$b"
done
echo "end: $(machine_load)" >&2
stop_server "$server"
server=
mkdir -p loadtests/results
cat "$tmp/loadgen.csv" >>loadtests/results/structured-outputs.csv
cat "$tmp/loadgen.jsonl" >>loadtests/results/structured-outputs.jsonl
python3 loadtests/structured_table.py "$tmp/loadgen.jsonl"
echo
target/release/examples/grammar_bench
