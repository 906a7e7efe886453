"""OpenAI response bodies and server-sent-event chunks for chat and text completions."""

from __future__ import annotations

import json
import re
import time
import uuid

from ernie_paddle.server.reasoning import parse_output

_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_text(tokenizer, token_id: int, cache: dict) -> tuple[str, list[int]]:
    """Display text and UTF-8 bytes of one token (a byte-fallback piece is that single byte)."""
    if token_id not in cache:
        piece = tokenizer.convert_ids_to_tokens([token_id])[0] or ""
        m = _BYTE.fullmatch(piece)
        raw = bytes([int(m.group(1), 16)]) if m else tokenizer.decode([token_id]).encode("utf-8")
        cache[token_id] = (tokenizer.decode([token_id]), list(raw))
    return cache[token_id]


def chat_logprobs(tokenizer, tokens, cache: dict) -> dict:
    content = []
    for t in tokens:
        text, raw = token_text(tokenizer, t.id, cache)
        top = [{"token": token_text(tokenizer, i, cache)[0], "logprob": lp,
                "bytes": token_text(tokenizer, i, cache)[1]} for i, lp in t.top or []]
        content.append({"token": text, "logprob": t.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(tokenizer, tokens, cache: dict, offset: int = 0) -> dict:
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        text, _ = token_text(tokenizer, t.id, cache)
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append(None if t.logprob is None else  # an echoed prompt's first token
                                   {token_text(tokenizer, i, cache)[0]: lp for i, lp in t.top or []})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


class ChatFormat:
    """Builds ``chat.completion`` bodies and ``chat.completion.chunk`` events for one request."""

    object_name, chunk_name, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(self, model: str, tokenizer, logprobs: bool, token_ids: bool = False, parsing=None):
        self.id, self.created, self.model = new_id(self.id_prefix), int(time.time()), model
        self.tokenizer, self.logprobs, self.cache, self.token_ids = tokenizer, logprobs, {}, token_ids
        self.parsing = parsing  # chat_tools.ParseOptions: split reasoning/content/tool calls; None: plain text
        self.parsers: dict = {}

    def _ids(self, choice: dict, tokens) -> dict:
        if self.token_ids:
            choice["token_ids"] = [t.id for t in tokens]
        return choice

    def _head(self, name: str) -> dict:
        return {"id": self.id, "object": name, "created": self.created, "model": self.model}

    def start_chunk(self, index: int) -> dict:
        return {**self._head(self.chunk_name),
                "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]}

    def chunk(self, d) -> dict:
        finish = d.finish_reason
        if self.parsing is None:
            delta = {"content": d.text} if d.text or not finish else {}
        else:
            parser = self.parsers.setdefault(d.index, self.parsing.parser())
            got = parser.feed(d.text) + parser.finish() if finish else parser.feed(d.text)
            delta = parsed_delta(got)
            delta = delta or ({} if finish else {"content": ""})
            finish = "tool_calls" if finish == "stop" and parser.calls else finish
        lp = chat_logprobs(self.tokenizer, d.tokens, self.cache) if self.logprobs and d.tokens else None
        choice = {"index": d.index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return {**self._head(self.chunk_name), "choices": [self._ids(choice, d.tokens)]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head(self.chunk_name), "choices": [], "usage": usage}

    def _message(self, r: dict) -> tuple[dict, str | None]:
        if self.parsing is None:
            return {"role": "assistant", "content": r["text"]}, r["finish_reason"]
        got = parse_output(r["text"], self.parsing.reasoning, self.parsing.tools)
        message = {"role": "assistant", "content": got.content or (None if got.tool_calls else ""),
                   "reasoning_content": got.reasoning or None}
        if got.tool_calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in got.tool_calls]
        finish = "tool_calls" if got.tool_calls and r["finish_reason"] == "stop" else r["finish_reason"]
        return message, finish

    def body(self, results: list[dict], usage: dict) -> dict:
        choices = []
        for r in results:
            message, finish = self._message(r)
            lp = chat_logprobs(self.tokenizer, r["tokens"], self.cache) if self.logprobs else None
            choices.append(self._ids({"index": r["index"], "message": message, "logprobs": lp,
                                      "finish_reason": finish}, r["tokens"]))
        return {**self._head(self.object_name), "choices": choices, "usage": usage}


def parsed_delta(got) -> dict:
    """A chunk's delta from parsed output: ``reasoning_content``, ``content``, ``tool_calls`` when present."""
    delta = {}
    if got.reasoning:
        delta["reasoning_content"] = got.reasoning
    if got.content:
        delta["content"] = got.content
    if got.tool_calls:
        delta["tool_calls"] = got.tool_calls
    return delta


class CompletionFormat(ChatFormat):
    """``text_completion`` bodies and chunks (legacy completions route).

    ``echo`` maps a choice index to (prompt text, prompt TokenChoices): the choice then starts with the
    prompt, its logprobs too; ``prompt_logprobs`` maps an index to vLLM's ``prompt_logprobs`` list.
    """

    object_name, chunk_name, id_prefix = "text_completion", "text_completion", "cmpl"

    def __init__(self, model: str, tokenizer, logprobs: bool, token_ids: bool = False,
                 echo: dict | None = None, prompt_logprobs: dict | None = None):
        super().__init__(model, tokenizer, logprobs, token_ids)
        self.offsets: dict[int, int] = {}
        self.echo, self.prompt_logprobs = echo or {}, prompt_logprobs or {}

    def _logprobs(self, index: int, tokens, offset: int = 0) -> dict | None:
        if not self.logprobs:
            return None
        lp = completion_logprobs(self.tokenizer, tokens, self.cache, offset)
        self.offsets[index] = offset + sum(len(t) for t in lp["tokens"])
        return lp

    def _extras(self, choice: dict) -> dict:
        if choice["index"] in self.prompt_logprobs:
            choice["prompt_logprobs"] = self.prompt_logprobs[choice["index"]]
        return choice

    def start_chunk(self, index: int) -> dict | None:
        """The echoed prompt (and its logprobs) as the first chunk of choice ``index``."""
        if index not in self.echo and index not in self.prompt_logprobs:
            return None
        text, tokens = self.echo.get(index, ("", []))
        choice = {"index": index, "text": text, "logprobs": self._logprobs(index, tokens) if tokens else None,
                  "finish_reason": None}
        return {**self._head(self.chunk_name), "choices": [self._extras(choice)]}

    def chunk(self, d) -> dict:
        lp = self._logprobs(d.index, d.tokens, self.offsets.get(d.index, 0))
        choice = {"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}
        return {**self._head(self.chunk_name), "choices": [self._ids(choice, d.tokens)]}

    def body(self, results: list[dict], usage: dict) -> dict:
        choices = []
        for r in results:
            text, tokens = self.echo.get(r["index"], ("", []))
            choice = {"index": r["index"], "text": text + r["text"],
                      "logprobs": self._logprobs(r["index"], tokens + r["tokens"]),
                      "finish_reason": r["finish_reason"]}
            choices.append(self._extras(self._ids(choice, r["tokens"])))
        return {**self._head(self.object_name), "choices": choices, "usage": usage}
