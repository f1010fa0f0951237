"""The Responses API through the official `openai` Python SDK: `responses.create` whole and
streamed (typed events), the `responses.stream` helper, function calls and their outputs sent
back, and what a stateless server refuses, on each chat model given as BASE_URL MODEL pairs in
argv.

Run by tests/openai_sdk.rs; exits non-zero with the failing check on any mismatch.
"""

import json
import sys

import openai
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseIncompleteEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from checks import check, on_each_model


def one_model(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    question = "What is the capital of France?"

    resp = client.responses.create(
        model=model, input=question, instructions="Answer briefly.",
        max_output_tokens=12, temperature=0,
    )
    check(resp.object == "response" and resp.id.startswith("resp_"), f"{model}: typed Response")
    check(resp.output_text != "", f"{model}: output_text is not empty")
    check(resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0, f"{model}: usage")
    check(resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens,
          f"{model}: total_tokens adds up")
    check(resp.instructions == "Answer briefly.", f"{model}: instructions echoed")

    stream = client.responses.create(
        model=model, input=question, instructions="Answer briefly.",
        max_output_tokens=12, temperature=0, stream=True,
    )
    events = list(stream)
    check(isinstance(events[0], ResponseCreatedEvent), f"{model}: stream opens with response.created")
    deltas = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    done = [e.text for e in events if isinstance(e, ResponseTextDoneEvent)]
    last = events[-1]
    check(isinstance(last, (ResponseCompletedEvent, ResponseIncompleteEvent)),
          f"{model}: stream ends with a typed response.completed (or .incomplete)")
    check(done == [deltas] and last.response.output_text == deltas,
          f"{model}: deltas concatenate to the final output_text")
    check(deltas == resp.output_text, f"{model}: greedy stream says what the whole answer says")
    numbers = [e.sequence_number for e in events]
    check(numbers == list(range(len(events))), f"{model}: sequence numbers count up")

    # get_final_response needs `response.completed`: room for the whole answer.
    with client.responses.stream(
        model=model, input=question, instructions="Answer in one word.",
        max_output_tokens=64, temperature=0,
    ) as helper:
        helped = "".join(e.delta for e in helper if e.type == "response.output_text.delta")
        final = helper.get_final_response()
    check(final.output_text == helped and helped != "", f"{model}: stream helper's final response")

    function_calls(client, model)

    for field, value in (("previous_response_id", "resp_1"), ("store", True)):
        try:
            client.responses.create(model=model, input=question, **{field: value})
            check(False, f"{model}: {field} refused")
        except openai.BadRequestError as e:
            check(e.body.get("param") == field, f"{model}: {field} is BadRequestError naming it")
    try:
        client.responses.retrieve("resp_1")
        check(False, f"{model}: retrieve refused")
    except openai.NotFoundError:
        check(True, f"{model}: retrieve is NotFoundError (nothing is stored)")


WEATHER = {
    "type": "function", "name": "get_weather", "description": "Current weather of a city",
    "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False},
}


def function_calls(client, model: str) -> None:
    """A call as a typed item, its output sent back with the SDK's own items, and streamed."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    asked = dict(model=model, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                 max_output_tokens=60, temperature=0)
    resp = client.responses.create(input=question, **asked)
    calls = [item for item in resp.output if item.type == "function_call"]
    check(len(calls) == 1 and calls[0].name == "get_weather", f"{model}: one typed function_call")
    call = calls[0]
    check(json.loads(call.arguments)["city"] != "", f"{model}: its arguments are JSON")

    history = question + [item.model_dump(exclude_none=True) for item in resp.output] + [
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, sunny"}]
    answer = client.responses.create(
        model=model, input=history, tools=[WEATHER], max_output_tokens=30, temperature=0)
    check(answer.status in ("completed", "incomplete") and answer.output,
          f"{model}: the call's output sent back with the SDK's own items is served")

    with client.responses.stream(input=question, **asked) as stream:
        pieces = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    streamed = [item for item in final.output if item.type == "function_call"]
    check(len(streamed) == 1 and streamed[0].arguments == pieces == call.arguments,
          f"{model}: streamed argument deltas join to the whole call")


if __name__ == "__main__":
    on_each_model(one_model)
