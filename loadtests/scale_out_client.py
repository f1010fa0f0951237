"""Clients of loadtests/scale-out.sh (standard library only): every response is one JSON line
with its time, tenant, phase, HTTP status, the limit that refused it and the gateway that
answered (HAProxy's `x-served-by`), so the table can count admissions per tenant and kind.

    python3 scale_out_client.py flood  URL OUT PHASE SECS SPEC...   SPEC = TENANT:KEY:KIND:CONC
    python3 scale_out_client.py streams URL,URL... OUT PHASE TENANT:KEY MAX_TOKENS
    python3 scale_out_client.py probe  URL OUT PHASE TIMEOUT_SECS TENANT:KEY

flood: each SPEC runs CONC closed-loop workers for SECS seconds; KIND `short` sends a one-line
embedding (the request limit binds), `long` eight ~120-token inputs (the token limit binds),
`chat` a one-token chat completion. streams: one streamed chat of MAX_TOKENS tokens per URL, all
at once, held to the end (concurrency leases). probe: one short chat a second until one is admitted
(prints the seconds it took; one a second stays within every tier's request burst).
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse

EMBED = "all-minilm-l6-v2"
CHAT = "smollm2-135m-instruct"
LONG_INPUT = " ".join(["the compute centre shares its accelerators fairly between tenants"] * 12)
BODIES = {
    "short": ("/v1/embeddings", {"model": EMBED, "input": "hello"}),
    "long": ("/v1/embeddings", {"model": EMBED, "input": [LONG_INPUT] * 8}),
    "chat": ("/v1/chat/completions", {
        "model": CHAT, "max_tokens": 1, "temperature": 0,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Say hi."}]}),
}
lock = threading.Lock()


def limit_kind(status, body):
    """Which limit refused a request, from the OpenAI-shaped error."""
    if status == 200:
        return ""
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return "no-json"
    msg = err.get("message", "")
    if err.get("code") == "insufficient_quota":
        return "budget"
    for needle, kind in (("requests per minute", "requests"), ("tokens per minute", "tokens"),
                         ("concurrent", "concurrency"), ("too large", "too_large")):
        if needle in msg:
            return kind
    return err.get("code") or err.get("type") or "error"


def connect(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)


def send(conn, key, path, body):
    """One request; returns (status, body text, served-by). Raises on a broken connection."""
    conn.request("POST", path, json.dumps(body),
                 {"authorization": f"Bearer {key}", "content-type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    return resp.status, text, resp.getheader("x-served-by", "")


def record(out, **row):
    row["t"] = time.time()
    with lock:
        out.write(json.dumps(row) + "\n")
        out.flush()


def one(url, out, phase, tenant, key, path, body):
    """Sends one request on a fresh connection and records it; a dropped connection (a killed
    gateway) is status 0."""
    conn = connect(url)
    try:
        status, text, gw = send(conn, key, path, body)
    except (OSError, http.client.HTTPException) as e:
        status, text, gw = 0, str(e), ""
    finally:
        conn.close()
    record(out, phase=phase, tenant=tenant, status=status, kind=limit_kind(status, text),
           gateway=gw)
    return status


def flood(url, out, phase, secs, specs):
    end = time.time() + float(secs)

    def worker(tenant, key, kind):
        path, body = BODIES[kind]
        while time.time() < end:
            if one(url, out, phase, tenant, key, path, body) != 200:
                time.sleep(0.02)  # a refused client retries soon, not in a hot loop

    threads = []
    for spec in specs:
        tenant, key, kind, conc = spec.split(":")
        threads += [threading.Thread(target=worker, args=(tenant, key, kind))
                    for _ in range(int(conc))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def streams(urls, out, phase, spec, max_tokens):
    """One stream per URL (a gateway's own address, so that the run knows which gateway
    holds which lease); `gateway` in the rows is that URL."""
    tenant, key = spec.split(":")
    body = {"model": CHAT, "max_tokens": int(max_tokens), "temperature": 0, "stream": True,
            "ignore_eos": True, "messages": [{"role": "user", "content": "Count to a thousand."}]}

    def run(url):
        conn = connect(url)
        try:
            status, text, _ = send(conn, key, "/v1/chat/completions", body)
        except (OSError, http.client.HTTPException) as e:
            status, text = 0, str(e)
        finally:
            conn.close()
        if status == 200 and "[DONE]" not in text:
            status = 0  # cut: its gateway died mid-answer
        record(out, phase=phase, tenant=tenant, status=status, kind=limit_kind(status, text),
               gateway=url)

    threads = [threading.Thread(target=run, args=(url,)) for url in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def probe(url, out, phase, timeout, spec):
    tenant, key = spec.split(":")
    path, body = BODIES["chat"]
    start = time.time()
    while time.time() - start < float(timeout):
        if one(url, out, phase, tenant, key, path, body) == 200:
            print(f"{time.time() - start:.1f}")
            return
        time.sleep(1.0)
    print("timeout")


def main():
    cmd, url, out_path, phase = sys.argv[1:5]
    rest = sys.argv[5:]
    with open(out_path, "a") as out:
        if cmd == "flood":
            flood(url, out, phase, rest[0], rest[1:])
        elif cmd == "streams":
            streams(url.split(","), out, phase, *rest)
        elif cmd == "probe":
            probe(url, out, phase, *rest)
        else:
            sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
