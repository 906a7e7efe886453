"""What the routes take from a validated request: prompt ids, token budget and per-choice sampling params
(or a 4xx APIError)."""

from __future__ import annotations

from ernie_paddle.errors import ErnieError
from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.images import refuse_images, vl_chat_inputs
from ernie_paddle.server.sampling import SamplingParams


def check_model(state, name: str) -> None:
    if name != state.settings.model_name:
        raise APIError(404, f"model {name!r} does not exist; this server serves {state.settings.model_name!r}",
                       "model", "model_not_found")


def chat_prompt(state, req):
    """Prompt ids; for a VL model, the VL runtime's inputs (ids plus pixels of the image parts)."""
    if not req.messages:
        raise APIError(400, "'messages' must hold at least one message", "messages", "empty_messages")
    if state.is_vl:
        return vl_chat_inputs(state, req)
    refuse_images(state, req)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        return state.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
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


def check_logprobs(state, wanted: bool) -> None:
    if wanted and state.sequential:
        raise APIError(400, "logprobs are not available when serving a VL model or with --speculative",
                       "logprobs", "logprobs_not_supported")


def sampling_params(state, req, max_tokens: int, logprobs: int | None, index: int) -> SamplingParams:
    """Request values first, then generation_config.json, then OpenAI defaults (temperature 1)."""
    defaults = state.generation_defaults
    temperature = req.temperature if req.temperature is not None else float(defaults.get("temperature", 1.0))
    top_p = req.top_p if req.top_p is not None else float(defaults.get("top_p", 1.0))
    top_k = req.top_k if req.top_k is not None else int(defaults.get("top_k", 0) or 0)
    seed = None if req.seed is None else req.seed + index
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                          min_tokens=min(req.min_tokens, max_tokens), logprobs=logprobs,
                          stop_token_ids=() if req.ignore_eos else state.stop_token_ids)
