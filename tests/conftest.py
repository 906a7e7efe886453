"""Shared fixtures: tiny checkpoints written once per session by transformers (fixed seeds)."""

import pytest

from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint


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
