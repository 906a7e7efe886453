"""ERNIE ``<tool_call>`` JSON <-> OpenAI ``tool_calls`` entries, and history tool calls for the chat template."""

from __future__ import annotations

import json
import uuid

from ernie_paddle.server.api_errors import APIError


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def openai_tool_call(body: str) -> dict | None:
    """The OpenAI entry for the JSON text inside ``<tool_call>...</tool_call>``; None when it is not a call.

    A call is ``{"name": str, "arguments": object or JSON string}``; ``arguments`` is returned as a JSON string.
    """
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    args = call.get("arguments", call.get("parameters", {}))
    if isinstance(args, str):
        try:
            json.loads(args)
        except json.JSONDecodeError:
            return None
    else:
        args = json.dumps(args, ensure_ascii=False)
    return {"id": new_call_id(), "type": "function", "function": {"name": call["name"], "arguments": args}}


def template_tool_calls(calls: list[dict], index: int) -> list[dict]:
    """An assistant message's OpenAI ``tool_calls`` as the chat template takes them (arguments as objects)."""
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise APIError(400, f"message {index}: tool call arguments are not valid JSON ({exc.msg})",
                               "messages", "invalid_tool_call") from exc
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": fn.get("name"), "arguments": args if args is not None else {}}})
    return out
