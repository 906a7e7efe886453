"""API keys and the route dependencies that check them.

Keys (bearer tokens) come from a file, one per line, ``#`` comments; they are kept keyed by digest. The
dependencies say who is calling, whether the model is ready, and whether the caller is an admin.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from fastapi import Request

from ernie_paddle.errors import ErnieError
from ernie_paddle.server.api_errors import APIError

ANONYMOUS = "anonymous"


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (used in usage records)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def read_keys(path) -> list[str]:
    """Keys in ``path``: one per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ErnieError(f"cannot read the API keys file ({exc})", path) from exc
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    bad = [k for k in keys if any(c.isspace() for c in k)]
    if bad:
        raise ErnieError("an API key contains whitespace; put one key per line", path)
    if not keys:
        raise ErnieError("the API keys file holds no keys", path)
    return keys


class KeyRing:
    """Checks ``Authorization: Bearer KEY``; open (anonymous) when no keys are configured."""

    def __init__(self, keys: list[str] | None = None, admin_keys: list[str] | None = None):
        self._keys = {key_id(k): k for k in keys or []}
        self._admins = {key_id(k) for k in admin_keys or []}
        self._keys.update({key_id(k): k for k in admin_keys or []})

    @classmethod
    def from_files(cls, keys_file=None, admin_keys_file=None) -> KeyRing:
        return cls(read_keys(keys_file) if keys_file else None,
                   read_keys(admin_keys_file) if admin_keys_file else None)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str:
        """The caller's key id, or raise a 401 APIError."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        kid = key_id(token.strip())
        stored = self._keys.get(kid)
        if stored is None or not hmac.compare_digest(stored, token.strip()):
            raise APIError(401, "invalid API key", code="invalid_api_key")
        return kid

    def is_admin(self, kid: str) -> bool:
        """Admins may read everyone's usage; without any keys configured the server is local and open."""
        return not self.enabled or kid in self._admins


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
    """The caller's key id when it is an admin key (403 for any other key)."""
    kid = key_only(request)
    if not request.app.state.server.keys.is_admin(kid):
        raise APIError(403, "this route needs an admin key (--admin-keys-file)", code="forbidden")
    return kid
