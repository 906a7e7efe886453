"""Request bodies of the routes (pydantic). Unknown fields are ignored (clients send extras), an explicit
``null`` means the field's default, and OpenAI fields this server does not implement are refused by name
(``NOT_IMPLEMENTED``) rather than silently dropped."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

# OpenAI request fields not implemented here -> the values that ask for nothing (accepted and ignored).
# Any other value is refused with 400 naming the field.
NOT_IMPLEMENTED: dict[str, tuple] = {
    "audio": (), "modalities": (["text"],), "prediction": (), "functions": (), "function_call": (),
    "web_search_options": (), "reasoning_effort": (), "verbosity": (), "store": (False,),
    "suffix": ("",), "best_of": (1,),
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """``{"n": null}`` means ``n`` was not sent (as in the OpenAI API)."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


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


class JsonSchemaSpec(_Body):
    """``response_format.json_schema``: the schema is always enforced (``strict`` is accepted as given)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: StrictStr
    description: StrictStr | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StructuredOutputs(_Body):
    """vLLM-style output constraint: a JSON schema, a regex, a Lark/GBNF grammar or a list of choices
    (``guided_json`` etc. on the request are the older spelling of the same)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    json_: dict | StrictStr | None = Field(default=None, alias="json")
    regex: StrictStr | None = None
    grammar: StrictStr | None = None
    choice: list[StrictStr] | None = None


class _Sampling(_Body):
    """Fields shared by chat and completions, plus vLLM/FastDeploy-style ``top_k``, ``min_p``,
    ``repetition_penalty``, ``min_tokens``, ``ignore_eos`` and ``return_token_ids`` (each choice then carries
    the generated ``token_ids``). ``logit_bias`` maps token ids (as strings) to a bias in [-100, 100]."""

    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[StrictStr, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    n: StrictInt = Field(default=1, ge=1, le=16)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    min_tokens: StrictInt = Field(default=0, ge=0)
    ignore_eos: StrictBool = False
    return_token_ids: StrictBool = False
    user: StrictStr | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_grammar: StrictStr | None = None
    guided_choice: list[StrictStr] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_not_implemented(cls, data):
        for name, harmless in NOT_IMPLEMENTED.items():
            if isinstance(data, dict) and data.get(name) is not None and data[name] not in harmless:
                raise PydanticCustomError("not_implemented", "'{param}' is not implemented by this server",
                                          {"param": name})
        return data

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
    """``echo`` repeats the prompt before the completion (with ``logprobs``: the prompt tokens' too, the first
    one null); ``max_tokens: 0`` with ``echo`` only scores the prompt; ``prompt_logprobs`` (vLLM) gives each
    prompt token's logprob and rank, with that many most likely tokens."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(default=16, ge=0)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    echo: StrictBool = False
    prompt_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


class GenerateRequest(_Body):
    """The seed's ``POST /generate`` body; ``max_length`` counts new tokens, ``do_sample=false`` is greedy."""

    prompt: StrictStr = Field(min_length=1)
    max_length: StrictInt = Field(default=100, ge=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    do_sample: StrictBool = True
    stream: ClassVar[bool] = False
    stream_options: ClassVar[None] = None

    def stop_list(self) -> list[str]:
        return []


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
