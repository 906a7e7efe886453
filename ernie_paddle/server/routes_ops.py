"""Operations routes: ``/health``, ``/metrics``, ``/v1/usage`` (own key) and ``/admin/usage`` (all keys)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ernie_paddle.server.security import admin, key_only

router = APIRouter()


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
    return PlainTextResponse(request.app.state.server.metrics.render(),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/usage")
async def own_usage(request: Request, kid: str = Depends(key_only)):
    totals = request.app.state.server.usage.totals(kid).get(kid)
    return {"key_id": kid, **(totals or {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                         "total_tokens": 0})}


@router.get("/admin/usage")
async def all_usage(request: Request, kid: str = Depends(admin)):
    return {"object": "list", "data": [{"key_id": k, **v}
                                       for k, v in request.app.state.server.usage.totals().items()]}
