"""What the routes take from a validated request: prompt ids, token budget and per-choice sampling params
(or a 4xx APIError)."""

from __future__ import annotations

from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.generation import Options, penalties_in_use
from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.chat_tools import check_tool_choice, template_messages, template_variables
from ernie_paddle.server.images import refuse_images, vl_chat_inputs
from ernie_paddle.server.sampling import SamplingParams
from ernie_paddle.server.structured_request import request_grammar, row_constraint


def check_model(state, name: str) -> None:
    if name != state.settings.model_name:
        raise APIError(404, f"model {name!r} does not exist; this server serves {state.settings.model_name!r}",
                       "model", "model_not_found")


def chat_prompt(state, req):
    """Prompt ids; for a VL model, the VL runtime's inputs (ids plus pixels of the image parts). Tools and
    ``chat_template_kwargs`` are passed to the template."""
    if not req.messages:
        raise APIError(400, "'messages' must hold at least one message", "messages", "empty_messages")
    check_tool_choice(req)
    variables = template_variables(req)
    if state.is_vl:
        return vl_chat_inputs(state, req, variables)
    refuse_images(state, req)
    try:
        return state.tokenizer.apply_chat_template(template_messages(req), add_generation_prompt=True,
                                                   tokenize=True, **variables)
    except ErnieError as exc:
        raise APIError(400, str(exc), "messages") from exc


def completion_prompts(state, req) -> list[list[int]]:
    p = req.prompt
    if isinstance(p, str):
        prompts = [state.tokenizer.encode(p, add_special_tokens=False)]
    elif p and all(isinstance(x, str) for x in p):
        prompts = [state.tokenizer.encode(x, add_special_tokens=False) for x in p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    else:
        prompts = [list(x) for x in p]
    if not prompts or not all(prompts):
        raise APIError(400, "'prompt' must not be empty", "prompt", "empty_prompt")
    check_token_ids(state, prompts, "prompt")
    return prompts


def check_token_ids(state, rows: list[list[int]], param: str) -> None:
    vocab = len(state.tokenizer)
    if any(not 0 <= t < vocab for ids in rows for t in ids):
        raise APIError(400, f"{param} token ids must be in [0, {vocab})", param)


def token_budget(state, prompt_len: int, requested: int | None, param: str) -> int:
    """max_tokens to use: the request's (checked) or whatever fits the context, capped by the server limit."""
    limit, ctx = state.settings.max_tokens_limit, state.context_length
    if requested is not None and requested > limit:
        raise APIError(400, f"max_tokens={requested} is over this server's limit of {limit}", "max_tokens",
                       "max_tokens_too_large")
    if prompt_len >= ctx:
        raise APIError(413, f"the prompt has {prompt_len} tokens; the model's context is {ctx} tokens", param,
                       "context_length_exceeded")
    room = ctx - prompt_len
    if requested is None:
        return min(limit, room)
    if requested > room:
        raise APIError(400, f"prompt ({prompt_len} tokens) + max_tokens ({requested}) exceeds the model's "
                       f"context of {ctx} tokens", "max_tokens", "context_length_exceeded")
    return requested


def _logit_bias(state, req) -> dict[int, float]:
    bias = getattr(req, "logit_bias", None) or {}
    vocab = len(state.tokenizer)
    try:
        out = {int(t): float(b) for t, b in bias.items()}
    except ValueError:
        raise APIError(400, "logit_bias keys must be token ids (integers as strings)", "logit_bias",
                       "invalid_value") from None
    if any(not 0 <= t < vocab for t in out):
        raise APIError(400, f"logit_bias token ids must be in [0, {vocab})", "logit_bias", "invalid_value")
    return out


def _value(req, defaults: dict, name: str, fallback, kind=float):
    """The request's value of ``name``, else generation_config.json's, else ``fallback``."""
    for value in (getattr(req, name, None), defaults.get(name)):
        if value is not None:
            return kind(value)
    return fallback


def sampling_params(state, req, max_tokens: int, logprobs: int | None, index: int) -> SamplingParams:
    """Request values first, then generation_config.json, then OpenAI defaults (temperature 1).

    ``req`` is any request body: fields it lacks take their defaults.
    """
    d = state.generation_defaults
    seed = getattr(req, "seed", None)
    params = SamplingParams(
        max_tokens=max_tokens, temperature=_value(req, d, "temperature", 1.0), top_p=_value(req, d, "top_p", 1.0),
        top_k=_value(req, d, "top_k", 0, int), min_p=getattr(req, "min_p", 0.0),
        repetition_penalty=_value(req, d, "repetition_penalty", 1.0),
        frequency_penalty=_value(req, d, "frequency_penalty", 0.0),
        presence_penalty=_value(req, d, "presence_penalty", 0.0), logit_bias=_logit_bias(state, req),
        seed=None if seed is None else seed + index, min_tokens=min(getattr(req, "min_tokens", 0), max_tokens),
        logprobs=logprobs, stop_token_ids=() if getattr(req, "ignore_eos", False) else state.stop_token_ids,
        constraint=row_constraint(state, req, request_grammar(req)))
    if state.settings.speculative:
        refused = penalties_in_use(Options(**params.controls()))
        if refused:
            raise APIError(400, f"{refused[0]} is not available with --speculative", refused[0],
                           "not_supported_with_speculative")
    return params
