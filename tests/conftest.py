"""Shared fixtures: tiny checkpoints written once per session by transformers (fixed seeds).

Every run gets its own temporary root (unless ``--basetemp`` names one): pytest's default root is shared by
all runs of a user and keeps only the last three, so two runs at once could delete each other's files.
"""

import shutil
import tempfile
from pathlib import Path

import pytest

from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

OWN_TEMP_ROOT = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Without ``--basetemp``: a fresh folder ``ernie-paddle-tests-*`` in the system temp folder for this run."""
    if config.option.basetemp is None:
        root = Path(tempfile.mkdtemp(prefix="ernie-paddle-tests-"))
        config.stash[OWN_TEMP_ROOT] = root
        config.option.basetemp = str(root / "basetemp")  # pytest empties and recreates it; root stays ours


def pytest_sessionfinish(session, exitstatus):
    """Remove this run's own temporary root when every test passed; keep it to look into otherwise."""
    root = session.config.stash.get(OWN_TEMP_ROOT, None)
    if root is not None and exitstatus == 0:
        shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    root = config.stash.get(OWN_TEMP_ROOT, None)
    if root is not None and root.exists():
        terminalreporter.write_line(f"temporary files of this run kept in {root}")


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    """Factory: tiny_ckpts(name, kind, **kw) -> HF folder, cached by name for the session."""
    root = tmp_path_factory.mktemp("ckpts")
    made = {}

    def make(name, kind="dense", **kwargs):
        if name not in made:
            made[name] = make_tiny_hf_checkpoint(root / name, kind, **kwargs)
        return made[name]

    return make


@pytest.fixture(scope="session")
def dense_hf(tiny_ckpts):
    return tiny_ckpts("dense", "dense")


@pytest.fixture(scope="session")
def moe_hf(tiny_ckpts):
    return tiny_ckpts("moe", "moe", mtp=1, bias_scale=0.1)


@pytest.fixture(scope="session")
def ops():
    """The compiled CPU operators (``predictor_ops.get()``); skipped where they cannot be built (the predictor
    then exports Paddle's own operators, which tests/test_predictor.py covers)."""
    from ernie_paddle.kernels import predictor_ops

    module = predictor_ops.get()
    if module is None:
        pytest.skip(f"no compiled operators on this host: {predictor_ops.build_error()}")
    return module


@pytest.fixture
def portable(monkeypatch):
    """Run a call on the portable (plain C++) backend of the compiled kernels (test_cpu_ops, test_kernel_formats)."""

    def call(fn, *args):
        monkeypatch.setenv("ERNIE_PADDLE_PORTABLE_KERNELS", "1")
        try:
            return fn(*args).numpy()
        finally:
            monkeypatch.delenv("ERNIE_PADDLE_PORTABLE_KERNELS")

    return call
