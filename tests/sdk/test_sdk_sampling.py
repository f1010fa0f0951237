"""Sampling fields through the official `openai` Python SDK: logprobs, n, penalties,
logit_bias and echo, on each chat model given as BASE_URL MODEL pairs in argv.

Run by tests/openai_sdk.rs; exits non-zero with the failing check on any mismatch.
"""

import math
import sys

import openai
from checks import check, on_each_model


def one_model(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Name three colours."}]

    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=3, presence_penalty=0.5, frequency_penalty=0.5,
        logit_bias={"0": -100}, n=1, user="sdk-test", seed=3,
    )
    content = chat.choices[0].logprobs.content
    check(len(content) >= 1, f"{model}: chat logprobs.content has entries")
    first = content[0]
    check(len(first.top_logprobs) == 3 and first.logprob <= 0, f"{model}: typed top_logprobs")
    check(first.token == first.top_logprobs[0].token, f"{model}: greedy token is the top one")
    check(chat.choices[0].message.refusal is None, f"{model}: refusal is null")

    many = client.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=1.0, seed=11, n=3,
    )
    check([c.index for c in many.choices] == [0, 1, 2], f"{model}: n=3 gives three choices")
    again = client.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=1.0, seed=11, n=3,
    )
    same = [c.message.content for c in many.choices] == [c.message.content for c in again.choices]
    check(same, f"{model}: seeded n=3 is reproducible")
    check(many.usage.prompt_tokens == chat.usage.prompt_tokens, f"{model}: prompt counted once")

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=4, temperature=0, n=2, stream=True,
        logprobs=True, top_logprobs=1, stream_options={"include_usage": True},
    )
    texts, entries, usage = {0: "", 1: ""}, 0, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.logprobs is not None and c.logprobs.content:
                entries += len(c.logprobs.content)
    check(texts[0] == texts[1] and texts[0], f"{model}: greedy n=2 stream, equal choices")
    check(entries >= 2 and usage is not None, f"{model}: streamed logprobs and usage")

    comp = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=3, temperature=0,
        logprobs=2, echo=True,
    )
    lp = comp.choices[0].logprobs
    check(comp.choices[0].text.startswith("The capital of France is"), f"{model}: echo")
    check(lp.token_logprobs[0] is None and all(math.isfinite(x) for x in lp.token_logprobs[1:]),
          f"{model}: completion token_logprobs")
    check(lp.text_offset == sorted(lp.text_offset), f"{model}: text_offset increases")

    try:
        client.chat.completions.create(model=model, messages=messages, n=0)
        check(False, f"{model}: n=0 refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "n", f"{model}: n=0 is BadRequestError naming n")


if __name__ == "__main__":
    on_each_model(one_model)
