"""vLLM's tokenizer routes, as lm-evaluation-harness's remote tokenizer and vLLM clients call them:
``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info`` (same keys as the OpenAI routes)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ernie_paddle.errors import ErnieError
from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.auth import caller
from ernie_paddle.server.request_bodies import DetokenizeRequest, TokenizeRequest
from ernie_paddle.server.request_inputs import check_model, check_token_ids

router = APIRouter()


def _ids(state, req: TokenizeRequest) -> list[int]:
    tok = state.tokenizer
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "send exactly one of 'prompt' and 'messages'", "prompt")
    if req.prompt is not None:
        return tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    if state.is_vl and any(m.images() for m in req.messages):
        raise APIError(400, "/tokenize counts text messages only; image parts are not tokenized here", "messages")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        return tok.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt, tokenize=True)
    except ErnieError as exc:
        raise APIError(400, str(exc), "messages") from exc


@router.post("/tokenize")
async def tokenize(req: TokenizeRequest, request: Request, kid: str = Depends(caller)):
    state = request.app.state.server
    if req.model is not None:
        check_model(state, req.model)
    ids = _ids(state, req)
    body = {"count": len(ids), "max_model_len": state.context_length, "tokens": ids}
    if req.return_token_strs:
        body["token_strs"] = state.tokenizer.convert_ids_to_tokens(ids)
    return body


@router.post("/detokenize")
async def detokenize(req: DetokenizeRequest, request: Request, kid: str = Depends(caller)):
    state = request.app.state.server
    if req.model is not None:
        check_model(state, req.model)
    check_token_ids(state, [req.tokens], "tokens")
    return {"prompt": state.tokenizer.decode(req.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request, kid: str = Depends(caller)):
    """The tokenizer's special tokens, chat template and limits (vLLM's ``/tokenizer_info`` fields)."""
    state = request.app.state.server
    tok = state.tokenizer
    return {"tokenizer_class": type(tok).__name__, "model_max_length": state.context_length,
            "vocab_size": len(tok), "chat_template": tok.chat_template,
            "add_bos_token": tok.add_bos_token, "add_eos_token": tok.add_eos_token,
            **{name: getattr(tok, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token",
                                                           "sep_token")}}
