#!/usr/bin/env bash
# Prefix cache: six streamed chats sharing one ~2,000-token system prompt, each with its own
# question, one at a time, against tiergate with its prefix cache on (default budget) and
# off (prefix_cache_bytes = 0). Prints the first request's TTFT and the later ones' p50, in
# ms, as a Markdown table (both servers in one run: compare the ratio). SmolLM2, auth off.
#   SKIP_BUILD=1 TIERGATE=target/debug/tiergate loadtests/prefix-cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtests/lib.sh
MODEL=${MODEL:-smollm2-135m-instruct}
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --bin tiergate
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$(machine_load)" >&2

# run MODE BUDGET: starts a server with that prefix-cache budget, prints "MODE first p50".
run() {
    local mode=$1 budget=$2 port
    port=$(free_port)
    single_model_config config/tiergate.toml "$tmp/$mode.toml" "$MODEL"
    sed -i "s/^# prefix_cache_bytes = .*/prefix_cache_bytes = $budget/" "$tmp/$mode.toml"
    start_open "$PWD/$TIERGATE" "$PWD" "$port" "$tmp/$mode.toml" "$tmp"
    python3 - "$port" "$MODEL" "$mode" <<'PY'
import http.client, json, statistics, sys, time
port, model, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
system = "You are the assistant of a city library. " + (
    "Answer briefly and politely, cite the library's rules when they apply, never invent "
    "opening hours, fees or titles, and suggest asking the staff when unsure. ") * 70
questions = ["Can I renew a book online?", "Where are the maps?", "Do you have wifi?",
             "How many books can I borrow?", "Is there a quiet room?", "Can I print here?"]
ttfts = []
for q in questions:
    body = {"model": model, "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    first = None
    for line in resp:
        line = line.decode().strip()
        if first is None and line.startswith("data: {") and '"content"' in line:
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    conn.close()
    ttfts.append(first * 1e3)
print(f"{mode} {ttfts[0]:.0f} {statistics.median(ttfts[1:]):.0f}")
PY
    stop_server "$server"
}

on=$(run on 536870912)
off=$(run off 0)
echo "| tiergate prefix cache | first request TTFT ms | later requests TTFT p50 ms |"
echo "|---|---:|---:|"
for r in "$on" "$off"; do
    read -r mode first p50 <<<"$r"
    echo "| $mode | $first | $p50 |"
done
