"""OpenAI-compatible HTTP server (FastAPI + uvicorn) with continuous batching, API keys and usage.

Attributes load lazily, so ``ernie_paddle.server.usage`` can be read without importing Paddle or FastAPI.
"""

__all__ = ["Settings", "create_app", "run_server"]


def __getattr__(name):
    if name in ("create_app", "run_server"):
        from ernie_paddle.server import app

        return getattr(app, name)
    if name == "Settings":
        from ernie_paddle.server.state import Settings

        return Settings
    raise AttributeError(name)
