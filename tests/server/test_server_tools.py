"""Thinking output and tool calls over real HTTP with the official ``openai`` client, on the demo Thinking model
(trained here to answer its chats with known reasoning, tool calls and answers)."""

import json

import httpx
import pytest
from server_env import MODEL_NAME, USER_KEYS, running_server

from ernie_paddle.devkit import thinking_demo as demo


@pytest.fixture(scope="module")
def thinking_dir(tmp_path_factory):
    return demo.make_thinking_demo(tmp_path_factory.mktemp("thinking") / "ernie-thinking-demo")


@pytest.fixture(scope="module")
def thinking_server(thinking_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("thinking-server")
    with running_server(thinking_dir, root) as proc:
        yield proc


@pytest.fixture
def tclient(thinking_server):
    import openai

    return openai.OpenAI(base_url=thinking_server.base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tok(thinking_dir):
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    return ErnieTokenizer.from_folder(thinking_dir)


def _ask(client, messages, stream, **kw):
    """(reasoning, content, tool_calls as (id, name, args), finish_reason, usage) of one chat answer."""
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0, max_tokens=200,
                                       stream=stream, **kw)
    if not stream:
        msg = r.choices[0].message
        calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []]
        return msg.reasoning_content, msg.content, calls, r.choices[0].finish_reason, r.usage
    reasoning = content = ""
    calls, finish, pieces = {}, None, 0
    for chunk in r:
        ch = chunk.choices[0]
        reasoning += getattr(ch.delta, "reasoning_content", None) or ""
        content += ch.delta.content or ""
        pieces += bool(getattr(ch.delta, "reasoning_content", None))
        for c in ch.delta.tool_calls or []:
            got = calls.setdefault(c.index, {"id": "", "name": "", "arguments": ""})
            got["id"] += c.id or ""
            got["name"] += c.function.name or ""
            got["arguments"] += c.function.arguments or ""
        finish = ch.finish_reason or finish
    assert pieces > 3  # the reasoning streamed in several deltas
    calls = [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    return reasoning or None, content or None, calls, finish, None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tool_call_round_trip(tclient, stream):
    reasoning, content, calls, finish, _ = _ask(tclient, demo.QUESTION, stream, tools=[demo.WEATHER_TOOL])
    assert reasoning == demo.CALL_REASONING and not content and finish == "tool_calls"
    [(call_id, name, args)] = calls
    assert call_id.startswith("call_") and name == demo.CALL["name"] and args == demo.CALL["arguments"]
    history = [*demo.QUESTION,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)}}]},
               {"role": "tool", "tool_call_id": call_id, "content": demo.TOOL_RESULT}]
    reasoning, content, calls, finish, _ = _ask(tclient, history, stream, tools=[demo.WEATHER_TOOL])
    assert (reasoning, content, calls, finish) == (demo.ANSWER_REASONING, demo.ANSWER, [], "stop")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_reasoning_split_without_tools(tclient, stream):
    reasoning, content, calls, finish, _ = _ask(tclient, demo.GREETING, stream)
    assert (reasoning, content, calls, finish) == (demo.GREET_REASONING, demo.GREET_ANSWER, [], "stop")


def test_template_kwargs_and_tool_choice_none_reach_the_prompt(tclient, tok):
    def prompt_tokens(**kw):
        return tclient.chat.completions.create(model=MODEL_NAME, messages=demo.GREETING, max_tokens=1,
                                               temperature=0, **kw).usage.prompt_tokens

    off = tok.apply_chat_template(demo.GREETING, tokenize=True, enable_thinking=False)
    on = tok.apply_chat_template(demo.GREETING, tokenize=True)
    assert len(off) != len(on)
    assert prompt_tokens(extra_body={"chat_template_kwargs": {"enable_thinking": False}}) == len(off)
    assert prompt_tokens() == len(on)
    assert prompt_tokens(tools=[demo.WEATHER_TOOL], tool_choice="none") == len(on)
    with_tools = tok.apply_chat_template(demo.GREETING, tokenize=True, tools=[demo.WEATHER_TOOL])
    assert prompt_tokens(tools=[demo.WEATHER_TOOL], tool_choice="auto") == len(with_tools)


@pytest.mark.parametrize("body, field", [
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [demo.WEATHER_TOOL]}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"messages": [*demo.QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]}]},
     "messages"),
])
def test_bad_tool_requests_are_400_naming_the_field(thinking_server, body, field):
    r = httpx.post(thinking_server.base + "/v1/chat/completions",
                   headers={"Authorization": f"Bearer {USER_KEYS[0]}"},
                   json={"model": MODEL_NAME, "messages": demo.GREETING, "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_required_tool_choice_forces_a_parsed_call(thinking_server):
    """The greeting would be answered in text; "required" forces a call, which the parser returns."""
    unit_tool = {"type": "function", "function": {"name": "set_unit", "parameters": {
        "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"],
        "additionalProperties": False}}}
    r = httpx.post(thinking_server.base + "/v1/chat/completions",
                   headers={"Authorization": f"Bearer {USER_KEYS[0]}"},
                   json={"model": MODEL_NAME, "messages": demo.GREETING, "max_tokens": 96, "temperature": 0,
                         "tools": [unit_tool], "tool_choice": "required",
                         "chat_template_kwargs": {"enable_thinking": False}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "set_unit" and json.loads(call["arguments"])["unit"] in ("c", "f")


def test_demo_step_prints_the_parsed_answers(thinking_dir, tmp_path):
    import shutil

    from ernie_paddle.devkit.demo import DemoContext, step_thinking

    shutil.copytree(thinking_dir, tmp_path / "thinking-hf")  # same fingerprint: reused, not retrained
    lines = []
    step_thinking(DemoContext(tmp_path), lines.append)
    text = "\n".join(lines)
    for want in (f"reasoning: {demo.CALL_REASONING}", f"tool call: get_weather({json.dumps(demo.CALL['arguments'])})",
                 f"reasoning: {demo.ANSWER_REASONING}", f"content: {demo.ANSWER}", f"content: {demo.GREET_ANSWER}"):
        assert want in text, text
