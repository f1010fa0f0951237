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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
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
