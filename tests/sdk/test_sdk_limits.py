"""The official `openai` SDK's automatic retry against tiergate's 429s.

argv: base URL, a key of a tenant limited to one request per second (burst 1), a key of a
tenant with no budget. Run by tests/openai_sdk.rs. The SDK must retry a rate limit after the
wait the headers give and succeed, and must not retry when told `x-should-retry: false`.
"""

import sys
import time

import openai
from checks import check

CHAT = "smollm2-135m-instruct"



def client(base_url, key, statuses):
    hooks = {"response": [lambda r: statuses.append(r.status_code)]}
    return openai.OpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=2,
        timeout=120,
        # The SDK's own default client class, with a hook that sees every attempt.
        http_client=openai.DefaultHttpx2Client(event_hooks=hooks),
    )


def ask(c):
    return c.completions.create(model=CHAT, prompt="1, 2, 3,", max_tokens=2, temperature=0)


def main(base_url, paced_key, broke_key):
    statuses = []
    c = client(base_url, paced_key, statuses)
    ask(c)
    started = time.monotonic()
    raw = c.completions.with_raw_response.create(
        model=CHAT, prompt="1, 2, 3,", max_tokens=2, temperature=0
    )
    waited = time.monotonic() - started
    check(statuses == [200, 429, 200], f"second request retried once after a 429: {statuses}")
    check(1.0 <= waited < 30, f"the SDK waited for the advertised refill: {waited:.2f}s")
    remaining = raw.headers.get("x-ratelimit-remaining-requests")
    check(remaining == "0", f"x-ratelimit-remaining-requests after it: {remaining}")

    statuses = []
    c = client(base_url, broke_key, statuses)
    try:
        ask(c)
        check(False, "a tenant without budget is refused")
    except openai.RateLimitError as e:
        check(e.code == "insufficient_quota", f"code insufficient_quota: {e.code}")
        check(e.response.headers.get("x-should-retry") == "false", "x-should-retry: false")
    check(statuses == [429], f"no retry when the budget is spent: {statuses}")
    print("all SDK limit checks passed")


if __name__ == "__main__":
    main(*sys.argv[1:4])
