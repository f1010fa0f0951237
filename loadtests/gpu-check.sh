#!/usr/bin/env bash
# End-to-end check of a GPU host, in one command (aim: under 10 minutes on one recent GPU):
#   1. prints the GPU (nvidia-smi) and the CUDA compiler;
#   2. builds the release gateway and load generator with `--features cuda`;
#   3. installs the models and the SDK test's venv, as .ci/run does (PyPI only);
#   4. runs the test suite with TIERGATE_TEST_DEVICE=cuda:N (release profile, so it reuses
#      step 2's build instead of compiling candle's CUDA kernels a second time);
#   5. starts the gateway with one replica pinned to cuda:N per chat model (`kind =
#      "generate"` in models/), then per model runs chat-128 at concurrency 1, 8 and 32 and
#      ttft-512 (512-word prompts, one at a time), sampling GPU memory meanwhile;
#   6. writes one table (tokens/s, TTFT, ITL, peak GPU memory) to
#      loadtests/results/gpu-check-<time>.md and prints it.
# Every step must succeed: the first failure stops the script with the step it was in.
#
#   bash loadtests/gpu-check.sh
#
# Needs: an NVIDIA GPU and driver (nvidia-smi), the CUDA toolkit with nvcc <= 13.4 on PATH
# (cudarc 0.19's build script panics on newer), Rust, python3 with pip and venv, curl.
# Env: GPU (ordinal, default 0); SKIP_BUILD=1 reuses target/release. The PostgreSQL ledger
# tests need a server at 127.0.0.1:5432 (as in .ci/run); without one they are left out, and
# the script says so (they do not touch the device).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtests/lib.sh
source loadtests/lib.sh

gpu=${GPU:-0}
device="cuda:$gpu"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
table=loadtests/results/gpu-check-$stamp.md
step_name=start
t0=$SECONDS
step() {
    step_name=$*
    echo "== [$((SECONDS - t0)) s] $step_name" >&2
}
trap 'echo "gpu-check FAILED in step \"$step_name\" (line $LINENO: $BASH_COMMAND)" >&2' ERR
mkdir -p loadtests/results

step "GPU and toolkit"
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: needs an NVIDIA GPU and driver" >&2; exit 1; }
command -v nvcc >/dev/null || { echo "no nvcc on PATH: install the CUDA toolkit (<= 13.4)" >&2; exit 1; }
nvidia-smi -i "$gpu" --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv
gpu_name=$(nvidia-smi -i "$gpu" --query-gpu=name --format=csv,noheader)
cuda_release=$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
echo "nvcc $cuda_release"
if ! printf '%s\n13.4\n' "$cuda_release" | sort -V -C; then
    echo "nvcc $cuda_release is newer than 13.4, the last CUDA that cudarc 0.19 knows" >&2
    exit 1
fi

step "release build with --features cuda"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --locked --release --features cuda --bin tiergate --example loadgen
fi

step "models and the SDK venv"
chat_models=()
for m in models/*.toml; do
    grep -q '^kind = "generate"' "$m" && chat_models+=("$(basename "$m" .toml)")
done
[[ ${#chat_models[@]} -gt 0 ]] || { echo "no chat model in models/" >&2; exit 1; }
tmp=$(mktemp -d /tmp/tiergate-gpu-check.XXXXXX)
config=$tmp/tiergate.toml
{
    echo 'models_dir = "models"'
    for m in "${chat_models[@]}"; do
        # 32 KV slots for concurrency 32; the manifest's dtype (the CPU re-encodings do not
        # apply on a GPU).
        printf '\n[[models]]\nname = "%s"\nmax_batch_size = 32\nmax_seq_len = 2048\n' "$m"
        printf 'replicas = [{ device = "%s" }]\n' "$device"
    done
} >"$config"
# The tests' models (config/tiergate.toml's), then every chat model of the benchmark.
"$TIERGATE" models fetch
"$TIERGATE" --config "$config" models fetch
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt

step "test suite on $device"
targets=(--all-targets)
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "no PostgreSQL at 127.0.0.1:5432: leaving out tests/ledger_pg.rs and ledger_server.rs" >&2
    targets=(--lib --bins --examples)
    for t in tests/*.rs; do
        name=$(basename "$t" .rs)
        [[ $name == ledger_pg || $name == ledger_server ]] || targets+=(--test "$name")
    done
fi
TIERGATE_TEST_DEVICE=$device cargo test --locked --release --features cuda "${targets[@]}"

step "gateway with one $device replica per chat model"
port=$(free_port)
url=http://127.0.0.1:$port
# Auth off, every request on the test tiers' `open` tier (no limits), a ledger in $tmp.
TIERGATE_TENANCY__AUTH=off TIERGATE_TENANCY__ANONYMOUS_TIER=open \
    TIERGATE_TENANCY__TIERS_FILE=tests/config/tiers.toml \
    TIERGATE_TENANCY__TENANTS_FILE=tests/config/tenants.toml \
    TIERGATE_TENANCY__KEYS_FILE="$tmp/keys.toml" \
    TIERGATE_LEDGER__URL="sqlite://$tmp/ledger.db" \
    TIERGATE_METRICS__LISTEN="127.0.0.1:$(free_port)" \
    "$TIERGATE" --config "$config" serve --listen "127.0.0.1:$port" >"$tmp/server.log" 2>&1 &
server=$!
sampler=
cleanup() {
    [[ -n $sampler ]] && kill "$sampler" 2>/dev/null
    stop_server "$server"
    echo "server log and GPU memory samples: $tmp" >&2
}
trap cleanup EXIT
wait_ready "$url" || { tail -20 "$tmp/server.log" >&2; exit 1; }
# GPU memory in use (MiB), with the time, every 0.5 s: each load level's peak is read
# from its time window.
while true; do
    echo "$(date +%s.%N) $(nvidia-smi -i "$gpu" --query-gpu=memory.used --format=csv,noheader,nounits)"
    sleep 0.5
done >"$tmp/gpu-memory.txt" &
sampler=$!

csv=$tmp/loadgen.csv
for m in "${chat_models[@]}"; do
    step "$m: chat-128 at concurrency 1, 8, 32"
    "$LOADGEN" --scenario loadtests/scenarios/chat-128.toml --url "$url" --model "$m" \
        --concurrency 1,8,32 --requests 32 --label server=tiergate --label device="$device" \
        --server-pid "$server" --csv "$csv" --json "$tmp/loadgen.jsonl"
    step "$m: ttft-512"
    "$LOADGEN" --scenario loadtests/scenarios/ttft-512.toml --url "$url" --model "$m" \
        --label server=tiergate --label device="$device" \
        --server-pid "$server" --csv "$csv" --json "$tmp/loadgen.jsonl"
done

step "table"
python3 - "$csv" "$tmp/gpu-memory.txt" "$gpu_name" "$table" <<'EOF'
import csv, sys

rows_path, mem_path, gpu_name, out_path = sys.argv[1:]
samples = [tuple(map(float, l.split())) for l in open(mem_path) if len(l.split()) == 2]
rows = list(csv.DictReader(open(rows_path)))
lines = [
    f"GPU: {gpu_name}. Streamed chat, temperature 0, ignore_eos; memory: device-wide peak "
    "during the level (nvidia-smi, 0.5 s samples).",
    "",
    "| model | scenario | concurrency | reqs ok | out tok/s | TTFT p50 / p95 ms | ITL p50 / p95 ms | GPU MiB |",
    "|---|---|---|---|---|---|---|---|",
]
failed = []
for r in rows:
    end = float(r["unix_time"])
    window = [m for t, m in samples if end - float(r["wall_s"]) - 0.5 <= t <= end + 0.5]
    mem = f"{max(window):.0f}" if window else "?"
    cell = lambda a, b: f"{float(r[a]):.1f} / {float(r[b]):.1f}" if r[a] and r[b] else "-"
    lines.append(
        f"| {r['model']} | {r['scenario']} | {r['concurrency']} | {r['ok']}/{r['requests']} "
        f"| {float(r['output_tok_s']):.1f} | {cell('ttft_p50_ms', 'ttft_p95_ms')} "
        f"| {cell('itl_p50_ms', 'itl_p95_ms')} | {mem} |"
    )
    if r["errors"] != "0" or r["ok"] != r["requests"]:
        failed.append(f"{r['model']} {r['scenario']} c={r['concurrency']}: errors {r['errors']}")
open(out_path, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
if failed:
    sys.exit("requests failed: " + "; ".join(failed))
EOF
echo "== [$((SECONDS - t0)) s] done: $table" >&2
