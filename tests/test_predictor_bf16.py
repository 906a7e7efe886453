"""The predictor over bf16 weights at their stored size: a bf16 checkpoint's export keeps its linear, expert
and embedding weights in bfloat16 (the compiled operators widen them in registers), equal to dygraph on the
same weights; the manifest records each weight's format; float32 exports (older ones too) still load."""

import json

import numpy as np
import pytest
from fixtures_models import VARIANTS
from helpers import export_weight_bytes, run_cli
from test_predictor import NO_STOP, PROMPTS, _edit_json, assert_engines_match

from ernie_paddle.api import load
from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.kernels import predictor_ops
from ernie_paddle.runtime.predictor import export

pytest_plugins = ("fixtures_models",)  # model_pair
NAMES = ["dense-untied", "moe-tied"]  # an untied head (bf16 lm_head) and a tied one (the bf16 embedding)


@pytest.fixture(scope="module", autouse=True)
def _native():
    if predictor_ops.get() is None:
        pytest.skip(f"no compiled operators on this host: {predictor_ops.build_error()}")


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    """Factory: bf16_pair(name) -> (bf16 HF checkpoint, its default export, its dygraph runtime)."""
    root = tmp_path_factory.mktemp("bf16")
    made = {}

    def make(name):
        if name not in made:
            hf = make_tiny_hf_checkpoint(root / f"{name}-hf", **dict(VARIANTS[name], dtype="bfloat16"))
            folder = export(hf, root / f"{name}-export", max_seq_len=128, max_batch=4)
            made[name] = (hf, folder, load(hf, device="cpu"))
        return made[name]

    return make


@pytest.mark.parametrize("name", NAMES)
def test_bf16_export_matches_dygraph(bf16_pair, name):
    """Logits within 1e-5 of dygraph (float32 on the same bf16 values) at prefill and every decode step,
    identical greedy tokens; batch 1 and a left-padded batch of 3."""
    hf, folder, eager = bf16_pair(name)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weight_format"] == "bfloat16"
    formats = manifest["weight_formats"]
    assert set(formats.values()) == {"bfloat16"} and "ernie.embed_tokens.weight" in formats
    assert any(".experts." in n for n in formats) == name.startswith("moe")
    pred = load(folder)
    assert_engines_match(pred, eager, steps=8)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_export_is_the_checkpoint_size(bf16_pair, tmp_path, name):
    """The parameters of a bf16 export are within 5% of the checkpoint's weight bytes; asking for float32
    doubles them and gives the same logits."""
    hf, folder, _ = bf16_pair(name)
    weight_bytes = open_checkpoint(hf).total_bytes
    params = export_weight_bytes(folder)
    assert abs(params / weight_bytes - 1) <= 0.05, (params, weight_bytes)
    wide = export(hf, tmp_path / "fp32", max_seq_len=64, max_batch=2, weights="float32")
    manifest = json.loads((wide / "manifest.json").read_text())
    assert manifest["weight_format"] == "float32" and set(manifest["weight_formats"].values()) == {"float32"}
    assert export_weight_bytes(wide) > 1.8 * weight_bytes
    ids = np.array([PROMPTS[2]])
    np.testing.assert_allclose(load(wide).logits(ids), load(folder).logits(ids), rtol=0, atol=1e-5)


def test_float32_checkpoint_exports_float32_and_old_exports_load(model_pair, runtime, tmp_path):
    """A float32 checkpoint exports float32 weights; an export written before formats were recorded (no
    weight_format in its manifest) still loads and matches dygraph; an unknown format is refused."""
    _, pd = model_pair("dense-tied")
    folder = export(pd, tmp_path / "old", max_seq_len=64, max_batch=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weight_format"] == "float32"

    def strip(m):
        del m["weight_format"], m["weight_formats"]

    _edit_json(folder / "manifest.json", strip)
    ids = np.array([PROMPTS[0]])
    assert np.abs(load(folder).logits(ids) - runtime("dense-tied").logits(ids)).max() <= 1e-5
    np.testing.assert_array_equal(load(folder).generate([PROMPTS[1]], max_new_tokens=4, **NO_STOP),
                                  runtime("dense-tied").generate([PROMPTS[1]], max_new_tokens=4, **NO_STOP))
    _edit_json(folder / "manifest.json", lambda m: m.update(weight_formats={"x.weight": "int3"}))
    with pytest.raises(ErnieError, match="stores weights as int3"):
        load(folder)


def test_unknown_weight_format_is_refused(model_pair, tmp_path):
    _, pd = model_pair("dense-tied")
    with pytest.raises(ErnieError, match="unknown weight format"):
        export(pd, tmp_path / "x", max_seq_len=64, max_batch=2, weights="int3")


def test_auto_engine_and_cli_keep_bf16(bf16_pair, monkeypatch, tmp_path):
    """``engine="auto"`` on a bf16 checkpoint caches a bf16 export (named apart from float32 ones) at the
    checkpoint's size; ``ernie-paddle export --weights float32`` widens."""
    monkeypatch.setenv("ERNIE_PADDLE_HOME", str(tmp_path / "home"))
    hf, _, eager = bf16_pair("dense-untied")
    rt = load(hf, engine="auto")
    assert rt.folder.name.split("-v")[0].endswith("-native-bf16")
    assert rt.manifest["weight_format"] == "bfloat16"
    assert abs(export_weight_bytes(rt.folder) / open_checkpoint(hf).total_bytes - 1) <= 0.05
    ids = np.array([PROMPTS[1]])
    assert np.abs(rt.logits(ids) - eager.logits(ids)).max() <= 1e-5
    out = tmp_path / "wide"
    r = run_cli("export", hf, out, "--max-seq-len", "32", "--max-batch", "1", "--weights", "float32", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["weight_format"] == "float32"
