"""``ernie-paddle chat`` (multi-turn, streamed) and ``ernie-paddle usage`` as subprocesses."""

import subprocess
import sys


def _run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ernie_paddle", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_chat_is_multi_turn_and_greedy(model_dir, api, reference):
    _, tok = api

    def reply(history):
        return reference(tok.apply_chat_template(history, tokenize=True), 6)[1]

    r1 = reply([{"role": "user", "content": "hello"}])
    r2 = reply([{"role": "user", "content": "hello"}, {"role": "assistant", "content": r1},
                {"role": "user", "content": "数据 模型"}])
    out = _run("chat", model_dir, "--max-tokens", "6", stdin="hello\n数据 模型\n/reset\nhello\n/exit\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == f"> {r1}\n> {r2}\n> > {r1}\n> "


def test_usage_command_needs_a_database(tmp_path):
    out = _run("usage", "--data-dir", tmp_path)
    assert out.returncode == 2 and "usage.sqlite3" in out.stderr


def test_serve_rejects_bad_keys_file(model_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# only comments\n")
    out = _run("serve", model_dir, "--api-keys-file", keys, "--data-dir", tmp_path / "d", "--port", "1")
    assert out.returncode == 2 and "no keys" in out.stderr
