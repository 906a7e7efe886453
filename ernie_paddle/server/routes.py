"""The HTTP routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, and for operations
``/health``, ``/metrics``, ``/v1/usage`` (own key) and ``/admin/usage`` (all keys). The tokenizer routes
are in ``routes_tokens``."""

from __future__ import annotations

import time
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.auth import admin, caller, key_only
from ernie_paddle.server.chat_tools import parse_options
from ernie_paddle.server.delta_streams import Delta, Tally, fan_in, run_choice
from ernie_paddle.server.images import prompt_length
from ernie_paddle.server.metrics import CONTENT_TYPE
from ernie_paddle.server.prompt_scores import prompt_logits, score_tokens, vllm_prompt_logprobs
from ernie_paddle.server.request_bodies import ChatRequest, CompletionRequest
from ernie_paddle.server.request_inputs import (
    chat_prompt,
    check_model,
    completion_prompts,
    sampling_params,
    token_budget,
)
from ernie_paddle.server.responses import SSE_DONE, ChatFormat, CompletionFormat, sse, token_text, usage_dict

router = APIRouter()


def _record(state, kid: str, prompt_tokens: int, tally: Tally) -> None:
    state.usage.record(kid, state.settings.model_name, prompt_tokens, tally.completion_tokens)
    state.metrics.inc("prompt_tokens_total", prompt_tokens)
    state.metrics.inc("completion_tokens_total", tally.completion_tokens)
    if tally.first_token is not None and tally.completion_tokens > 1:
        elapsed = time.perf_counter() - tally.first_token
        if elapsed > 0:
            state.metrics.observe("request_tokens_per_second", (tally.completion_tokens - 1) / elapsed)


async def _nothing(index: int):
    """The choice of a ``max_tokens: 0`` request (echo only): no token, finished by length."""
    yield Delta(index, "", [], "length")


async def _prompt_parts(state, req, prompts: list[list[int]]) -> tuple[dict, dict]:
    """For every choice index: the echoed (prompt text, scored prompt tokens) and vLLM prompt_logprobs."""
    echo, vllm = {}, {}
    texts = [req.prompt] if isinstance(req.prompt, str) else \
        req.prompt if req.prompt and isinstance(req.prompt[0], str) else [None] * len(prompts)
    cache: dict = {}
    for p, (ids, text) in enumerate(zip(prompts, texts)):
        scored = req.prompt_logprobs is not None or (req.echo and req.logprobs is not None)
        logits = await prompt_logits(state, ids) if scored else None
        for index in range(p * req.n, (p + 1) * req.n):
            if req.echo:
                echo[index] = (state.tokenizer.decode(ids) if text is None else text,
                               score_tokens(logits, ids, req.logprobs) if req.logprobs is not None else [])
            if req.prompt_logprobs is not None:
                vllm[index] = vllm_prompt_logprobs(logits, ids, req.prompt_logprobs,
                                                   lambda i: token_text(state.tokenizer, i, cache)[0])
    return echo, vllm


async def respond(state, kid: str, fmt, jobs: list, prompt_tokens: int, req):
    """Run every (index, prompt, params) job; a JSON body, or an SSE stream when ``req.stream``."""
    tally = Tally()
    stops = req.stop_list()
    streams = [run_choice(state, i, prompt, params, stops, tally) if params.max_tokens else _nothing(i)
               for i, prompt, params in jobs]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            try:
                for i, _, _ in jobs:
                    start = fmt.start_chunk(i)
                    if start:
                        yield sse(start)
                try:
                    async with aclosing(fan_in(streams)) as deltas:
                        async for d in deltas:
                            yield sse(fmt.chunk(d))
                except Exception as exc:  # mid-stream failure: the status line is gone, so say it in-band
                    yield sse({"error": {"message": str(exc), "type": "server_error"}})
                if include_usage:
                    yield sse(fmt.usage_chunk(usage_dict(prompt_tokens, tally.completion_tokens)))
                yield SSE_DONE
            finally:  # also on client disconnect: the choices are cancelled by their own cleanup
                _record(state, kid, prompt_tokens, tally)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    results = {i: {"index": i, "text": "", "tokens": [], "finish_reason": None} for i, _, _ in jobs}
    try:
        async with aclosing(fan_in(streams)) as deltas:
            async for d in deltas:
                r = results[d.index]
                r["text"] += d.text
                r["tokens"] += d.tokens
                r["finish_reason"] = d.finish_reason or r["finish_reason"]
    finally:
        _record(state, kid, prompt_tokens, tally)
    return fmt.body([results[i] for i in sorted(results)], usage_dict(prompt_tokens, tally.completion_tokens))


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, request: Request, kid: str = Depends(caller)):
    state = request.app.state.server
    check_model(state, req.model)
    prompt = chat_prompt(state, req)
    prompt_len = prompt_length(prompt)
    max_tokens = token_budget(state, prompt_len, req.max_completion_tokens or req.max_tokens, "messages")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    jobs = [(i, prompt, sampling_params(state, req, max_tokens, logprobs, i)) for i in range(req.n)]
    fmt = ChatFormat(state.settings.model_name, state.tokenizer, req.logprobs, req.return_token_ids,
                     parse_options(state, req, prompt))
    return await respond(state, kid, fmt, jobs, prompt_len, req)


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request, kid: str = Depends(caller)):
    state = request.app.state.server
    check_model(state, req.model)
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens: 0 asks for nothing; it is only allowed with echo", "max_tokens")
    prompts = completion_prompts(state, req)
    jobs = []
    for p, prompt in enumerate(prompts):
        max_tokens = token_budget(state, len(prompt), req.max_tokens, "prompt")
        jobs += [(p * req.n + i, prompt, sampling_params(state, req, max_tokens, req.logprobs, i))
                 for i in range(req.n)]
    echo, vllm = await _prompt_parts(state, req, prompts)
    fmt = CompletionFormat(state.settings.model_name, state.tokenizer, req.logprobs is not None,
                           req.return_token_ids, echo, vllm)
    return await respond(state, kid, fmt, jobs, sum(map(len, prompts)), req)


@router.get("/v1/models")
async def models(request: Request, kid: str = Depends(caller)):
    state = request.app.state.server
    return {"object": "list", "data": [{"id": state.settings.model_name, "object": "model", "created": 0,
                                        "owned_by": "ernie-paddle",
                                        "max_model_len": state.context_length if state.ready else None}]}


@router.get("/health")
async def health(request: Request):
    """200 once the model is loaded; 503 while loading or after a failed load. Needs no key."""
    state = request.app.state.server
    if state.ready:
        return {"status": "ok", "model": state.settings.model_name}
    status = "error" if state.error else "loading"
    return JSONResponse({"status": status, "error": state.error}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request, kid: str = Depends(key_only)):
    return Response(request.app.state.server.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/usage")
async def own_usage(request: Request, kid: str = Depends(key_only)):
    totals = request.app.state.server.usage.totals(kid).get(kid)
    return {"key_id": kid, **(totals or {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                         "total_tokens": 0})}


@router.get("/admin/usage")
async def all_usage(request: Request, kid: str = Depends(admin)):
    return {"object": "list", "data": [{"key_id": k, **v}
                                       for k, v in request.app.state.server.usage.totals().items()]}
