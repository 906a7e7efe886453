"""Request bodies of the OpenAI-compatible routes (pydantic); unknown fields are ignored like OpenAI does."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ImageURL(_Body):
    url: StrictStr
    detail: StrictStr | None = None


class ImagePart(_Body):
    """An image as a ``data:`` URL or a local file path (served only by VL models; never fetched)."""

    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(_Body):
    name: StrictStr
    arguments: StrictStr = ""  # a JSON object as text, as OpenAI sends it


class ToolCall(_Body):
    """An assistant message's earlier tool call (history)."""

    id: StrictStr | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Body):
    name: StrictStr = Field(min_length=1)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: StrictStr


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(_Body):
    """A chat turn: ``system``, ``user``, ``assistant`` (maybe with ``tool_calls``) or ``tool`` (with
    ``tool_call_id``)."""

    role: StrictStr
    content: StrictStr | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if isinstance(part, TextPart))
        return self.content or ""

    def images(self) -> list[str]:
        return [p.image_url.url for p in self.content if isinstance(p, ImagePart)] \
            if isinstance(self.content, list) else []

    def parts(self) -> str | list[dict]:
        """The content as the VL runtime takes it: a string, or OpenAI-style part dicts."""
        if not isinstance(self.content, list):
            return self.content or ""
        return [{"type": "text", "text": p.text} if isinstance(p, TextPart)
                else {"type": "image_url", "image_url": {"url": p.image_url.url}} for p in self.content]


class _Sampling(_Body):
    """Fields shared by chat and completions, plus vLLM/FastDeploy-style ``top_k``, ``min_tokens``,
    ``ignore_eos`` and ``return_token_ids`` (each choice then carries the generated ``token_ids``)."""

    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=0)
    n: StrictInt = Field(default=1, ge=1, le=16)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    min_tokens: StrictInt = Field(default=0, ge=0)
    ignore_eos: StrictBool = False
    return_token_ids: StrictBool = False
    user: StrictStr | None = None

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Sampling):
    """``tools`` and ``chat_template_kwargs`` go to the chat template; ``tool_choice`` "none"/"auto" are
    honoured by the template and output parser ("required" or a named function need constrained decoding)."""

    messages: list[ChatMessage]
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(default=16, ge=1)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    echo: StrictBool = False
