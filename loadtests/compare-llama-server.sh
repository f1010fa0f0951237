#!/usr/bin/env bash
# Runs one scenario against tiergate and against llama.cpp's llama-server, one server at a
# time, on the same GGUF weights with threads and slots matched, and prints both tables.
#
#   LLAMA_SERVER=/path/to/llama-server GGUF=/path/to/model.gguf \
#     bash loadtests/compare-llama-server.sh [scenario.toml] [threads] [slots]
#
# LLAMA_SERVER: a llama-server binary (build llama.cpp yourself; this script builds nothing).
# GGUF: the weights llama-server loads; give it the same format tiergate computes in (our
# default requantizes SmolLM2's Q4_1 to Q8_0 at load, so use a Q8_0 copy made with
# `llama-quantize --allow-requantize IN OUT Q8_0`).
# LOADGEN_ARGS: extra loadgen flags for both runs, e.g. "--concurrency 1,4,8,16".
# DTYPE: the chat model's CPU weight format on our side (e.g. "q4_0" against a Q4_0 GGUF);
# unset keeps the manifest's default (q8_0).
# The model is the scenario's `model`: any manifest in models/ (installed at start if missing,
# e.g. qwen2.5-coder-1.5b-instruct), served alone on one CPU replica.
# Results are appended to loadtests/results/loadgen.{csv,jsonl} with a `server` label.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-loadtests/scenarios/chat-128.toml}
threads=${2:-2}
slots=${3:-8}
: "${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}"
: "${GGUF:?set GGUF to the model file for llama-server}"
TIERGATE=${TIERGATE:-target/release/tiergate}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
port_ours=18411
port_peer=18412
mkdir -p loadtests/results

wait_ready() { # url
    for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
    echo "server at $1 did not become ready" >&2; return 1
}

model=$(sed -n 's/^model = "\(.*\)".*/\1/p' "$scenario")
# tiergate: the shipped settings without their models, then the scenario's model alone with
# batch size = slots and CPU threads = threads (every other knob at its default).
config=$(mktemp --suffix=.toml)
{
    sed '/^\[\[models\]\]/,$d' config/tiergate.toml
    printf '[[models]]\nname = "%s"\nmax_batch_size = %s\n' "$model" "$slots"
    [ -n "${DTYPE:-}" ] && printf 'dtype = "%s"\n' "$DTYPE"
    printf 'replicas = [{ device = "cpu", threads = %s }]\n' "$threads"
} > "$config"
# No keys (llama-server has none either): the anonymous tenant on the commercial tier, whose
# 16 concurrent requests cover the scenarios; its ledger beside the log.
TIERGATE_TENANCY__AUTH=off TIERGATE_TENANCY__ANONYMOUS_TIER=commercial \
    TIERGATE_LEDGER__URL=sqlite://loadtests/results/compare-tiergate.ledger.db \
    "$TIERGATE" --config "$config" serve --listen "127.0.0.1:$port_ours" > loadtests/results/compare-tiergate.log 2>&1 &
ours=$!
trap 'kill $ours 2>/dev/null || true; kill ${peer:-0} 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$port_ours/ready"
echo "## tiergate (max_batch_size $slots, $threads threads)"
"$LOADGEN" --scenario "$scenario" --url "http://127.0.0.1:$port_ours" \
    --label server=tiergate --label slots="$slots" --label threads="$threads" --server-pid "$ours" ${LOADGEN_ARGS:-}
kill $ours; wait $ours 2>/dev/null || true

# llama-server: -c is the total context, split across -np slots; prompt cache off per request.
"$LLAMA_SERVER" -m "$GGUF" -a "$model" --host 127.0.0.1 --port "$port_peer" \
    -c $((slots * 1024)) -np "$slots" -t "$threads" -tb "$threads" --metrics \
    > loadtests/results/compare-llama-server.log 2>&1 &
peer=$!
wait_ready "http://127.0.0.1:$port_peer/health"
echo "## llama-server (-np $slots, -t $threads)"
"$LOADGEN" --scenario "$scenario" --url "http://127.0.0.1:$port_peer" \
    --label server=llama-server --label slots="$slots" --label threads="$threads" --server-pid "$peer" ${LOADGEN_ARGS:-}
