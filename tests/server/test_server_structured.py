"""Structured output over real HTTP with the official ``openai`` client, on the random-weights tiny model:
constrained decoding makes the answer valid whatever the weights say."""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from server_env import MODEL_NAME

from ernie_paddle.server.structured_request import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


class Forecast(BaseModel):
    city: str = Field(max_length=12)
    days: int = Field(ge=1, le=14)
    unit: Literal["celsius", "fahrenheit"]
    rain: bool


SCHEMA = {**Forecast.model_json_schema(), "additionalProperties": False}  # as OpenAI's strict mode wants it
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                 "parameters": SCHEMA}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_parse_with_pydantic_model_gives_valid_json(client):
    out = client.chat.completions.parse(model=MODEL_NAME, messages=ASK, response_format=Forecast, max_tokens=200)
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Forecast)
    jsonschema.validate(json.loads(choice.message.content), Forecast.model_json_schema())


def test_json_object_is_parseable_streaming_too(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=600, temperature=0,
                                         response_format={"type": "json_object"})
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    chunks = client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=600, stream=True,
                                            temperature=0, response_format={"type": "json_object"})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content  # greedy: the stream spells the same object


def test_json_schema_under_concurrency_leaves_plain_requests_exact(client):
    """Unconstrained greedy requests batched with constrained ones produce exactly what they produce alone."""
    prompts = [f"Tell me about item {i}" for i in range(4)]

    def plain(p):
        r = client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=24, temperature=0)
        return r.choices[0].text

    def constrained(seed):
        r = client.chat.completions.create(
            model=MODEL_NAME, messages=ASK, max_tokens=200, temperature=0.8, seed=seed,
            response_format={"type": "json_schema", "json_schema": {
                "name": "forecast", "schema": SCHEMA, "strict": True}})
        return r.choices[0]

    alone = [plain(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        mixed = [pool.submit(constrained, s) for s in range(4)] + [pool.submit(plain, p) for p in prompts]
        results = [f.result() for f in mixed]
    assert results[4:] == alone
    for choice in results[:4]:
        assert choice.finish_reason == "stop"
        Forecast.model_validate_json(choice.message.content)


def test_forced_tool_call_from_a_model_that_would_not_call(client):
    for tool_choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=300,
                                             tools=[WEATHER_TOOL], tool_choice=tool_choice)
        msg = out.choices[0].message
        if msg.tool_calls:  # a server that parses <tool_call> text into OpenAI tool_calls
            name, args = msg.tool_calls[0].function.name, json.loads(msg.tool_calls[0].function.arguments)
        else:
            assert msg.content.startswith(TOOL_CALL_OPEN) and msg.content.endswith(TOOL_CALL_CLOSE)
            call = json.loads(msg.content[len(TOOL_CALL_OPEN):-len(TOOL_CALL_CLOSE)])
            name, args = call["name"], call["arguments"]
        assert name == "get_weather"
        Forecast.model_validate(args)


def test_regex_and_choice_extensions_and_length(client):
    out = client.completions.create(model=MODEL_NAME, prompt="Order number:", max_tokens=40,
                                    extra_body={"guided_regex": r"[A-Z]{2}-[0-9]{3}"})
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", out.choices[0].text) and out.choices[0].finish_reason == "stop"
    out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=10, n=2, temperature=1.0,
                                         seed=3, extra_body={"structured_outputs": {"choice": ["sunny", "rainy"]}})
    assert all(c.message.content in ("sunny", "rainy") for c in out.choices)
    # an object whose only value needs 50 characters cannot close within 3 tokens: cut off, "length"
    long_value = {"type": "object", "properties": {"a": {"type": "string", "minLength": 50}}, "required": ["a"]}
    out = client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=3, response_format={
        "type": "json_schema", "json_schema": {"name": "long", "schema": long_value}})
    assert out.choices[0].finish_reason == "length" and out.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("body, param", [
    ({"guided_regex": "[a-"}, "guided_regex"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "response_format"),
])
def test_bad_constraints_are_400_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=8, extra_body=body)
    assert err.value.status_code == 400 and err.value.body["param"] == param
