"""Route dependencies: who is calling (API key), is the model ready, is the caller an admin."""

from __future__ import annotations

from fastapi import Request

from ernie_paddle.server.api_errors import APIError


def key_only(request: Request) -> str:
    """The caller's key id (401 without a valid key when keys are configured)."""
    state = request.app.state.server
    return state.keys.identify(request.headers.get("authorization"))


def caller(request: Request) -> str:
    """A valid key and a loaded model (503 while it is loading)."""
    kid = key_only(request)
    state = request.app.state.server
    if not state.ready:
        raise APIError(503, state.error and f"the model failed to load: {state.error}" or "the model is loading",
                       code="model_not_ready")
    return kid


def admin(request: Request) -> str:
    kid = key_only(request)
    if not request.app.state.server.keys.is_admin(kid):
        raise APIError(403, "this route needs an admin key (--admin-keys-file)", code="forbidden")
    return kid
