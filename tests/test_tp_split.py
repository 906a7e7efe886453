"""Tensor-parallel split and merge: bit-identical round trip, each rank holds only its slice."""

import numpy as np
import pytest
from helpers import run_cli, tree_digest

from converters.convert import convert
from ernie_paddle.io.checkpoint import open_checkpoint


@pytest.fixture(scope="module")
def moe_paddle(moe_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("tp") / "pd"
    convert(moe_hf, out, quiet=True)
    return out


@pytest.mark.parametrize("tp", [2, 4])
def test_split_merge_bit_identical(moe_paddle, tmp_path, tp):
    before = tree_digest(moe_paddle)
    r = run_cli("convert", moe_paddle, tmp_path / "split", "--tp", tp, "-q")
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", tmp_path / "split", tmp_path / "merged", "--merge", "-q")
    assert r.returncode == 0, r.stderr
    a, b = open_checkpoint(moe_paddle), open_checkpoint(tmp_path / "merged")
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert a.get(k).dtype == b.get(k).dtype and a.get(k).tobytes() == b.get(k).tobytes(), k
    assert tree_digest(moe_paddle) == before


def test_rank_slices(moe_paddle, tmp_path):
    from converters.tp_split import split

    cfg = open_checkpoint(moe_paddle).config
    split(moe_paddle, tmp_path / "s", 2, quiet=True)
    full = open_checkpoint(moe_paddle)
    ranks = [open_checkpoint(tmp_path / "s" / f"rank{r}", cfg) for r in range(2)]
    qkv = full.get("ernie.layers.0.self_attn.qkv_proj.weight")
    q, kv = cfg.q_size, cfg.kv_size
    for r, rk in enumerate(ranks):
        part = rk.get("ernie.layers.0.self_attn.qkv_proj.weight")
        half_q, half_kv = q // 2, kv // 2
        assert part.shape == (cfg.hidden_size, half_q + 2 * half_kv)  # its own Q|K|V block
        np.testing.assert_array_equal(part[:, :half_q], qkv[:, r * half_q:(r + 1) * half_q])
        np.testing.assert_array_equal(part[:, half_q:half_q + half_kv], qkv[:, q + r * half_kv:q + (r + 1) * half_kv])
        down = rk.get("ernie.layers.1.mlp.experts.3.down_proj.weight")
        assert down.shape == (cfg.moe_intermediate_size // 2, cfg.hidden_size)
        np.testing.assert_array_equal(rk.get("ernie.embed_tokens.weight"), full.get("ernie.embed_tokens.weight"))
    split_bytes = sum(rk.total_bytes for rk in ranks)
    replicated = sum(full.specs[k].nbytes for k in full.keys() if "norm" in k or "embed" in k or "lm_head" in k
                     or "mlp.gate." in k or "moe_statics" in k or "mtp_linear" in k)
    assert split_bytes == full.total_bytes + replicated  # split weights appear once, replicated ones twice


def test_split_refuses_bad_degree(moe_paddle, tmp_path):
    r = run_cli("convert", moe_paddle, tmp_path / "s", "--tp", 3)
    assert r.returncode == 2 and "cannot split" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()


def test_split_merge_fp8_and_wint2(tiny_ckpts, tmp_path):
    """Quantized tensors split with their scales and merge back bit-identically."""
    import json

    from test_convert_fp8 import FP8_DIMS, _quantize_folder

    from converters.tp_split import merge, split
    from ernie_paddle.io.shard_writer import write_tensors
    from ernie_paddle.quant import wint2

    hf = tiny_ckpts("moe-fp8dims-tp", "moe", **{**FP8_DIMS, "num_attention_heads": 2, "num_key_value_heads": 2,
                                               "moe_intermediate_size": 256})
    convert(hf, tmp_path / "pd", quiet=True)
    fp8_dir = _quantize_folder(tmp_path / "pd", tmp_path / "fp8")
    # WINT2: experts of the MoE layers as CCQ tensors, everything else as it is.
    ck = open_checkpoint(tmp_path / "pd")
    tensors = []
    for key in ck.keys():
        arr = np.asarray(ck.get(key), np.float32)
        if ".experts." in key:
            base = key[: -len("weight")]
            tensors += [(base + s, v) for s, v in wint2.encode(arr).items()]
        else:
            tensors.append((key, ck.get(key)))
    w2 = tmp_path / "w2"
    w2.mkdir()
    write_tensors(w2, tensors, "paddle")
    raw = ck.config.to_dict("paddle")
    raw["quantization_config"] = {"dense_quant_type": "wint8", "moe_quant_type": "w4w2", "quantization": "wint2",
                                  "moe_quant_config": {"moe_w4_quant_config": {"quant_type": "wint4",
                                                       "quant_start_layer": 0, "quant_end_layer": 0},
                                                       "moe_w2_quant_config": {"quant_type": "wint2",
                                                       "quant_start_layer": 1, "quant_end_layer": 2}}}
    (w2 / "config.json").write_text(json.dumps(raw))
    for src in (fp8_dir, w2):
        split(src, tmp_path / f"{src.name}-s", 2, quiet=True)
        merge(tmp_path / f"{src.name}-s", tmp_path / f"{src.name}-m", quiet=True)
        a, b = open_checkpoint(src), open_checkpoint(tmp_path / f"{src.name}-m")
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert a.get(k).tobytes() == b.get(k).tobytes(), (src.name, k)
        r0 = open_checkpoint(tmp_path / f"{src.name}-s" / "rank0", a.config)
        key = "ernie.layers.1.mlp.experts.0.down_proj.quant_weight"
        assert r0.specs[key].shape[0] * 2 == a.specs[key].shape[0]  # row-parallel: half the K rows
