"""The FastAPI app: state, routes, error handlers, request metrics; ``run_server`` starts uvicorn."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from ernie_paddle.server.api_errors import install_error_handlers
from ernie_paddle.server.routes import router
from ernie_paddle.server.routes_generate import router as generate_router
from ernie_paddle.server.routes_tokens import router as token_router
from ernie_paddle.server.state import ServerState, Settings


def create_app(settings: Settings, runtime=None, tokenizer=None, background_load: bool = True,
               step_engine=None) -> FastAPI:
    """An app serving ``settings.model_path``; the model loads after startup (``/health`` says when).

    ``runtime``, ``tokenizer`` and ``step_engine`` (what the batching scheduler drives) are made from the
    settings when not given.
    """
    state = ServerState(settings, runtime, tokenizer, step_engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start(background=background_load)
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="ernie-paddle", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(generate_router)
    app.include_router(token_router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        state.metrics.inc("requests_total", route=getattr(route, "path", "unmatched"),
                          status=response.status_code)
        return response

    return app


def run_server(settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
               **app_args) -> None:
    """Serve until interrupted; ``app_args`` go to ``create_app``."""
    import uvicorn

    uvicorn.run(create_app(settings, **app_args), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=5)
