"""Fixtures for the model, parity and generation tests: tiny HF checkpoints and their Paddle conversions.

Use them from a test module with ``pytest_plugins = ("fixtures_models",)``.
"""

import pytest

from converters.convert import convert
from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

# name -> make_tiny_hf_checkpoint arguments. MoE: shared experts, MoE layers 1 and 3 (start 1, interval 2).
VARIANTS = {  # initializer_range 0.1: varied greedy text, fp32 noise well under 1e-5
    "dense-tied": dict(kind="dense", initializer_range=0.1),
    "dense-untied": dict(kind="dense", tie_word_embeddings=False, initializer_range=0.1, seed=1),
    "moe-tied": dict(kind="moe", num_hidden_layers=4, moe_layer_interval=2, tie_word_embeddings=True,
                     moe_num_shared_experts=2, bias_scale=0.1, initializer_range=0.1, seed=2),
    "moe-untied-mtp": dict(kind="moe", num_hidden_layers=4, moe_layer_interval=2, tie_word_embeddings=False,
                           mtp=1, bias_scale=0.1, initializer_range=0.1, seed=3),
}


@pytest.fixture(scope="session")
def model_pair(tmp_path_factory):
    """Factory: model_pair(name) -> (hf_folder, paddle_folder), written once per session."""
    root = tmp_path_factory.mktemp("model_pairs")
    made = {}

    def make(name):
        if name not in made:
            hf = make_tiny_hf_checkpoint(root / f"{name}-hf", **VARIANTS[name])
            convert(hf, root / f"{name}-paddle", quiet=True)
            made[name] = (hf, root / f"{name}-paddle")
        return made[name]

    return make


@pytest.fixture(scope="session")
def runtime(model_pair):
    """Factory: runtime(name, fmt="paddle") -> a loaded ErnieRuntime, cached per session."""
    from ernie_paddle.api import load

    loaded = {}

    def get(name, fmt="paddle"):
        if (name, fmt) not in loaded:
            hf, pd = model_pair(name)
            loaded[name, fmt] = load(hf if fmt == "hf" else pd, device="cpu")
        return loaded[name, fmt]

    return get
