#!/usr/bin/env bash
# Scale-out run: three gateways on this machine sharing one Redis (tenant limits) and one
# PostgreSQL ledger, behind HAProxy on loopback, as deploy/kubernetes/ runs them. Does the
# cluster hold every tenant's limits as one gateway would, through a gateway killed with -9
# and a Redis restart, and does the shared ledger account for every answer?
#
#   bash loadtests/scale-out.sh                 # [tenancy.limiter] backend = "redis"
#   LIMITER=local bash loadtests/scale-out.sh   # each gateway its own limits (the leak)
#
# Phases (the release binary; models smollm2-135m-instruct and all-minilm-l6-v2, one CPU
# thread per gateway):
#   flood    FLOOD_SECS of closed-loop load, one tenant per tier, each against the limit
#            its load binds: demo-commercial and demo-sandbox tiny embeddings (requests per
#            minute), demo-aiss eight ~120-token inputs per request (tokens per minute),
#            demo-research one-token chats (requests per minute, concurrency 4).
#   kill     demo-research holds 4 long streams (its max_concurrent), two on gateway 1 and
#            one on each other gateway; gateway 1 is killed with -9. Its leases stay in Redis until they expire:
#            a probe request a second measures when the cluster admits research again.
#   outage   demo-aiss-special floods for 3 x OUTAGE_SECS; Redis is shut down after the first
#            third and restarted after the second (same port, empty: it keeps nothing).
# Then the gateways are stopped (SIGTERM: the ledger flushes), the ledger is read back, and
# `tiergate ledger verify` checks every gateway's chain. Prints markdown tables
# (loadtests/scale_out_table.py); exits 1 when a tenant got more than its limit across the
# cluster (expected with LIMITER=local: that is the leak) or the ledger does not verify.
#
# Needs: haproxy (`apt-get install -y haproxy`), redis-server, PostgreSQL at PG_URL (its own
# schema, dropped afterwards unless KEEP=1). The Redis of this run is its own, on a free port:
# stopping it disturbs nothing else.
# Env: SKIP_BUILD=1, LIMITER (redis|local), ON_UNAVAILABLE (local_share|reject; default
# local_share), FLOOD_SECS (20), OUTAGE_SECS (10), STREAM_TOKENS (1500), PG_URL
# (postgres://postgres@127.0.0.1:5432/test), EXTRA_ENV ("VAR=value ..." for every gateway),
# KEEP=1 (keep the temporary directory and the schema).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtests/lib.sh
source loadtests/lib.sh
LIMITER=${LIMITER:-redis}
ON_UNAVAILABLE=${ON_UNAVAILABLE:-local_share}
FLOOD_SECS=${FLOOD_SECS:-20}
OUTAGE_SECS=${OUTAGE_SECS:-10}
STREAM_TOKENS=${STREAM_TOKENS:-1500}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
GATEWAYS=3
CLIENT=loadtests/scale_out_client.py

for tool in haproxy redis-server redis-cli psql; do
    command -v "$tool" >/dev/null || { echo "scale-out.sh needs $tool (apt-get install -y ${tool%-*})" >&2; exit 1; }
done
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    while pgrep -f "cargo (build|test)" >/dev/null; do
        echo "waiting for another cargo build/test to finish" >&2
        sleep 30
    done
    cargo build --release --bin tiergate
fi

tmp=$(mktemp -d /tmp/tiergate-scale-out.XXXXXX)
schema="scaleout_$$"
declare -a gw_pid=() gw_port=()
lb_pid=
redis_pid=
cleanup() {
    for pid in "${gw_pid[@]}"; do [[ -n $pid ]] && stop_server "$pid"; done
    [[ -n $lb_pid ]] && kill "$lb_pid" 2>/dev/null
    [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $tmp and schema $schema" >&2
    else
        psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS \"$schema\" CASCADE" >/dev/null 2>&1 || true
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
now() { date +%s.%N; }
event() { echo "$1 $(now)" >>"$tmp/events.txt"; }

# The two models the phases use, one thread per replica: three gateways share two cores.
python3 - config/tiergate.toml "$tmp/tiergate.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r"(?m)^(?=\[\[models\]\])", text)
keep = [b for b in blocks if not b.startswith("[[models]]")
        or re.search(r'name = "(smollm2-135m-instruct|all-minilm-l6-v2)"', b)]
open(sys.argv[2], "w").write(re.sub(r"threads = \d+", "threads = 1", "".join(keep)))
PY
config=$tmp/tiergate.toml

# --- Redis of this run ----------------------------------------------------------------------
redis_port=$(free_port)
start_redis() {
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --logfile "$tmp/redis.log" &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return; sleep 0.1; done
    echo "redis did not start" >&2
    return 1
}
start_redis

# --- gateways -------------------------------------------------------------------------------
export TIERGATE_TENANCY__KEYS_FILE="$tmp/keys.toml"
declare -A key
for t in demo-commercial demo-aiss demo-aiss-special demo-research demo-sandbox; do
    key[$t]=$("$TIERGATE" --config "$config" keys create --tenant "$t")
done
limiter_env=()
if [[ $LIMITER == redis ]]; then
    limiter_env=(TIERGATE_TENANCY__LIMITER__BACKEND=redis
        "TIERGATE_TENANCY__LIMITER__URL=redis://127.0.0.1:$redis_port/0"
        "TIERGATE_TENANCY__LIMITER__ON_UNAVAILABLE=$ON_UNAVAILABLE"
        "TIERGATE_TENANCY__LIMITER__GATEWAYS=$GATEWAYS")
fi
read -r -a extra_env <<<"${EXTRA_ENV:-}"
gateway_env() {
    # Every client connects from 127.0.0.1 (through HAProxy): lift the per-IP flood guard.
    echo "TIERGATE_LISTEN=127.0.0.1:${gw_port[$1]}" "TIERGATE_METRICS__LISTEN=127.0.0.1:$(free_port)" \
        "TIERGATE_LEDGER__URL=$PG_URL" "TIERGATE_LEDGER__PG_SCHEMA=$schema" \
        "TIERGATE_LEDGER__CHAIN=gw$1" TIERGATE_TENANCY__IP_REQUESTS_PER_SECOND=100000 \
        TIERGATE_TENANCY__IP_BURST=100000 "${limiter_env[@]}" "${extra_env[@]}"
}
for i in $(seq 1 $GATEWAYS); do
    gw_port[i]=$(free_port)
    # shellcheck disable=SC2046
    env $(gateway_env "$i") "$TIERGATE" --config "$config" serve >"$tmp/gw$i.log" 2>&1 &
    gw_pid[i]=$!
done
for i in $(seq 1 $GATEWAYS); do
    wait_ready "http://127.0.0.1:${gw_port[i]}" || { tail -20 "$tmp/gw$i.log" >&2; exit 1; }
done

# --- HAProxy --------------------------------------------------------------------------------
lb_port=$(free_port)
{
    cat <<EOF
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 600s
    timeout server 600s
    # A refused connection (a dead gateway) is retried on another one.
    retries 2
    option redispatch
frontend api
    bind 127.0.0.1:$lb_port
    default_backend gateways
backend gateways
    balance roundrobin
    # Keyless readiness: 200 ready, 503 loading or draining.
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
    http-response set-header x-served-by %s
EOF
    for i in $(seq 1 $GATEWAYS); do
        echo "    server gw$i 127.0.0.1:${gw_port[i]} check"
    done
} >"$tmp/haproxy.cfg"
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
lb_pid=$!
url="http://127.0.0.1:$lb_port"
wait_ready "$url"
echo "3 gateways (limiter $LIMITER) behind HAProxy on $url; $(machine_load)" >&2
out=$tmp/responses.jsonl

# --- flood ----------------------------------------------------------------------------------
echo "flood: ${FLOOD_SECS}s" >&2
event flood_start
python3 "$CLIENT" flood "$url" "$out" flood "$FLOOD_SECS" \
    "demo-commercial:${key[demo-commercial]}:short:6" \
    "demo-aiss:${key[demo-aiss]}:long:3" \
    "demo-research:${key[demo-research]}:chat:2" \
    "demo-sandbox:${key[demo-sandbox]}:short:1"
event flood_end

# --- kill -9 one gateway under leases ---------------------------------------------------------
# demo-research's leases in Redis (the redis limiter's `{demo-research}:leases` sorted set,
# id -> expiry in microseconds of Redis TIME): "members unexpired". Expired members stay until
# the next admission of that tenant prunes them.
research_leases() {
    local members=0 live=0 k now
    now=$(redis-cli -p "$redis_port" time 2>/dev/null | paste -sd' ' | awk '{ printf "%d%06d", $1, $2 }')
    while read -r k; do
        [[ -z $k ]] && continue
        [[ $(redis-cli -p "$redis_port" type "$k") == zset ]] || continue
        members=$((members + $(redis-cli -p "$redis_port" zcard "$k")))
        live=$((live + $(redis-cli -p "$redis_port" zcount "$k" "$now" +inf)))
    done < <(redis-cli -p "$redis_port" --scan --pattern '*demo-research*' 2>/dev/null)
    echo "$members $live"
}
# After the kill: samples the leases every 0.5 s until at most 2 are unexpired (the streams on
# the surviving gateways); records when that happened, by Redis's own clock of expiry.
watch_leases() {
    local start=$1
    for _ in $(seq 240); do
        read -r members live <<<"$(research_leases)"
        echo "$(now) $members $live" >>"$tmp/leases.txt"
        if ((live <= 2)); then
            echo "stale_leases_expired_after_s $(python3 -c "print(round($(now) - $start, 1))")" >>"$tmp/events.txt"
            return
        fi
        sleep 0.5
    done
}
echo "kill: 4 research streams of $STREAM_TOKENS tokens (2 on gw1), then kill -9 gw1" >&2
sleep 2 # research's flood requests have ended and returned their leases
g() { echo "http://127.0.0.1:${gw_port[$1]}"; }
python3 "$CLIENT" streams "$(g 1),$(g 1),$(g 2),$(g 3)" "$out" streams \
    "demo-research:${key[demo-research]}" "$STREAM_TOKENS" &
streams=$!
sleep 3
echo "gw1_port ${gw_port[1]}" >>"$tmp/events.txt"
echo "leases_before_kill $(research_leases)" >>"$tmp/events.txt"
kill -9 "${gw_pid[1]}"
gw_pid[1]=
event kill
echo "leases_after_kill $(research_leases)" >>"$tmp/events.txt"
watcher=
if [[ $LIMITER == redis ]]; then
    watch_leases "$(now)" &
    watcher=$!
fi
probe_secs=$(python3 "$CLIENT" probe "$url" "$out" probe 180 "demo-research:${key[demo-research]}")
echo "probe_admitted_after_s $probe_secs" >>"$tmp/events.txt"
echo "leases_after_probe $(research_leases)" >>"$tmp/events.txt"
wait "$streams"
[[ -n $watcher ]] && wait "$watcher"
event streams_end

# --- Redis outage ---------------------------------------------------------------------------
echo "outage: Redis down for ${OUTAGE_SECS}s in a $((3 * OUTAGE_SECS))s flood" >&2
python3 "$CLIENT" flood "$url" "$out" outage "$((3 * OUTAGE_SECS))" \
    "demo-aiss-special:${key[demo-aiss-special]}:short:2" &
flood=$!
event outage_flood_start
sleep "$OUTAGE_SECS"
redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
wait "$redis_pid" 2>/dev/null || true
redis_pid=
event redis_down
sleep "$OUTAGE_SECS"
start_redis
event redis_up
wait "$flood"
event outage_flood_end

# --- ledger ---------------------------------------------------------------------------------
for i in $(seq 2 $GATEWAYS); do
    stop_server "${gw_pid[i]}"
    gw_pid[i]=
done
psql -At "$PG_URL" -c "SELECT COALESCE(json_agg(r), '[]') FROM (SELECT chain, tenant, tier,
    outcome, COALESCE(reason, '') AS reason, time_ms, prompt_tokens, completion_tokens
    FROM \"$schema\".usage_records) r" >"$tmp/ledger.json"
set +e
env "TIERGATE_LEDGER__URL=$PG_URL" "TIERGATE_LEDGER__PG_SCHEMA=$schema" \
    "$TIERGATE" --config "$config" ledger verify >"$tmp/verify.txt" 2>&1
echo "verify_exit $?" >>"$tmp/events.txt"
set -e
grep -h -i "unavailable\|redis" "$tmp"/gw*.log | head -5 >"$tmp/limiter-log.txt" || true

python3 loadtests/scale_out_table.py "$tmp" "$LIMITER" "$GATEWAYS"
