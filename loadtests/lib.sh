# shellcheck shell=bash
# Helpers shared by the tenancy scenarios (mixed-tiers.sh, overhead.sh); source it after
# `cd` to the repository root. Each script starts its own server on a free 127.0.0.1 port,
# with its own keys file and SQLite ledger in a temporary directory, and stops it on exit.

TIERGATE=${TIERGATE:-target/release/tiergate}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}

# Builds the gateway and the load generator unless SKIP_BUILD=1; waits while another cargo
# build or test runs on this machine (two release builds on a small machine starve both).
build() {
    [[ ${SKIP_BUILD:-0} == 1 ]] && return 0
    while pgrep -f "cargo (build|test)" >/dev/null; do
        echo "waiting for another cargo build/test to finish" >&2
        sleep 30
    done
    cargo build --release --bin tiergate --example loadgen
}

# config_with_threads DIR: prints the path of the config to serve with. With THREADS set, a
# copy of config/tiergate.toml in DIR whose replicas use that many CPU threads (arrays cannot
# be set by environment variables); on a machine busy with other work one thread is steadier
# than a pool whose threads spin at barriers while the others are descheduled.
config_with_threads() {
    if [[ -z ${THREADS:-} ]]; then
        echo config/tiergate.toml
        return
    fi
    sed -e "s/threads = [0-9]*/threads = $THREADS/" config/tiergate.toml >"$1/tiergate.toml"
    echo "$1/tiergate.toml"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# metrics_env CONFIG: when the config has a `[metrics]` listener, prints an override that
# moves it to a free port (its default port is fixed, and two servers would collide on it);
# fails otherwise (a build without metrics refuses the unknown key).
metrics_env() {
    grep -q '^\[metrics\]' "$1" && echo "TIERGATE_METRICS__LISTEN=127.0.0.1:$(free_port)"
}

# wait_ready URL [KEY]: until GET URL/ready answers 200 (the models loaded).
wait_ready() {
    local auth=()
    [[ -n ${2:-} ]] && auth=(-H "authorization: Bearer $2")
    for _ in $(seq 1 180); do
        curl -sf "${auth[@]}" "$1/ready" >/dev/null && return 0
        sleep 1
    done
    echo "server at $1 did not become ready" >&2
    return 1
}

# stop_server PID: SIGTERM, then wait for the graceful shutdown (it flushes the ledger).
stop_server() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Load of the machine when a run starts: the 1-minute load average and what else compiles.
machine_load() {
    local others
    others=$(pgrep -c -f "cargo (build|test)|rustc" || true)
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; cargo/rustc processes: ${others:-0}"
}

# single_model_config SOURCE DEST MODEL: the config SOURCE with every [[models]] block but
# MODEL's removed (a benchmark of one model should not share the CPUs with the others).
single_model_config() {
    python3 - "$1" "$2" "$3" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r"(?m)^(?=\[\[models\]\])", text)
keep = [b for b in blocks if not b.startswith("[[models]]") or f'name = "{sys.argv[3]}"' in b]
open(sys.argv[2], "w").write("".join(keep))
PY
}

# start_open BIN DIR PORT CONFIG TMP: starts BIN in DIR with auth off (every request is
# `anonymous` on the commercial tier, whose 16 concurrent requests leave room for c=8), its
# ledger and log in TMP; sets `server` to its pid and waits until it is ready.
start_open() {
    local bin=$1 dir=$2 port=$3 config=$4 tmp=$5 metrics=()
    if m=$(metrics_env "$config"); then metrics=("$m"); fi
    (cd "$dir" && exec env "${metrics[@]}" TIERGATE_TENANCY__AUTH=off \
        TIERGATE_TENANCY__ANONYMOUS_TIER=commercial \
        TIERGATE_LEDGER__URL="sqlite://$tmp/ledger-$port.db" \
        TIERGATE_TENANCY__IP_REQUESTS_PER_SECOND=100000 TIERGATE_TENANCY__IP_BURST=100000 \
        TIERGATE_LISTEN="127.0.0.1:$port" "$bin" --config "$config" serve) \
        >"$tmp/server-$port.log" 2>&1 &
    server=$!
    wait_ready "http://127.0.0.1:$port"
}

# run_load URL SCENARIO NAME MODE REP EXTRA CONCURRENCY TMP: one loadgen run against the
# server `server` (pid), labelled mode=MODE rep=REP, appended to TMP/loadgen.{csv,jsonl}.
run_load() {
    "$LOADGEN" --url "$1" --scenario "$2" --name "$3" --extra "$6" --concurrency "$7" \
        --requests "$REQUESTS" --warmup 1 --label mode="$4" --label rep="$5" \
        --server-pid "$server" --csv "$8/loadgen.csv" --json "$8/loadgen.jsonl" >/dev/null
}
