"""The random checkpoint writer (``ernie_paddle.devkit.scale_checkpoint``): what the loader expects, values
regenerable per tensor, and memory bounded by pieces, not by shards."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from converters.expected import expected_tensors
from ernie_paddle.config.text import PADDLE, ErnieConfig
from ernie_paddle.devkit import scale_checkpoint as sc
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import SAFE_INDEX, open_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=1024, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
CONFIGS = {  # the 21B-A3B pattern (dense layer 0, MoE after, shared experts) and the 0.3B one, both tiny
    "moe": lambda: sc.scaled_config("21B-A3B", layers=3, intermediate_size=128, moe_num_experts=8, moe_k=2,
                                    moe_intermediate_size=32, **SMALL),
    "dense": lambda: sc.scaled_config("0.3B", layers=2, intermediate_size=128, **SMALL),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """kind -> (config, folder) of a random checkpoint in several shards."""
    root = tmp_path_factory.mktemp("scale")
    out = {}
    for kind, make in CONFIGS.items():
        cfg = make()
        out[kind] = cfg, sc.write_random_checkpoint(root / kind, cfg, seed=3, max_shard_size="100KB",
                                                    quiet=True).folder
    return out


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_exactly_the_expected_tensors(written, kind):
    cfg, folder = written[kind]
    ckpt = open_checkpoint(folder)
    expected = expected_tensors(cfg)
    want = {k for k, e in expected.items() if e.required}
    if kind == "moe":
        assert cfg.moe_layers == [1, 2]
        want |= {k for k in expected if k.endswith("e_score_correction_bias")}  # the release has it
        assert len(want - {k for k, e in expected.items() if e.required}) == 2
    assert set(ckpt.specs) == want
    for name, spec in ckpt.specs.items():
        assert spec.shape == expected[name].shape, name
        fp32 = name.endswith(("mlp.gate.weight", "e_score_correction_bias"))
        assert spec.dtype == ("F32" if fp32 else "BF16"), name
    assert ckpt.format == PADDLE and len(ckpt.files) > 1
    index = json.loads((folder / SAFE_INDEX).read_text())
    assert index["metadata"]["total_size"] == ckpt.total_bytes
    raw = json.loads((folder / "config.json").read_text())
    assert raw["dtype"] == "bfloat16" and "torch_dtype" not in raw  # the Paddle dialect
    again = ErnieConfig.from_file(folder)
    assert (again.num_hidden_layers, again.hidden_size, again.moe_num_experts) == (
        cfg.num_hidden_layers, cfg.hidden_size, cfg.moe_num_experts)
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_loads_with_finite_logits(written, kind):
    import ernie_paddle

    _cfg, folder = written[kind]
    logits = ernie_paddle.load(folder, device="cpu").logits([[5, 6, 7, 8, 9]])
    assert logits.shape == (1, 5, 1024)
    assert np.isfinite(logits).all() and logits.std() > 1e-3


def test_values_have_the_documented_scale(written):
    cfg, folder = written["moe"]
    ckpt = open_checkpoint(folder)
    weight = np.asarray(ckpt.get("ernie.embed_tokens.weight"), np.float32)
    assert 0.02 < weight.std() < 0.035 and abs(weight.mean()) < 2e-3
    assert 2.0**-8 <= np.abs(weight).min() and np.abs(weight).max() < 2.0**-4
    assert np.all(np.asarray(ckpt.get("ernie.layers.1.input_layernorm.weight"), np.float32) == 1)
    router = ckpt.get("ernie.layers.1.mlp.gate.weight")
    assert router.dtype == np.float32 and 0.01 < router.std() < 0.03


def test_one_tensor_regenerated_alone_is_the_same_bytes(written):
    cfg, folder = written["moe"]
    ckpt = open_checkpoint(folder)
    for key in ("ernie.layers.2.mlp.experts.5.up_gate_proj.weight", "ernie.layers.1.mlp.gate.weight",
                "ernie.embed_tokens.weight"):
        alone = sc.random_tensor(cfg, key, seed=3)
        assert alone.tobytes() == np.asarray(ckpt.get(key)).tobytes(), key
        assert alone.tobytes() != sc.random_tensor(cfg, key, seed=4).tobytes()
    with pytest.raises(ErnieError, match="no tensor"):
        sc.random_tensor(cfg, "ernie.layers.0.mlp.experts.0.up_gate_proj.weight")  # layer 0 is dense


def test_many_pieces_in_flight_land_in_order(tmp_path, monkeypatch):
    """With pieces far smaller than a tensor, the parallel draws still write each tensor's pieces in order."""
    monkeypatch.setattr(sc, "PIECE", 1000)
    cfg = CONFIGS["moe"]()
    folder = sc.write_random_checkpoint(tmp_path / "ckpt", cfg, seed=1, workers=3, quiet=True).folder
    ckpt = open_checkpoint(folder)
    for key in ("ernie.embed_tokens.weight", "ernie.layers.0.mlp.up_gate_proj.weight"):
        assert np.asarray(ckpt.get(key)).tobytes() == sc.random_tensor(cfg, key, seed=1).tobytes()
        assert np.asarray(ckpt.get(key)).size > 10 * 1000


def test_scaled_config_cuts_depth_and_refuses_unknown_fields():
    cfg = sc.scaled_config("21B-A3B", layers=4)
    assert cfg.num_hidden_layers == 4 and cfg.moe_layers == [1, 2, 3] and cfg.hidden_size == 2560
    assert sc.scaled_config("21B-A3B").moe_layers == list(range(1, 28))
    with pytest.raises(ErnieError, match="hidden_sise"):
        sc.scaled_config("21B-A3B", hidden_sise=8)
    with pytest.raises(ErnieError, match="layers"):
        sc.scaled_config("0.3B", layers=0)


def test_the_full_21b_plan_is_the_release_size():
    shards = sc.checkpoint_plan(sc.scaled_config("21B-A3B"), "4GB")
    total = sum(s.nbytes for shard in shards for s in shard)
    assert 43.0e9 < total < 44.5e9  # the release's 43.6 GB of bf16
    assert all(sum(s.nbytes for s in shard) <= 4e9 for shard in shards) and len(shards) >= 11


def test_writing_stays_within_one_shard_of_the_baseline(tmp_path):
    """A ~200 MB checkpoint in 64 MB shards, written in a child: its peak RSS (VmHWM) grows by less than
    one shard over the imports' baseline (a writer holding a shard or the 64 MB embedding would not)."""
    shard = 64 * 10**6
    code = textwrap.dedent(f"""
        import re
        from ernie_paddle.devkit.scale_checkpoint import scaled_config, write_random_checkpoint
        def hwm():
            return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        cfg = scaled_config("0.3B", layers=4, vocab_size=32768, hidden_size=1024, intermediate_size=4096)
        base = hwm()
        report = write_random_checkpoint({str(tmp_path / "big")!r}, cfg, max_shard_size={shard}, quiet=True)
        print(report.bytes, report.shards, base, hwm())
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    size, shards, base, peak = map(int, re.findall(r"\d+", out.stdout.splitlines()[-1]))
    assert size > 200 * 10**6 and shards >= 4
    assert peak - base < shard, f"peak {peak / 2**20:.0f} MiB over a baseline of {base / 2**20:.0f} MiB"
