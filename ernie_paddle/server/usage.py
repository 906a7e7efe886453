"""Per-key usage (requests, prompt and completion tokens) in SQLite under the data folder; survives restarts."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from ernie_paddle.errors import ErnieError

DB_NAME = "usage.sqlite3"


def default_data_dir() -> Path:
    root = os.environ.get("ERNIE_PADDLE_HOME") or Path.home() / ".cache" / "ernie-paddle"
    return Path(root) / "server"


class UsageStore:
    """Append-only rows, one per finished request; totals are sums over them."""

    def __init__(self, folder):
        self.path = Path(folder) / DB_NAME
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS usage (ts REAL, key_id TEXT, model TEXT, "
                             "prompt_tokens INTEGER, completion_tokens INTEGER)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise ErnieError(f"cannot open the usage database ({exc})", self.path) from exc

    def record(self, key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                             (time.time(), key_id, model, int(prompt_tokens), int(completion_tokens)))
            self._db.commit()

    def totals(self, key_id: str | None = None) -> dict[str, dict[str, int]]:
        """{key_id: {requests, prompt_tokens, completion_tokens, total_tokens}}."""
        sql = ("SELECT key_id, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
               "FROM usage" + (" WHERE key_id = ?" if key_id else "") + " GROUP BY key_id ORDER BY key_id")
        with self._lock:
            rows = self._db.execute(sql, (key_id,) if key_id else ()).fetchall()
        return {k: {"requests": n, "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
                for k, n, p, c in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
