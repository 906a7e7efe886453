"""Request bodies of the OpenAI-compatible routes (pydantic); unknown fields are ignored like OpenAI does."""

from __future__ import annotations

from typing import Annotated, Literal

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


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None
    name: StrictStr | None = None

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
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    """``echo`` repeats the prompt before the completion (with ``logprobs``: the prompt tokens' too, the first
    one null); ``max_tokens: 0`` with ``echo`` only scores the prompt; ``prompt_logprobs`` (vLLM) gives each
    prompt token's logprob and rank, with that many most likely tokens."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(default=16, ge=0)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    echo: StrictBool = False
    prompt_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


class TokenizeRequest(_Body):
    """vLLM's ``/tokenize`` body: a ``prompt`` or chat ``messages`` (rendered with the chat template)."""

    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True
    return_token_strs: StrictBool = False


class DetokenizeRequest(_Body):
    model: StrictStr | None = None
    tokens: list[StrictInt]
