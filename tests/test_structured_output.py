"""Constrained decoding without a server: the vocabulary given to llguidance, grammars on random logits, the
request fields that choose a grammar and the sampler hook."""

import json

import jsonschema
import numpy as np
import pytest

from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer
from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.request_bodies import ChatRequest, CompletionRequest
from ernie_paddle.server.sampling import RowSampler, SamplingParams, sample_rows
from ernie_paddle.server.structured_output import Grammar, GrammarEngine, GrammarError, vocabulary_bytes
from ernie_paddle.server.structured_request import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, request_grammar
from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "days", "ok"],
          "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer"},
                         "ok": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return ErnieTokenizer.from_folder(write_demo_tokenizer(tmp_path_factory.mktemp("tok"), 1024))


@pytest.fixture(scope="module")
def engine(tok):
    return GrammarEngine(tok, tok.stop_token_ids)


def decode_random(tok, constraint, seed, steps=300, width=None):
    """Greedy over seeded random logits through the constraint; the ids up to and with the stop token."""
    rng, out = np.random.default_rng(seed), []
    for _ in range(steps):
        row = rng.standard_normal(width or len(tok)).astype(np.float32)
        t = int(np.argmax(constraint.apply(row)))
        constraint.accept(t)
        out.append(t)
        if t in tok.stop_token_ids:
            break
    return out


def test_vocabulary_bytes_spell_what_the_tokenizer_decodes(tok):
    table = vocabulary_bytes(tok, n_vocab=len(tok) + 16)
    assert len(table) == len(tok) + 16 and all(b == b"" for b in table[len(tok):])
    for i in tok.special_ids:
        assert table[i].startswith(b"\xff")
    ids = tok.encode("Hello wörld, ☕ 12 batch tokens and {\"json\": [1, 2]} 统一")
    assert b"".join(table[i] for i in ids).decode("utf-8") == tok.decode(ids)
    byte_ids = [i for i in range(len(tok)) if (tok.convert_ids_to_tokens([i])[0] or "").startswith("<0x")]
    assert len(byte_ids) == 256 and sorted(table[i] for i in byte_ids) == [bytes([b]) for b in range(256)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_is_valid_on_random_logits(tok, engine, seed):
    out = decode_random(tok, engine.constraint(Grammar("json_schema", json.dumps(SCHEMA))), seed,
                        width=len(tok) + 32)  # padded logits past the vocabulary are never chosen
    assert out[-1] in tok.stop_token_ids
    jsonschema.validate(json.loads(tok.decode(out, skip_special_tokens=True)), SCHEMA)


def test_regex_choice_and_lark(tok, engine):
    import re

    text = tok.decode(decode_random(tok, engine.constraint(Grammar("regex", r"[a-z]{3,6}-\d{2}")), 5),
                      skip_special_tokens=True)
    assert re.fullmatch(r"[a-z]{3,6}-\d{2}", text)
    text = tok.decode(decode_random(tok, engine.constraint(Grammar("choice", '["yes", "no way"]')), 6),
                      skip_special_tokens=True)
    assert text in ("yes", "no way")
    lark = 'start: "(" num ("+" num)* ")"\nnum: /[0-9]{1,3}/'
    text = tok.decode(decode_random(tok, engine.constraint(Grammar("lark", lark)), 7), skip_special_tokens=True)
    assert re.fullmatch(r"\(\d{1,3}(\+\d{1,3})*\)", text)
    gbnf = 'root ::= "x=" [0-9] [0-9]? ";"'
    p, g = request_grammar(CompletionRequest(model="m", prompt="x", guided_grammar=gbnf))
    text = tok.decode(decode_random(tok, engine.constraint(g), 8), skip_special_tokens=True)
    assert p == "guided_grammar" and re.fullmatch(r"x=\d\d?;", text)


def test_bad_grammars_raise_with_the_engines_reason(engine):
    with pytest.raises(GrammarError, match="unclosed character class"):
        engine.constraint(Grammar("regex", "[a-"))
    with pytest.raises(GrammarError):
        engine.constraint(Grammar("json_schema", json.dumps({"type": "no-such-type"})))


def test_forced_tool_call_is_a_valid_call(tok, engine):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"], "additionalProperties": False,
        "properties": {"city": {"type": "string", "maxLength": 12}}}}},
             {"type": "function", "function": {"name": "noop"}}]
    req = ChatRequest(model="m", messages=[], tools=tools,
                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
    param, grammar = request_grammar(req)
    assert param == "tool_choice"
    text = tok.decode(decode_random(tok, engine.constraint(grammar), 3), skip_special_tokens=True)
    assert text.startswith(TOOL_CALL_OPEN) and text.endswith(TOOL_CALL_CLOSE)
    call = json.loads(text[len(TOOL_CALL_OPEN):-len(TOOL_CALL_CLOSE)])
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], tools[0]["function"]["parameters"])
    req = ChatRequest(model="m", messages=[], tools=tools, tool_choice="required")
    text = tok.decode(decode_random(tok, engine.constraint(request_grammar(req)[1]), 4), skip_special_tokens=True)
    assert json.loads(text[len(TOOL_CALL_OPEN):-len(TOOL_CALL_CLOSE)])["name"] in ("get_weather", "noop")


def test_request_fields_choose_one_grammar():
    assert request_grammar(ChatRequest(model="m", messages=[])) is None
    assert request_grammar(ChatRequest(model="m", messages=[], response_format={"type": "text"})) is None
    assert request_grammar(ChatRequest(model="m", messages=[], tool_choice="auto", tools=[])) is None
    p, g = request_grammar(CompletionRequest(model="m", prompt="x", guided_regex="a+"))
    assert (p, g) == ("guided_regex", Grammar("regex", "a+"))
    p, g = request_grammar(ChatRequest(model="m", messages=[], structured_outputs={"json": '{"type": "integer"}'}))
    assert p == "structured_outputs.json" and json.loads(g.text) == {"type": "integer"}
    p, g = request_grammar(ChatRequest(model="m", messages=[], response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA, "strict": True}}))
    assert p == "response_format" and json.loads(g.text) == SCHEMA
    with pytest.raises(APIError, match="only one output constraint") as err:
        request_grammar(ChatRequest(model="m", messages=[], guided_regex="a", response_format={"type": "json_object"}))
    assert err.value.status == 400
    with pytest.raises(APIError, match="schema is required"):
        request_grammar(ChatRequest(model="m", messages=[], response_format={"type": "json_schema",
                                                                             "json_schema": {"name": "s"}}))
    with pytest.raises(APIError, match="not in 'tools'"):
        request_grammar(ChatRequest(model="m", messages=[], tools=[{"type": "function", "function": {"name": "a"}}],
                                    tool_choice={"type": "function", "function": {"name": "b"}}))
    with pytest.raises(APIError, match="not valid JSON"):
        request_grammar(ChatRequest(model="m", messages=[], guided_json="{nope"))


def test_constrained_row_leaves_the_greedy_rows_alone(tok, engine):
    """In one batch, unconstrained greedy rows pick exactly their argmax; the constrained row obeys its regex."""
    rng = np.random.default_rng(11)
    constrained = SamplingParams(max_tokens=50, temperature=0.0,
                                 constraint=engine.constraint(Grammar("regex", "[0-9]{4}")))
    samplers = [RowSampler(SamplingParams(max_tokens=50, temperature=0.0)), RowSampler(constrained),
                RowSampler(SamplingParams(max_tokens=50, temperature=0.0))]
    assert [s.plain_greedy for s in samplers] == [True, False, True]
    picked = []
    for _ in range(5):
        logits = rng.standard_normal((3, len(tok))).astype(np.float32)
        choices = sample_rows(samplers, logits)
        assert [choices[0].id, choices[2].id] == logits[[0, 2]].argmax(-1).tolist()
        picked.append(choices[1].id)
    assert tok.decode(picked[:4]).isdigit() and len(tok.decode(picked[:4])) == 4 and picked[4] in tok.stop_token_ids
