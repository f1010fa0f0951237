"""Structured outputs and tool calls through the official `openai` Python SDK and
langchain-openai, on each chat model given as BASE_URL MODEL pairs in argv: pydantic models
parsed from `response_format`, required and named tool calls whose arguments validate,
streamed calls that reassemble to the same call, and a schema that holds over 20 answers
sampled at temperature 1.

Run by tests/openai_sdk.rs; exits non-zero with the failing check on any mismatch.
"""

import json
import sys
from enum import Enum
from typing import List

import openai
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field
from checks import check, on_each_model


class Role(str, Enum):
    admin = "admin"
    user = "user"
    guest = "guest"


class Address(BaseModel):
    city: str = Field(max_length=20)
    zip_code: int


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int
    role: Role
    address: Address
    tags: List[str] = Field(max_length=3)


class GetWeather(BaseModel):
    """Current weather of a city."""

    city: str = Field(max_length=30)
    unit: Role  # any enum will do: the point is that it validates


class GetTime(BaseModel):
    """Current time in a time zone."""

    tz: str = Field(max_length=30)


ASK = [{"role": "user", "content": "Describe a person as JSON."}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def parsed_person(client, model):
    out = client.chat.completions.parse(
        model=model, messages=ASK, response_format=Person, max_tokens=150, temperature=0,
    )
    message = out.choices[0].message
    check(isinstance(message.parsed, Person), f"{model}: parse() gives a Person")
    check(out.choices[0].finish_reason == "stop", f"{model}: a whole answer stops")


def schema_holds_over_twenty_samples(client, model):
    answers = []
    for seed in range(4):
        out = client.chat.completions.parse(
            model=model, messages=ASK, response_format=Person, max_tokens=150,
            temperature=1.0, seed=seed, n=5,
        )
        answers += [c.message.parsed for c in out.choices if c.finish_reason == "stop"]
    check(len(answers) == 20, f"{model}: 20 sampled answers all complete ({len(answers)})")
    check(all(isinstance(a, Person) for a in answers), f"{model}: all 20 validate")


def required_and_named_calls(client, model):
    tools = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)]
    out = client.chat.completions.parse(
        model=model, messages=WEATHER, tools=tools, tool_choice="required",
        max_tokens=100, temperature=0,
    )
    choice = out.choices[0]
    check(choice.finish_reason == "tool_calls", f"{model}: required -> finish_reason tool_calls")
    calls = choice.message.tool_calls
    check(len(calls) >= 1, f"{model}: required gives a call")
    check(all(isinstance(c.function.parsed_arguments, (GetWeather, GetTime)) for c in calls),
          f"{model}: required call arguments validate")
    named = client.chat.completions.parse(
        model=model, messages=WEATHER, tools=tools, max_tokens=100, temperature=0,
        tool_choice={"type": "function", "function": {"name": "GetTime"}},
    )
    calls = named.choices[0].message.tool_calls
    check(len(calls) == 1 and calls[0].function.name == "GetTime", f"{model}: named function called")
    check(isinstance(calls[0].function.parsed_arguments, GetTime), f"{model}: named arguments validate")
    return tools, [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]


def streamed_calls_reassemble(client, model, tools, expected):
    stream = client.chat.completions.create(
        model=model, messages=WEATHER, tools=tools, tool_choice="required",
        max_tokens=100, temperature=0, stream=True,
    )
    calls = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for tc in choice.delta.tool_calls or []:
            if tc.index not in calls:
                check(tc.id is not None and tc.function.name is not None,
                      f"{model}: a streamed call opens with id and name")
                calls[tc.index] = [tc.function.name, ""]
            calls[tc.index][1] += tc.function.arguments or ""
    got = [(name, json.loads(args)) for name, args in (calls[i] for i in sorted(calls))]
    check(finish == "tool_calls", f"{model}: streamed finish_reason tool_calls")
    check(got == expected, f"{model}: streamed calls reassemble to the whole answer")


def langchain_structured_output(base_url, model):
    llm = ChatOpenAI(base_url=base_url, api_key="unused", model=model, temperature=0,
                     max_tokens=150, max_retries=0)
    person = llm.with_structured_output(Person).invoke("Describe a person as JSON.")
    check(isinstance(person, Person), f"{model}: langchain with_structured_output (json_schema)")
    weather = llm.with_structured_output(GetWeather, method="function_calling").invoke(
        "What is the weather in Paris?")
    check(isinstance(weather, GetWeather), f"{model}: langchain with_structured_output (tools)")


def one_model(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    parsed_person(client, model)
    schema_holds_over_twenty_samples(client, model)
    tools, expected = required_and_named_calls(client, model)
    streamed_calls_reassemble(client, model, tools, expected)
    langchain_structured_output(base_url, model)


if __name__ == "__main__":
    on_each_model(one_model)
