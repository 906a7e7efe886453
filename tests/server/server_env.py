"""Constants and the server process wrapper shared by the server tests."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import httpx

USER_KEYS = ["sk-test-alpha", "sk-test-beta", "sk-usage-one", "sk-usage-two"]
ADMIN_KEY = "sk-admin-root"
MODEL_NAME = f"ernie-tiny-{os.getpid()}"  # unique: a server of another test session never answers for ours


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start/stop ``python -m ernie_paddle serve`` and wait until /health says ready."""

    def __init__(self, model, data_dir, keys_file, admin_file, log_path, extra_args=(), env=None):
        self.model, self.data_dir, self.log_path, self.extra_args = model, data_dir, log_path, list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.keys_file, self.admin_file = keys_file, admin_file
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 120) -> None:
        cmd = [sys.executable, "-m", "ernie_paddle", "serve", str(self.model), "--port", str(self.port),
               "--api-keys-file", str(self.keys_file), "--admin-keys-file", str(self.admin_file),
               "--data-dir", str(self.data_dir), "--model-name", MODEL_NAME, "--max-tokens-limit", "2048",
               "--log-level", "warning", "--threads", "1", *self.extra_args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                r = httpx.get(self.base + "/health", timeout=2)
                if r.status_code == 200 and r.json().get("model") == MODEL_NAME:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready:\n" + self.log_path.read_text(errors="replace")[-3000:])

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM the server (SIGKILL after ``timeout`` s); its exit status (None when it was not running)."""
        code = None
        if self.proc:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_server(model, root, extra_args=(), env=None):
    """A started ``ServerProcess`` over ``model`` with the test keys written under ``root``; stopped after."""
    (root / "keys.txt").write_text("\n".join(USER_KEYS) + "\n")
    (root / "admin.txt").write_text(ADMIN_KEY + "\n")
    proc = ServerProcess(model, root / "data", root / "keys.txt", root / "admin.txt", root / "server.log",
                         extra_args, env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
