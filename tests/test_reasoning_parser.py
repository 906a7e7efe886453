"""The ERNIE output parser: reasoning / content / tool calls split exactly, whatever the chunk boundaries."""

import json
import re
from itertools import combinations

import pytest

from ernie_paddle.server.reasoning import OutputParser, parse_output, starts_in_reasoning

REASONING = "The user greets me. I answer with\nmy name < 3 lines."
ANSWER = "Hello! I am ERNIE.\n\nNice to </meet> you."
CALL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}
ANSWER_TRANSCRIPT = f"{REASONING}\n</think>\n\n<response>\n{ANSWER}\n</response>"
CALL_TRANSCRIPT = f"{REASONING}\n</think>\n\n<tool_call>\n{json.dumps(CALL, ensure_ascii=False)}\n</tool_call>"


def _run(chunks, reasoning=True, tools=True):
    parser = OutputParser(reasoning, tools)
    got = [parser.feed(c) for c in chunks] + [parser.finish()]
    out = got[0]
    for g in got[1:]:
        out = out + g
    return out, got


def _splits(text, max_cuts):
    for k in range(max_cuts + 1):
        for cuts in combinations(range(1, len(text)), k):
            bounds = (0, *cuts, len(text))
            yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _check(out, reasoning, content, calls):
    assert out.reasoning == reasoning and out.content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in out.tool_calls] == calls
    for i, c in enumerate(out.tool_calls):
        assert c["index"] == i and c["type"] == "function" and re.fullmatch(r"call_[0-9a-f]{24}", c["id"])


@pytest.mark.parametrize("text, reasoning, content, calls", [
    (ANSWER_TRANSCRIPT, REASONING, ANSWER, []),
    (CALL_TRANSCRIPT, REASONING, "", [(CALL["name"], CALL["arguments"])]),
], ids=["answer", "tool_call"])
def test_split_exactly_for_every_chunking_in_up_to_three_pieces(text, reasoning, content, calls):
    n = 0
    for chunks in _splits(text, 2):
        out, _ = _run(chunks)
        _check(out, reasoning, content, calls)
        n += 1
    assert n == 1 + (len(text) - 1) + (len(text) - 1) * (len(text) - 2) // 2


def test_char_by_char_streams_no_marker_text():
    out, pieces = _run(list(ANSWER_TRANSCRIPT))
    _check(out, REASONING, ANSWER, [])
    assert not any("think>" in p.reasoning or "response>" in p.content for p in pieces)
    # the parts arrive while the text streams, not only at the end
    assert sum(1 for p in pieces if p.reasoning) > 10 and sum(1 for p in pieces if p.content) > 10


def test_two_calls_text_around_and_bad_json():
    call2 = {"name": "add", "arguments": {"a": 1, "b": 2}}
    text = (f"think\n</think>\n\nLet me check.\n<tool_call>\n{json.dumps(CALL)}\n</tool_call>\n"
            f"<tool_call>\n{json.dumps(call2)}\n</tool_call>\n<tool_call>\nnot json\n</tool_call>")
    out = parse_output(text, reasoning=True)
    _check(out, "think", "Let me check.<tool_call>\nnot json\n</tool_call>",
           [(CALL["name"], CALL["arguments"]), ("add", call2["arguments"])])
    for chunks in _splits(text, 1):
        streamed, _ = _run(chunks)
        assert (streamed.reasoning, streamed.content) == (out.reasoning, out.content)
        assert [c["function"] for c in streamed.tool_calls] == [c["function"] for c in out.tool_calls]


def test_tools_off_and_no_think_and_cut_short():
    # tool_choice "none": the call stays text
    out = parse_output(CALL_TRANSCRIPT, reasoning=True, tools=False)
    assert out.tool_calls == [] and out.content.startswith("<tool_call>") and out.reasoning == REASONING
    # thinking off: the prompt closed the think block, the model answers in <response>
    _check(parse_output(f"<response>\n{ANSWER}\n</response>"), "", ANSWER, [])
    # max_tokens cut inside the reasoning: everything so far is reasoning, held marker prefix released
    _check(parse_output("still thinking </thi", reasoning=True), "still thinking </thi", "", [])
    # an unclosed call whose JSON is complete is still a call; a broken one stays content
    _check(parse_output(f"</think><tool_call>{json.dumps(CALL)}", reasoning=True), "", "",
           [(CALL["name"], CALL["arguments"])])
    assert parse_output('<tool_call>{"name": "x", "argu').content == '<tool_call>{"name": "x", "argu'
    # arguments given as a JSON string are kept as that string
    got = parse_output('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert got.tool_calls[0]["function"]["arguments"] == '{"a": 1}'


def test_prompt_state():
    assert starts_in_reasoning("<|im_start|>assistant\n<think>\n")
    assert not starts_in_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not starts_in_reasoning("User: hi\nAssistant: ")
