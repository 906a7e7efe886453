"""Chat messages with ``image_url`` parts -> VL runtime inputs. Images come from ``data:`` URLs or local
files only; an http(s) URL is refused before anything is read."""

from __future__ import annotations

from pathlib import Path

from ernie_paddle.errors import ErnieError
from ernie_paddle.server.api_errors import APIError


def image_urls(req) -> list[str]:
    return [url for m in req.messages for url in m.images()]


def refuse_images(state, req) -> None:
    """A text-only model gets no image parts."""
    if image_urls(req):
        raise APIError(400, f"model {state.settings.model_name!r} is a text-only model; image_url content "
                       "parts need an ERNIE 4.5 VL model", "messages", "images_not_supported")


def check_local_path(url: str, image_dir: str | None) -> None:
    """A local image path is read only when it lies under the server's ``--image-dir``."""
    if url.startswith("data:"):
        return
    if image_dir is None:
        raise APIError(400, "local image paths are disabled on this server (start it with --image-dir DIR to "
                       "allow files under DIR); send a data: URL", "messages", "image_url_not_allowed")
    root, path = Path(image_dir).resolve(), Path(url.removeprefix("file://")).resolve()
    if root != path and root not in path.parents:
        raise APIError(400, "local image paths must lie under the server's --image-dir", "messages",
                       "image_url_not_allowed")


def vl_chat_inputs(state, req, template_vars: dict | None = None):
    """The request's messages (text and image parts) as the VL runtime's tokenized inputs with pixels."""
    if any(u.lower().startswith(("http://", "https://")) for u in image_urls(req)):
        raise APIError(400, "images are not fetched from the network; send a data: URL or a local file path",
                       "messages", "image_url_not_allowed")
    for url in image_urls(req):
        check_local_path(url, state.settings.image_dir)
    messages = [{"role": m.role, "content": m.parts()} for m in req.messages]
    try:
        return state.runtime.inputs(messages=messages, **(template_vars or {}))
    except ErnieError as exc:
        raise APIError(400, str(exc), "messages", "invalid_image") from exc


def prompt_length(prompt) -> int:
    return int(prompt.input_ids.shape[1]) if hasattr(prompt, "input_ids") else len(prompt)
