#!/usr/bin/env bash
# Renders the Grafana dashboard once with real data, without Grafana: starts the gateway and
# a Prometheus of its own that scrapes it every second, sends traffic from several tiers
# (with 429s, 503s, cancellations and an over-budget tenant among it), then runs every
# panel's query through Prometheus's HTTP API with the dashboard's variables filled in and
# prints one row per query. Exits non-zero when a query fails or comes back without data.
#
#   cargo build --release --bin tiergate --example loadgen
#   loadtests/check-dashboard.sh
#
# Environment:
#   DASHBOARD       dashboard JSON (default config/grafana/tiergate.json)
#   TIERGATE_BIN    gateway binary (default target/release/tiergate)
#   LOADGEN_BIN     load generator (default target/release/examples/loadgen)
#   PROMETHEUS_BIN  prometheus binary (default: `prometheus` on PATH, installed from Debian's
#                   package when missing)
#   RATE_INTERVAL   what $__rate_interval becomes (default 1m); $__range becomes RANGE (5m)
#   KEEP_TMP=1      keep the temporary directory (configs, logs, Prometheus data)
#
# The gateway runs from a copy of config/tiergate.toml whose chat model has a queue of 8 (so
# a burst is answered 503 overloaded), with a temporary keys file, SQLite ledger and tenants
# file (config/tenants.toml plus a tenant with no budget).
# Nothing under config/ is written. A sample of /metrics is left in
# loadtests/results/dashboard-check-metrics.txt.
set -euo pipefail

cd "$(dirname "$0")/.."
DASHBOARD=${DASHBOARD:-config/grafana/tiergate.json}
TIERGATE_BIN=${TIERGATE_BIN:-target/release/tiergate}
# The gateway reads every TIERGATE_* variable as a config key and refuses unknown ones.
export -n TIERGATE_BIN
LOADGEN_BIN=${LOADGEN_BIN:-target/release/examples/loadgen}
PROMETHEUS_BIN=${PROMETHEUS_BIN:-prometheus}
RATE_INTERVAL=${RATE_INTERVAL:-1m}
RANGE=${RANGE:-5m}
CHAT_MODEL=smollm2-135m-instruct
EMBED_MODEL=all-minilm-l6-v2

log() { printf '%s check-dashboard: %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "$*"
    exit 2
}

for tool in jq curl; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
for bin in "$TIERGATE_BIN" "$LOADGEN_BIN"; do
    [[ -x $bin ]] || die "no $bin: cargo build --release --bin tiergate --example loadgen"
done
[[ -f $DASHBOARD ]] || die "no $DASHBOARD"
if ! command -v "$PROMETHEUS_BIN" >/dev/null; then
    log "installing prometheus (Debian package)"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    # The package's service must not start here: this script runs its own instance.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prometheus >/dev/null ||
        { $sudo apt-get update >/dev/null &&
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y \
                --no-install-recommends prometheus >/dev/null; }
    PROMETHEUS_BIN=prometheus
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tiergate-dashboard.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on now (the kernel's choice for port 0).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until URL answers 200, at most $2 seconds; $3 is the PID that must stay alive; more
# arguments go to curl.
wait_200() {
    local url=$1 secs=$2 pid=$3 i
    shift 3
    for ((i = 0; i < secs * 2; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$@" "$url") == 200 ]] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

api_port=$(free_port)
metrics_port=$(free_port)
prom_port=$(free_port)
api=http://127.0.0.1:$api_port
prom=http://127.0.0.1:$prom_port

# ---------------------------------------------------------------------------- gateway
# First max_queue in the file is the chat model's.
sed '0,/^max_queue = .*/s//max_queue = 8/' config/tiergate.toml >"$tmp/tiergate.toml"
cp config/tenants.toml "$tmp/tenants.toml"
cat >>"$tmp/tenants.toml" <<'EOF'

[[tenants]]
id = "check-no-budget"
name = "Dashboard check: every request is over budget"
tier = "research"
grant = "none"
overrides = { monthly_budget_hkd = 0.0 }
EOF
export TIERGATE_CONFIG=$tmp/tiergate.toml
export TIERGATE_LISTEN=127.0.0.1:$api_port
export TIERGATE_METRICS__LISTEN=127.0.0.1:$metrics_port
export TIERGATE_LEDGER__URL=sqlite://$tmp/ledger.db
export TIERGATE_TENANCY__KEYS_FILE=$tmp/keys.toml
export TIERGATE_TENANCY__TENANTS_FILE=$tmp/tenants.toml

declare -A key
for tenant in demo-commercial demo-aiss demo-aiss-special demo-research demo-sandbox \
    check-no-budget; do
    key[$tenant]=$("$TIERGATE_BIN" keys create --tenant "$tenant" 2>"$tmp/keys.log") ||
        { cat "$tmp/keys.log" >&2; die "cannot make a key for $tenant"; }
done

log "gateway on $api, metrics on 127.0.0.1:$metrics_port (log: $tmp/gateway.log)"
"$TIERGATE_BIN" serve >"$tmp/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
# /ready wants a key like every route but /health.
if ! wait_200 "$api/ready" 600 "$gateway" -H "Authorization: Bearer ${key[demo-commercial]}" ||
    ! wait_200 "http://127.0.0.1:$metrics_port/metrics" 10 "$gateway"; then
    tail -n 20 "$tmp/gateway.log" >&2
    die "the gateway did not become ready"
fi

# ---------------------------------------------------------------------------- prometheus
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tiergate
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
log "prometheus on $prom (log: $tmp/prometheus.log)"
"$PROMETHEUS_BIN" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prometheus" \
    --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
wait_200 "$prom/-/ready" 60 "${pids[-1]}" || {
    tail -n 20 "$tmp/prometheus.log" >&2
    die "prometheus did not start"
}

# ---------------------------------------------------------------------------- traffic
loadgen() { # tenant, then loadgen flags
    local tenant=$1
    shift
    "$LOADGEN_BIN" --url "$api" --api-key "${key[$tenant]}" --model "$CHAT_MODEL" \
        --max-tokens 32 --warmup 0 --timeout-secs 120 --label "tenant=$tenant" \
        --csv "$tmp/loadgen.csv" --json "$tmp/loadgen.jsonl" "$@" \
        >"$tmp/loadgen-$tenant.md" 2>"$tmp/loadgen-$tenant.log"
}
post() { # tenant, path, body, extra curl flags: prints the status code
    local tenant=$1 path=$2 body=$3
    shift 3
    curl -s -o /dev/null -w "%{http_code} $tenant $path\n" "$@" \
        -H "Authorization: Bearer ${key[$tenant]}" -H 'Content-Type: application/json' \
        -d "$body" "$api$path" || true
}
chat() { # max_tokens, stream
    printf '{"model":"%s","messages":[{"role":"user","content":"Tell me about Hong Kong."}],"max_tokens":%d,"stream":%s,"ignore_eos":true}' \
        "$CHAT_MODEL" "$1" "$2"
}

# Closed loops for TRAFFIC_SECS (each worker sends its next request when one ends), all
# tiers at once, and on the side: clients that leave mid-stream, an over-budget tenant,
# embeddings, a bad model and a bad key; then a burst over the chat model's short queue.
TRAFFIC_SECS=${TRAFFIC_SECS:-45}
log "traffic: five tiers at once for $TRAFFIC_SECS s"
t0=$SECONDS
traffic=()
steady() { # tenant, concurrency, more loadgen flags
    local tenant=$1 concurrency=$2
    shift 2
    loadgen "$tenant" --concurrency "$concurrency" --requests 10000 \
        --duration-secs "$TRAFFIC_SECS" --backoff-429-ms 500 "$@"
}
steady demo-commercial 3 &
traffic+=($!)
steady demo-aiss 2 &
traffic+=($!)
steady demo-aiss-special 1 --endpoint completions --stream false &
traffic+=($!)
steady demo-research 1 &
traffic+=($!)
# sandbox allows 2 concurrent requests per tenant: 4 workers -> 429 rate_limited. After a
# 429 a worker waits 500 ms (a 503 it retries at once).
steady demo-sandbox 4 &
traffic+=($!)
{
    sleep 2
    # Clients that leave mid-stream: cancelled requests, freed slots.
    post demo-aiss-special /v1/chat/completions "$(chat 1000 true)" --max-time 8 &
    post demo-research /v1/chat/completions "$(chat 1000 true)" --max-time 10 &
    for _ in 1 2 3; do
        post check-no-budget /v1/chat/completions "$(chat 32 false)" # 429 over_budget
        post demo-research /v1/embeddings \
            "{\"model\":\"$EMBED_MODEL\",\"input\":[\"tiergate\",\"a dashboard check\"]}"
        sleep 5
    done
    post demo-aiss /v1/chat/completions '{"model":"no-such-model"}' # invalid
    key[nobody]=not-a-key
    post nobody /v1/chat/completions "$(chat 8 false)" # unauthorized
    wait
    # A burst of 16 on top of the loops: beyond the free slots and the queue of 8 -> 503.
    sleep $((TRAFFIC_SECS / 2 - 15 > 0 ? TRAFFIC_SECS / 2 - 15 : 0))
    for _ in $(seq 1 16); do
        post demo-commercial /v1/chat/completions "$(chat 16 false)" &
    done
    wait
} >"$tmp/curl.log" 2>&1 &
traffic+=($!)
pids+=("${traffic[@]}")
for pid in "${traffic[@]}"; do
    wait "$pid" || log "a traffic job exited non-zero (see $tmp/loadgen-*.log)"
done
log "traffic done in $((SECONDS - t0)) s"
sleep 5 # a few more scrapes

# ---------------------------------------------------------------------------- queries
query() { # PromQL -> the API's JSON
    curl -s -G --data-urlencode "query=$1" "$prom/api/v1/query"
}

up=$(query 'up{job="tiergate"}' | jq -r '.data.result[0].value[1] // "0"')
[[ $up == 1 ]] || die "prometheus could not scrape the gateway (up=$up)"

echo
echo "Requests by outcome (tiergate_requests_total):"
query 'sum by (outcome, status_class) (tiergate_requests_total)' |
    jq -r '.data.result[] | "  \(.metric.outcome) \(.metric.status_class): \(.value[1])"' |
    sort
echo "Scrape: $(query 'scrape_duration_seconds{job="tiergate"}' |
    jq -r '.data.result[0].value[1] | tonumber * 1000 | . * 100 | round / 100') ms, \
$(query 'scrape_samples_scraped{job="tiergate"}' | jq -r '.data.result[0].value[1]') samples"
mkdir -p loadtests/results
curl -s "http://127.0.0.1:$metrics_port/metrics" >loadtests/results/dashboard-check-metrics.txt

echo
echo "Variables:"
failures=0
while IFS=$'\t' read -r name definition; do
    # label_values(METRIC, LABEL)
    if [[ $definition =~ ^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*),[[:space:]]*([a-zA-Z_][a-zA-Z0-9_]*)\)$ ]]; then
        values=$(curl -s -G --data-urlencode "match[]=${BASH_REMATCH[1]}" \
            "$prom/api/v1/label/${BASH_REMATCH[2]}/values" | jq -r '.data // [] | join(", ")')
    else
        values=""
        log "cannot read the variable query $definition"
    fi
    [[ -n $values ]] || failures=$((failures + 1))
    printf '  $%s = %s  (%s)\n' "$name" "${values:-EMPTY}" "$definition"
done < <(jq -r '.templating.list[] | select(.type == "query") | [.name, .definition] | @tsv' \
    "$DASHBOARD")

echo
echo "Panels (\$model, \$tier = .*, \$__rate_interval = $RATE_INTERVAL, \$__range = $RANGE):"
echo
echo "| result | series | with data | panel | ref | expr |"
echo "|---|---|---|---|---|---|"
panels=0
while IFS=$'\t' read -r title ref expr; do
    panels=$((panels + 1))
    e=$expr
    for var in model tier; do
        e=${e//\$\{$var\}/.*}
        e=${e//\$$var/.*}
    done
    e=${e//\$__rate_interval/$RATE_INTERVAL}
    e=${e//\$__range/$RANGE}
    e=${e//\$__interval/15s}
    answer=$(query "$e")
    status=$(jq -r '.status // "error"' <<<"$answer" 2>/dev/null || echo error)
    if [[ $status != success ]]; then
        result=ERROR series=- finite=-
        log "$title/$ref: $(jq -r '.error // .' <<<"$answer" 2>/dev/null || echo "$answer")"
    else
        # Series whose value is a number (histogram_quantile and x/0 give NaN without data).
        read -r series finite < <(jq -r '.data.result as $r | if ($r | type) == "array"
            then "\($r | length) \([$r[] | .value[1] | select(. != "NaN" and . != "+Inf"
                and . != "-Inf")] | length)"
            else "1 1" end' <<<"$answer")
        if ((finite > 0)); then result=OK; else result=EMPTY; fi
    fi
    [[ $result == OK ]] || failures=$((failures + 1))
    printf '| %s | %s | %s | %s | %s | `%s` |\n' "$result" "$series" "$finite" "$title" "$ref" \
        "${expr//|/\\|}"
done < <(jq -r '.. | objects | select(has("targets") and .type != "row") as $p
    | $p.targets[] | [$p.title, .refId, .expr] | @tsv' "$DASHBOARD")

echo
if ((failures > 0)); then
    log "$failures of $panels panel queries (or variables) without data or failing"
    exit 1
fi
log "all $panels panel queries have data"
