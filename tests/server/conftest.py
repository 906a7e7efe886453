"""A real ``ernie-paddle serve`` process on 127.0.0.1 (free port) over a tiny model with a demo tokenizer."""

import shutil

import pytest
from server_env import ADMIN_KEY, USER_KEYS, ServerProcess

from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer


@pytest.fixture(scope="session")
def model_dir(dense_hf, tmp_path_factory):
    """A private copy of the tiny dense checkpoint plus a demo tokenizer of the model's vocab size."""
    folder = tmp_path_factory.mktemp("served") / "ernie-tiny"
    shutil.copytree(dense_hf, folder)
    write_demo_tokenizer(folder, 1024)
    return folder


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    keys = root / "keys.txt"
    keys.write_text("# customers\n" + "\n".join(USER_KEYS) + "\n\n# end\n")
    admin = root / "admin.txt"
    admin.write_text(ADMIN_KEY + "\n")
    proc = ServerProcess(model_dir, root / "data", keys, admin, root / "server.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api(model_dir):
    """The same model and tokenizer through the Python API in this process (the reference)."""
    import ernie_paddle
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    return ernie_paddle.load(model_dir), ErnieTokenizer.from_folder(model_dir)


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def reference(api):
    """reference(ids, n) -> (new ids, text) from the Python API alone: greedy, stopping at the stop ids."""
    import numpy as np

    runtime, tok = api

    def run(ids, n):
        out = runtime.generate(np.array([ids], dtype=np.int64), max_new_tokens=n,
                               stop_token_ids=tok.stop_token_ids)[0, len(ids):].tolist()
        return out, tok.decode(out, skip_special_tokens=True)

    return run
