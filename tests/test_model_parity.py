"""The Paddle model against transformers' own ERNIE 4.5 classes (fp32, CPU), and MoE/MTP specifics."""

import numpy as np
import paddle
import pytest
from fixtures_models import VARIANTS
from helpers import run_cli
from safetensors.numpy import load_file, save_file

from converters.parity import run_parity
from converters.tensor_groups import iter_paddle_tensors
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.models.moe import SparseMoE, route

PROMPTS = [[5, 17, 300, 42, 9, 77, 1000], [11, 12], [900, 3, 250, 640, 128]]
STEPS = 64
pytest_plugins = ("fixtures_models",)  # model_pair, runtime


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("fmt", ["hf", "paddle"])
def test_parity_with_transformers(model_pair, name, fmt):
    """Single and left-padded batched prompts: logits within 1e-4, same top-1, same 64-token greedy text."""
    hf, pd = model_pair(name)
    result = run_parity(hf if fmt == "hf" else pd, hf, prompts=PROMPTS, max_new_tokens=STEPS)
    overall = result["overall"]
    assert overall["max_abs_diff"] <= 1e-4
    assert overall["top1_agreement"] == 1.0
    assert overall["greedy_match"] == STEPS
    assert result["batched"]["positions"] == sum(map(len, PROMPTS))  # pads excluded, every real token compared
    assert len(result["prompts"]) == len(PROMPTS) and result["passed"]


def test_paddle_folder_mapped_to_hf_in_memory(model_pair):
    """Without --reference, a Paddle folder is mapped to the HF layout in memory for transformers."""
    _, pd = model_pair("moe-untied-mtp")
    result = run_parity(pd, prompts=PROMPTS[:2], max_new_tokens=8)
    assert result["passed"] and result["overall"]["max_abs_diff"] <= 1e-4


def test_parity_detects_a_wrong_weight(model_pair, tmp_path):
    """A 1% change in the final norm makes the harness fail (so its PASS means something)."""
    hf, pd = model_pair("dense-tied")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in pd.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_file(bad / "model.safetensors")
    tensors["ernie.norm.weight"] = tensors["ernie.norm.weight"] * np.float32(1.01)
    save_file(tensors, bad / "model.safetensors", metadata={"format": "np"})
    result = run_parity(bad, hf, prompts=PROMPTS[:2], max_new_tokens=4)
    assert not result["passed"]
    assert result["overall"]["max_abs_diff"] > 1e-4 and result["failures"]


def test_parameters_are_the_paddle_checkpoint_keys(runtime, model_pair):
    """named_parameters() == the Paddle checkpoint's keys and shapes; routers and biases stay fp32."""
    for name in ("dense-untied", "moe-tied"):
        params = dict(runtime(name).model.named_parameters())
        ckpt = open_checkpoint(model_pair(name)[1])
        assert {k: tuple(p.shape) for k, p in params.items()} == {k: ckpt.specs[k].shape for k in ckpt.keys()}
    params = dict(runtime("moe-tied").model.named_parameters())
    assert params["ernie.layers.1.mlp.gate.weight"].shape == [64, 8]
    assert params["ernie.layers.1.mlp.moe_statics.e_score_correction_bias"].shape == [1, 8]
    assert "ernie.layers.2.mlp.gate.weight" not in params  # interval 2: layers 1 and 3 only
    assert "lm_head.weight" not in params  # tied


def _moe_inputs(model, layer: int, ids) -> paddle.Tensor:
    """The normed hidden states that reach the MoE block of ``layer``."""
    seen = []
    hook = model.ernie.layers[layer].mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with paddle.no_grad():
        model(paddle.to_tensor(ids))
    hook.remove()
    return seen[0].reshape([-1, seen[0].shape[-1]])


def test_correction_bias_changes_selection_and_matters(runtime):
    """The fixture's bias changes which experts are chosen, and the logits depend on it."""
    rt = runtime("moe-tied")
    ids = np.array([PROMPTS[0] + PROMPTS[2]])
    changed = 0
    for layer in (1, 3):
        mlp = rt.model.ernie.layers[layer].mlp
        x = _moe_inputs(rt.model, layer, ids)
        with_bias, _ = route(x, mlp.gate.weight, mlp.moe_statics.e_score_correction_bias, 2, 1e-12)
        without, _ = route(x, mlp.gate.weight, None, 2, 1e-12)
        changed += int((np.sort(with_bias.numpy(), -1) != np.sort(without.numpy(), -1)).any(-1).sum())
    assert changed > 0
    before = rt.logits(ids)
    saved = {}
    for layer in (1, 3):
        bias = rt.model.ernie.layers[layer].mlp.moe_statics.e_score_correction_bias
        saved[layer] = bias.numpy()
        bias.set_value(np.zeros_like(saved[layer]))
    try:
        assert np.abs(rt.logits(ids) - before).max() > 1e-3
    finally:
        for layer, value in saved.items():
            rt.model.ernie.layers[layer].mlp.moe_statics.e_score_correction_bias.set_value(value)
    assert np.array_equal(rt.logits(ids), before)


def test_route_weights_are_unbiased_and_renormalised():
    """Bias picks the experts; weights are their unbiased softmax probs / max(sum, norm_min)."""
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    gate = paddle.eye(4, dtype="float32")
    bias = paddle.to_tensor([[0.0, 0.0, 5.0, 5.0]])
    ids, w = route(paddle.to_tensor(logits), gate, bias, 2, 1e-12)
    p = np.exp(logits) / np.exp(logits).sum()
    assert sorted(ids.numpy()[0].tolist()) == [2, 3]
    picked = p[0, ids.numpy()[0]]
    np.testing.assert_allclose(w.numpy()[0], picked / picked.sum(), rtol=1e-6)
    _, w_clip = route(paddle.to_tensor(logits), gate, bias, 2, 10.0)  # sum < norm_min: divide by norm_min
    np.testing.assert_allclose(w_clip.numpy()[0], picked / 10.0, rtol=1e-6)


def test_only_selected_experts_run(runtime):
    """Every token goes through exactly k routed experts; unselected experts see no rows."""
    moe: SparseMoE = runtime("moe-tied").model.ernie.layers[1].mlp
    rows = {}
    hooks = [e.register_forward_pre_hook(lambda _m, a, j=j: rows.__setitem__(j, a[0].shape[0]))
             for j, e in enumerate(moe.experts)]
    x = paddle.randn([1, 3, 64])
    try:
        with paddle.no_grad():
            moe(x)
    finally:
        for h in hooks:
            h.remove()
    ids, _ = route(x.reshape([3, 64]), moe.gate.weight, moe.moe_statics.e_score_correction_bias, 2, 1e-12)
    assert sum(rows.values()) == 3 * 2
    assert set(rows) == set(np.unique(ids.numpy()).tolist())


def test_mtp_is_loaded_but_not_used(runtime, model_pair):
    rt = runtime("moe-untied-mtp", "hf")
    params = dict(rt.model.named_parameters())
    expected = dict(iter_paddle_tensors(open_checkpoint(model_pair("moe-untied-mtp")[1]), "float32"))
    mtp = [k for k in params if ".mtp_" in k]
    assert len(mtp) == 9 and "ernie.mtp_block.0.self_attn.qkv_proj.weight" in mtp
    for k in mtp:
        np.testing.assert_array_equal(params[k].numpy(), expected[k])
    ids = np.array([PROMPTS[0]])
    before = rt.logits(ids)
    saved = {k: params[k].numpy() for k in mtp}
    for k in mtp:
        params[k].set_value(np.zeros_like(saved[k]))
    try:
        assert np.array_equal(rt.logits(ids), before)
    finally:
        for k in mtp:
            params[k].set_value(saved[k])


def test_parity_cli_exit_codes_and_json(model_pair, tmp_path):
    hf, pd = model_pair("dense-tied")
    out = tmp_path / "parity.json"
    ok = run_cli("parity", pd, "--reference", hf, "--max-new-tokens", "4", "--json", out)
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout and "batched" in ok.stdout
    import json

    data = json.loads(out.read_text())
    assert data["passed"] and data["overall"]["max_abs_diff"] <= 1e-4
    strict = run_cli("parity", pd, "--reference", hf, "--max-new-tokens", "2", "--atol", "1e-12")
    assert strict.returncode == 1 and "FAIL" in strict.stdout


@pytest.mark.slow
def test_parity_03b_shaped_random_model(tmp_path):
    """Same thresholds on a random model with the 0.3B shapes (hidden 1024, 18 layers, 16/2 heads, hd 128)."""
    from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

    folder = make_tiny_hf_checkpoint(tmp_path / "03b", "dense", hidden_size=1024, num_hidden_layers=18,
                                     num_attention_heads=16, num_key_value_heads=2, head_dim=128,
                                     intermediate_size=3072, vocab_size=103424, max_position_embeddings=131072)
    result = run_parity(folder, prompts=[PROMPTS[0], PROMPTS[2]], max_new_tokens=16)
    print(result["overall"])
    assert result["overall"]["max_abs_diff"] <= 1e-4
    assert result["overall"]["top1_agreement"] == 1.0 and result["overall"]["greedy_match"] == 16
