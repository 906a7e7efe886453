"""HF <-> Paddle conversion: bit-exact round trips, the Paddle layout key by key, transformers reloads."""

import json

import ml_dtypes
import numpy as np
import pytest
import torch
from helpers import run_cli
from safetensors.numpy import load_file, save_file

from converters.convert import convert
from ernie_paddle.io.checkpoint import open_checkpoint

VARIANTS = {
    "dense-tied-fp32": dict(kind="dense"),
    "dense-untied-bf16": dict(kind="dense", tie_word_embeddings=False, dtype="bfloat16"),
    "moe-i1-untied-mtp": dict(kind="moe", mtp=1, bias_scale=0.1),
    "moe-i2-tied-bf16": dict(kind="moe", moe_layer_interval=2, num_hidden_layers=4, tie_word_embeddings=True,
                             dtype="bfloat16", bias_scale=0.1),
}


def _same_tensors(a_dir, b_dir):
    a, b = open_checkpoint(a_dir), open_checkpoint(b_dir)
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        x, y = a.get(k), b.get(k)
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def _hf_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                       dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_round_trip_bit_identical_and_loadable(tiny_ckpts, tmp_path, name):
    hf = tiny_ckpts(name, **VARIANTS[name])
    pd, back = tmp_path / "pd", tmp_path / "back"
    r = convert(hf, pd, quiet=True)
    assert (r.source_format, r.target_format) == ("hf", "paddle")
    assert open_checkpoint(pd).format == "paddle"
    convert(pd, back, quiet=True)
    _same_tensors(hf, back)
    ids = [[1, 5, 9, 200, 33, 7]]
    np.testing.assert_array_equal(_hf_logits(hf, ids), _hf_logits(back, ids))


def test_paddle_layout_matches_spec(moe_hf, tmp_path):
    pd = tmp_path / "pd"
    convert(moe_hf, pd, quiet=True)
    hf, p = load_file(moe_hf / "model.safetensors"), load_file(pd / "model.safetensors")
    cfg = json.loads((pd / "config.json").read_text())
    assert cfg["architectures"] == ["Ernie4_5_MoeForCausalLM"] and "dtype" in cfg and "rope_theta" in cfg
    assert all(k.startswith("ernie.") or k == "lm_head.weight" for k in p)
    h, hd, nh, nkv = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for blk in ("layers.0", "layers.2", "mtp_block.0"):
        qkv = p[f"ernie.{blk}.self_attn.qkv_proj.weight"]
        assert qkv.shape == (h, (nh + 2 * nkv) * hd)
        q, k, v = (hf[f"model.{blk}.self_attn.{x}_proj.weight"] for x in "qkv")
        for col in range(qkv.shape[1]):  # column by column: [all Q | all K | all V]
            src = q[col] if col < nh * hd else k[col - nh * hd] if col < (nh + nkv) * hd else \
                v[col - (nh + nkv) * hd]
            np.testing.assert_array_equal(qkv[:, col], src)
    ug = p["ernie.layers.1.mlp.experts.3.up_gate_proj.weight"]
    gate, up = hf["model.layers.1.mlp.experts.3.gate_proj.weight"], hf["model.layers.1.mlp.experts.3.up_proj.weight"]
    im = cfg["moe_intermediate_size"]
    assert ug.shape == (h, 2 * im)
    for col in range(2 * im):  # gate FIRST
        np.testing.assert_array_equal(ug[:, col], gate[col] if col < im else up[col - im])
    np.testing.assert_array_equal(p["ernie.layers.0.mlp.down_proj.weight"], hf["model.layers.0.mlp.down_proj.weight"].T)
    router = p["ernie.layers.1.mlp.gate.weight"]
    assert router.dtype == np.float32 and router.shape == (h, cfg["moe_num_experts"])
    np.testing.assert_array_equal(router, hf["model.layers.1.mlp.gate.weight"].T)
    bias = p["ernie.layers.2.mlp.moe_statics.e_score_correction_bias"]
    assert bias.dtype == np.float32 and bias.shape == (1, cfg["moe_num_experts"])
    assert p["ernie.mtp_linear_proj.0.weight"].shape == (2 * h, h)
    assert p["lm_head.weight"].shape == (h, cfg["vocab_size"])  # untied: transposed


def test_tied_head_is_omitted(dense_hf, tmp_path):
    convert(dense_hf, tmp_path / "pd", quiet=True)
    assert "lm_head.weight" not in open_checkpoint(tmp_path / "pd").keys()


def test_multi_shard_in_and_out(moe_hf, tmp_path):
    pd, back = tmp_path / "pd", tmp_path / "back"
    convert(moe_hf, pd, max_shard_size="64KB", quiet=True)
    index = json.loads((pd / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((pd / s).is_file() for s in shards)
    assert index["metadata"]["total_size"] == open_checkpoint(pd).total_bytes
    with open(pd / shards[0], "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    assert header["__metadata__"] == {"format": "paddle"}
    convert(pd, back, quiet=True)  # sharded input
    _same_tensors(moe_hf, back)


def test_u16_tagged_bf16_input(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("dense-untied-bf16", **VARIANTS["dense-untied-bf16"])
    pd = tmp_path / "pd"
    convert(hf, pd, quiet=True)
    u16 = tmp_path / "u16"
    u16.mkdir()
    tensors = load_file(pd / "model.safetensors")
    save_file({k: v.view(np.uint16) if v.dtype == ml_dtypes.bfloat16 else v for k, v in tensors.items()},
              u16 / "model.safetensors", metadata={"format": "np"})
    (u16 / "config.json").write_text((pd / "config.json").read_text())
    ck = open_checkpoint(u16)
    assert ck.specs["ernie.embed_tokens.weight"].dtype == "U16"
    assert ck.get("ernie.embed_tokens.weight").dtype == ml_dtypes.bfloat16
    convert(u16, tmp_path / "back", quiet=True)
    _same_tensors(hf, tmp_path / "back")


def test_pdparams_input(dense_hf, tmp_path):
    import paddle

    pd = tmp_path / "pd"
    convert(dense_hf, pd, quiet=True)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    state = {k: paddle.to_tensor(np.asarray(v)) for k, v in load_file(pd / "model.safetensors").items()}
    paddle.save(state, str(legacy / "model_state.pdparams"))
    (legacy / "config.json").write_text((pd / "config.json").read_text())
    assert open_checkpoint(legacy).files == [legacy / "model_state.pdparams"]
    convert(legacy, tmp_path / "back", quiet=True)
    _same_tensors(dense_hf, tmp_path / "back")


def test_cli_convert_and_inspect(moe_hf, tmp_path):
    out = tmp_path / "pd"
    r = run_cli("convert", moe_hf, out, "--to", "paddle", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    r = run_cli("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["format"] == "paddle" and rep["family"] == "moe" and rep["problems"] == []
    assert rep["layer_kinds"] == ["dense", "moe", "moe"] and rep["mtp_layers"] == 1
    assert 0 < rep["parameters"]["active"] < rep["parameters"]["total"]


def test_dtype_cast_keeps_router_fp32(moe_hf, tmp_path):
    convert(moe_hf, tmp_path / "pd", dtype="bfloat16", quiet=True)
    ck = open_checkpoint(tmp_path / "pd")
    assert ck.config.dtype == "bfloat16"
    assert ck.specs["ernie.layers.1.self_attn.qkv_proj.weight"].dtype == "BF16"
    assert ck.specs["ernie.layers.1.mlp.gate.weight"].dtype == "F32"
    assert ck.specs["ernie.layers.1.mlp.moe_statics.e_score_correction_bias"].dtype == "F32"
