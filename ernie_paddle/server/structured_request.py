"""Which grammar a request asks for: ``response_format`` (json_object / json_schema), the vLLM-style
``structured_outputs`` / ``guided_*`` extension (json, regex, Lark or GBNF grammar, choice), or a forced tool
call (``tool_choice`` "required" or a named function), and the per-row constraint made from it."""

from __future__ import annotations

import json
from functools import lru_cache

from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.reasoning import CALL_CLOSE, CALL_OPEN
from ernie_paddle.server.request_bodies import FunctionDef, NamedToolChoice, Tool
from ernie_paddle.server.structured_output import Grammar, GrammarEngine, GrammarError, TokenConstraint

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = CALL_OPEN + "\n", "\n" + CALL_CLOSE  # a forced call, as the model writes it
_GUIDED = (("json", "json_", "json_schema"), ("regex", "regex", "regex"), ("grammar", "grammar", "grammar"),
           ("choice", "choice", "choice"))  # (name, StructuredOutputs attribute, grammar kind)


def _schema_text(schema, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise APIError(400, f"{param} is not valid JSON: {exc}", param, "invalid_json_schema") from exc
    if not isinstance(schema, dict):
        raise APIError(400, f"{param} must be a JSON schema object", param, "invalid_json_schema")
    return json.dumps(schema)


def _tool_call_schema(function: FunctionDef) -> dict:
    params = function.parameters or {"type": "object", "properties": {}, "additionalProperties": False}
    return {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
            "properties": {"name": {"const": function.name}, "arguments": params}}


def forced_tool_grammar(tools: list[Tool] | None, tool_choice: str | NamedToolChoice | None) -> Grammar | None:
    """ERNIE's ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` for "required" (any of the
    tools) or ``{"type": "function", "function": {"name": ...}}`` (that one); None for "auto"/"none".
    The request body has already checked the shapes of ``tools`` and ``tool_choice``."""
    if tool_choice is None or tool_choice in ("auto", "none"):
        return None
    functions = [t.function for t in tools or []]
    if not functions:
        raise APIError(400, "tool_choice asks for a tool call but 'tools' holds no functions", "tool_choice")
    chosen = functions
    if isinstance(tool_choice, NamedToolChoice):
        name = tool_choice.function.name
        chosen = [f for f in functions if f.name == name]
        if not chosen:
            raise APIError(400, f"tool_choice names function {name!r}, which is not in 'tools'", "tool_choice")
    schemas = [_tool_call_schema(f) for f in chosen]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema["x-guidance"] = {"whitespace_flexible": False}
    return Grammar("lark", f"start: {json.dumps(TOOL_CALL_OPEN)} %json {json.dumps(schema)} "
                           f"{json.dumps(TOOL_CALL_CLOSE)}")


def _guided(req) -> list[tuple[str, Grammar]]:
    """(param, grammar) for each ``structured_outputs`` / ``guided_*`` field that is set."""
    found = []
    so = getattr(req, "structured_outputs", None)
    for key, attr, kind in _GUIDED:
        for param, value in ((f"structured_outputs.{key}", getattr(so, attr, None)),
                             (f"guided_{key}", getattr(req, f"guided_{key}", None))):
            if value is None:
                continue
            if kind == "json_schema":
                value = _schema_text(value, param)
            elif kind == "choice":
                if not value:
                    raise APIError(400, f"{param} must list at least one string", param)
                value = json.dumps(value)
            found.append((param, Grammar(kind, value)))
    return found


def request_grammar(req) -> tuple[str, Grammar] | None:
    """The (param, grammar) a request constrains its output with, or None; more than one is a 400."""
    found = _guided(req)
    rf = getattr(req, "response_format", None)
    if rf is not None and rf.type == "json_object":
        found.append(("response_format", Grammar("json_schema", json.dumps({"type": "object"}))))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise APIError(400, "response_format.json_schema.schema is required for type 'json_schema'",
                           "response_format.json_schema")
        found.append(("response_format", Grammar("json_schema", _schema_text(rf.json_schema.schema_,
                                                                             "response_format.json_schema"))))
    tool = forced_tool_grammar(getattr(req, "tools", None), getattr(req, "tool_choice", None))
    if tool is not None:
        found.append(("tool_choice", tool))
    if len(found) > 1:
        raise APIError(400, f"only one output constraint per request; got {', '.join(p for p, _ in found)}",
                       found[1][0], "conflicting_constraints")
    return found[0] if found else None


@lru_cache(maxsize=4)
def grammar_engine(tokenizer, stop_ids: tuple[int, ...]) -> GrammarEngine:
    """One engine (vocabulary and compiled-grammar cache) per served tokenizer."""
    return GrammarEngine(tokenizer, stop_ids)


def row_constraint(state, req, grammar: tuple[str, Grammar] | None) -> TokenConstraint | None:
    """A fresh constraint for one choice of ``req`` (None when it asks for none); bad grammars are 400."""
    if grammar is None:
        return None
    param, g = grammar
    if state.sequential:
        raise APIError(400, "structured output is not available when serving a VL model or with --speculative",
                       param, "structured_output_not_supported")
    if req.ignore_eos or req.min_tokens:
        raise APIError(400, f"{param} cannot be combined with ignore_eos or min_tokens: the grammar decides "
                            "where the output ends", param)
    try:
        return grammar_engine(state.tokenizer, state.stop_token_ids).constraint(g)
    except GrammarError as exc:
        raise APIError(400, f"invalid {param}: {exc}", param, "invalid_grammar") from exc
