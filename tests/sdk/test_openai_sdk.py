"""The official `openai` Python SDK against a running tiergate (base URL in argv[1]).

Run by tests/openai_sdk.rs, which starts the gateway; `.ci/run` installs the SDK in .venv
(see tests/sdk/requirements.txt). Exits non-zero with the failing check on any mismatch.
"""

import base64
import struct
import sys

import openai
from checks import check

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"



def main(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    models = [m.id for m in client.models.list()]
    check(CHAT in models and EMBED in models, f"models.list names both models: {models}")

    chat = client.chat.completions.create(
        model=CHAT,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=24,
        temperature=0,
    )
    text = chat.choices[0].message.content or ""
    check("Paris" in text, f"chat answers Paris: {text!r}")
    check(chat.usage.prompt_tokens == 27, f"usage.prompt_tokens == 27: {chat.usage}")
    check(chat.choices[0].finish_reason in ("stop", "length"), "finish_reason")

    stream = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    check(len(pieces) > 0, f"streamed chat yields text: {''.join(pieces)!r}")
    check(usage is not None and usage.completion_tokens >= 1, f"final usage chunk: {usage}")
    check(finish in ("stop", "length"), f"stream finish_reason: {finish}")

    completion = client.completions.create(model=CHAT, prompt="1, 2, 3,", max_tokens=4, temperature=0)
    check(completion.usage.completion_tokens <= 4, "completions.create")

    emb = client.embeddings.create(model=EMBED, input=["The cat sits on the mat.", "A cat is sitting on a rug."])
    a, b = emb.data[0].embedding, emb.data[1].embedding
    cos = sum(x * y for x, y in zip(a, b))
    check(len(a) == 384 and abs(cos - 0.7689) < 1e-3, f"embeddings: dim {len(a)}, cos {cos:.4f}")

    # The SDK asks for base64 by default when numpy is absent and decodes it itself; check the
    # raw shape too.
    raw = client.embeddings.create(model=EMBED, input="x", encoding_format="base64")
    emb_b64 = raw.data[0].embedding
    if isinstance(emb_b64, str):
        emb_b64 = list(struct.unpack(f"<{len(base64.b64decode(emb_b64)) // 4}f", base64.b64decode(emb_b64)))
    check(len(emb_b64) == 384, "base64 embeddings decode to 384 floats")

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        check(False, "unknown model raises")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and e.body.get("code") == "model_not_found", f"NotFoundError: {e.body}")

    try:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}], n=99)
        check(False, "n above the cap raises")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "n", f"BadRequestError names the param: {e.body}")

    # The SDK's optional fields, as it sends them, at values that change nothing here.
    shaped = client.chat.completions.create(
        model=CHAT,
        messages=[
            {"role": "user", "content": "hi", "name": "ada"},
            {"role": "assistant", "content": "Hello!", "refusal": None, "tool_calls": []},
            {"role": "user", "content": "Say hello."},
        ],
        max_completion_tokens=2,
        user="user-1234",
        metadata={"project": "demo"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=True,
        stop=None,
        seed=None,
    )
    check(shaped.choices[0].message.refusal is None, "message.refusal is null")
    details = (shaped.usage.prompt_tokens_details, shaped.usage.completion_tokens_details)
    check(
        0 <= details[0].cached_tokens < shaped.usage.prompt_tokens
        and details[1].reasoning_tokens == 0,
        f"usage details: {shaped.usage}",
    )

    # A wrong type is the SDK's BadRequestError (400), not UnprocessableEntityError (422).
    try:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=-1)
        check(False, "max_tokens=-1 raises")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "max_tokens", f"BadRequestError names max_tokens: {e.body}")

    print("all SDK checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
