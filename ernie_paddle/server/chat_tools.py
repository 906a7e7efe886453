"""What a chat request's tools, tool messages and ``chat_template_kwargs`` give the chat template, and whether
(and how) its output is parsed into reasoning, content and tool calls.

Parsing (``serve --reasoning-parser``): ``none`` never parses; ``ernie`` always does; ``auto`` (the default)
parses when the chat template is an ERNIE thinking/tool template (it writes ``<response>`` or
``<tool_call>``), when the request sends ``tools`` (``tool_choice`` not "none"), or when its
``chat_template_kwargs`` turn thinking on. A plain model's output is otherwise passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.reasoning import CALL_OPEN, RESPONSE_OPEN, OutputParser, starts_in_reasoning
from ernie_paddle.server.tool_calls import template_tool_calls

RESERVED_TEMPLATE_VARS = ("messages", "tools", "add_generation_prompt", "tokenize", "chat_template", "documents")
PARSER_CHOICES = ("auto", "ernie", "none")
TOOL_TEMPLATE_MARKS = (RESPONSE_OPEN, CALL_OPEN)


@dataclass(frozen=True)
class ParseOptions:
    """How one request's output is parsed: start inside a think block, and whether tool calls are parsed."""

    reasoning: bool
    tools: bool

    def parser(self) -> OutputParser:
        return OutputParser(self.reasoning, self.tools)


def check_tool_choice(req) -> None:
    """A ``tool_choice`` other than "none"/"auto" needs ``tools``; "required" or a named function is then
    forced by constrained decoding (``structured_request.forced_tool_grammar``)."""
    choice = req.tool_choice
    if choice is not None and not req.tools:
        raise APIError(400, f"tool_choice {choice if isinstance(choice, str) else 'a named function'!r} needs "
                            "'tools'", "tool_choice")


def tools_enabled(req) -> bool:
    return bool(req.tools) and req.tool_choice != "none"


def template_variables(req) -> dict:
    """``tools`` (unless tool_choice is "none") and the request's ``chat_template_kwargs``."""
    extra = dict(req.chat_template_kwargs or {})
    clash = sorted(k for k in extra if k in RESERVED_TEMPLATE_VARS or not k.isidentifier())
    if clash:
        raise APIError(400, f"chat_template_kwargs may not set {clash}", "chat_template_kwargs")
    if tools_enabled(req):
        extra["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    return extra


def template_messages(req) -> list[dict]:
    """Text-model messages for the template: role, text, and an assistant's ``tool_calls`` / a tool's id."""
    out = []
    for i, m in enumerate(req.messages):
        msg = {"role": m.role, "content": m.text()}
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = template_tool_calls([c.model_dump() for c in m.tool_calls], i)
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _thinking_requested(kwargs: dict | None) -> bool:
    kwargs = kwargs or {}
    options = kwargs.get("options")
    mode = options.get("thinking_mode") if isinstance(options, dict) else None
    return bool(kwargs.get("enable_thinking") or kwargs.get("think_mode")) or mode in (True, "open", "on")


def parse_options(state, req, prompt) -> ParseOptions | None:
    """None: the output is plain text. Otherwise where parsing starts, read from the prompt's last tokens."""
    mode = getattr(state.settings, "reasoning_parser", "auto") or "auto"
    template = state.tokenizer.chat_template or ""
    if mode == "none":
        return None
    if mode == "auto" and not (any(m in template for m in TOOL_TEMPLATE_MARKS) or tools_enabled(req)
                               or _thinking_requested(req.chat_template_kwargs)):
        return None
    ids = prompt.input_ids[0].tolist() if hasattr(prompt, "input_ids") else list(prompt)
    tail = state.tokenizer.decode(ids[-16:])
    return ParseOptions(starts_in_reasoning(tail), tools_enabled(req))
