"""The seed's own service shape: ``POST /generate`` with ``{prompt, max_length, temperature, top_p,
do_sample}`` answering ``{generated_text, model_name, parameters_used}``.

Same keys, usage accounting and continuous batching as the OpenAI routes; the prompt is plain text
(no chat template) and ``generated_text`` holds the continuation only.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Depends, Request

from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.auth import caller
from ernie_paddle.server.request_bodies import GenerateRequest
from ernie_paddle.server.request_inputs import sampling_params, token_budget
from ernie_paddle.server.routes import respond

router = APIRouter()


class GenerateFormat:
    """Turns the one finished choice into the seed's response body."""

    def __init__(self, model_name: str, parameters_used: dict):
        self.model_name, self.parameters_used = model_name, parameters_used

    def body(self, choices: list[dict], usage: dict) -> dict:
        return {"generated_text": choices[0]["text"], "model_name": self.model_name,
                "parameters_used": self.parameters_used}


@router.post("/generate")
async def generate(req: GenerateRequest, request: Request, kid: str = Depends(caller)):
    state = request.app.state.server
    prompt = state.tokenizer.encode(req.prompt, add_special_tokens=False)
    if not prompt:
        raise APIError(400, "'prompt' holds no tokens", "prompt", "empty_prompt")
    max_tokens = token_budget(state, len(prompt), req.max_length, "prompt")
    params = sampling_params(state, req, max_tokens, None, 0)
    if not req.do_sample:
        params = replace(params, temperature=0.0)
    used = {"max_length": max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "do_sample": req.do_sample}
    fmt = GenerateFormat(state.settings.model_name, used)
    return await respond(state, kid, fmt, [(0, prompt, params)], len(prompt), req)
