"""Split ERNIE thinking/tool output into ``reasoning_content``, ``content`` and OpenAI ``tool_calls``, streaming-safe.

ERNIE 4.5 Thinking answers ``reasoning\\n</think>\\n\\n<response>\\nanswer\\n</response>`` or
``reasoning\\n</think>\\n\\n<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. The parser is fed
text deltas and returns parsed pieces as soon as they are certain: only a suffix that could still be the
start of a marker, and whitespace that could end a section, is held back. Each section (the reasoning, each
``<response>`` or bare text run) is stripped of surrounding whitespace, so feeding a transcript in any split
gives exactly what one ``feed`` of the whole text gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ernie_paddle.server.tool_calls import openai_tool_call

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<response>", "</response>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MARKERS = (THINK_OPEN, THINK_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE, CALL_OPEN, CALL_CLOSE)


@dataclass
class Parsed:
    """What one ``feed``/``finish`` produced (any part may be empty)."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __add__(self, other: Parsed) -> Parsed:
        return Parsed(self.reasoning + other.reasoning, self.content + other.content,
                      self.tool_calls + other.tool_calls)


def starts_in_reasoning(prompt_text: str) -> bool:
    """True when the prompt leaves a ``<think>`` block open (the model writes its reasoning first)."""
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


class OutputParser:
    """Feed text deltas of one choice; get reasoning, content and tool calls. ``tools=False`` keeps
    ``<tool_call>`` blocks as content (``tool_choice: "none"``)."""

    def __init__(self, reasoning: bool = False, tools: bool = True):
        self.state = "reasoning" if reasoning else "content"
        self.tools = tools
        self.pending = ""  # text not yet classified (a possible marker prefix)
        self.call_body = ""  # text inside an open <tool_call>
        self.started = False  # the current section has shown non-space text
        self.space = ""  # trailing whitespace of the current section, held back
        self.calls = 0

    def _markers(self) -> tuple[str, ...]:
        if self.state == "reasoning":
            return (THINK_CLOSE,)
        if self.state == "call":
            return (CALL_CLOSE,)
        return tuple(m for m in MARKERS if self.tools or m not in (CALL_OPEN, CALL_CLOSE))

    def _emit(self, out: Parsed, text: str) -> None:
        if self.state == "call":
            self.call_body += text
            return
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        text = self.space + text
        kept = text.rstrip()
        self.space = text[len(kept):]
        if self.state == "reasoning":
            out.reasoning += kept
        else:
            out.content += kept

    def _end_section(self) -> None:
        self.started, self.space = False, ""

    def _on_marker(self, out: Parsed, marker: str) -> None:
        if marker == CALL_CLOSE:
            call = openai_tool_call(self.call_body)
            self.state = "content"
            if call is None:  # not a call after all: keep the text as content
                self._emit(out, CALL_OPEN + self.call_body + CALL_CLOSE)
            else:
                out.tool_calls.append({"index": self.calls, **call})
                self.calls += 1
            self.call_body = ""
            return
        self._end_section()
        if marker == THINK_CLOSE:
            self.state = "content"
        elif marker == THINK_OPEN:
            self.state = "reasoning"
        elif marker == CALL_OPEN:
            self.state = "call"

    def feed(self, text: str, final: bool = False) -> Parsed:
        out = Parsed()
        self.pending += text
        while True:
            hits = [(i, m) for m in self._markers() if (i := self.pending.find(m)) >= 0]
            if not hits:
                break
            i, marker = min(hits)
            self._emit(out, self.pending[:i])
            self.pending = self.pending[i + len(marker):]
            self._on_marker(out, marker)
        hold = 0 if final else max((k for m in self._markers() for k in range(1, len(m))
                                    if self.pending.endswith(m[:k])), default=0)
        self._emit(out, self.pending[:len(self.pending) - hold])
        self.pending = self.pending[len(self.pending) - hold:]
        return out

    def finish(self) -> Parsed:
        """Flush what is held back; an unclosed ``<tool_call>`` is a call if its JSON is complete."""
        out = self.feed("", final=True)
        if self.state == "call":
            call = openai_tool_call(self.call_body)
            self.state = "content"
            if call is None:
                self._emit(out, CALL_OPEN + self.call_body)
            else:
                out.tool_calls.append({"index": self.calls, **call})
                self.calls += 1
        return out


def parse_output(text: str, reasoning: bool = False, tools: bool = True) -> Parsed:
    """The whole output at once (non-streaming responses)."""
    parser = OutputParser(reasoning, tools)
    return parser.feed(text) + parser.finish()
