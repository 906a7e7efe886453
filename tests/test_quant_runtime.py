"""Loading quantized checkpoints (FP8, wint8/wint4, the WINT2 mix) and quantizing on load.

The loaded model keeps compact storage in ``QuantLinear`` layers; their dequantized weights must equal
the numpy reference bit for bit, and the logits must equal those of a float32 model built from the reference
weights (only float32 summation order differs). Against the unquantized model, the logits may move only as
far as the rounding of the weights explains (see ``_relative_tolerance``).
"""

import json

import ml_dtypes
import numpy as np
import pytest
from helpers import run_cli

import ernie_paddle
from converters.convert import convert
from converters.quantize import quantize
from ernie_paddle.cli import main as cli_main
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.io.shard_writer import write_tensors
from ernie_paddle.quant import wint2
from ernie_paddle.quant.linear import QuantLinear
from ernie_paddle.quant.tensors import dequantize_weight, quantize_weight

METHODS = ("wint8", "wint4", "fp8")
SUFFIXES = ("quant_weight", "weight_scale", "super_scales", "code_scale", "code_zp")
RNG = np.random.default_rng(5)
PROMPTS = RNG.integers(0, 1024, size=(4, 12))
STATS: dict = {}


def _quant_layers(model):
    return {name: layer for name, layer in model.named_sublayers() if isinstance(layer, QuantLinear)}


def _tensors(ckpt, prefix):
    return {s: ckpt.get(f"{prefix}.{s}") for s in SUFFIXES if f"{prefix}.{s}" in ckpt}


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def paddle_ckpts(dense_hf, moe_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("qrt")
    out = {}
    for name, hf in (("dense", dense_hf), ("moe", moe_hf)):
        convert(hf, root / name, quiet=True)
        out[name] = root / name
        for method in METHODS:
            quantize(root / name, root / f"{name}-{method}", method, quiet=True)
            out[f"{name}-{method}"] = root / f"{name}-{method}"
    return out


@pytest.fixture(scope="module")
def reference_logits(paddle_ckpts):
    return {name: ernie_paddle.load(paddle_ckpts[name], device="cpu").logits(PROMPTS) for name in ("dense", "moe")}


def _relative_tolerance(method, src):
    """A bound on ||logits_q - logits|| / ||logits|| from the measured weight rounding of ``src``.

    Each quantized linear perturbs its output by about its relative weight error e (the largest over the
    model's linears, measured here; in expectation step / sqrt(12) / rms(w) with step amax/127 (wint8),
    amax/7 (wint4) or |w| 2^-3 (fp8)). The rounding errors of
    different linears are independent, so on a token's path through L layers of 4 linears (qkv, o, up_gate,
    down) they add in quadrature: sqrt(4 L) e (the residual stream only dilutes them). A factor 1.5 covers
    the nonlinearities (softmax, SiLU gates, RMSNorm rescaling) that can amplify a perturbation. A wrong
    decode (nibble order, scale grid) gives errors of order 1 and fails it.
    """
    ckpt = open_checkpoint(src)
    errs = []
    for key in ckpt.keys():
        if key.endswith(".weight") and key.startswith("ernie.layers.") and any(
                p in key for p in ("qkv_proj", "o_proj", "up_gate_proj", "down_proj")):
            w = np.asarray(ckpt.get(key), np.float32)
            q = quantize_weight(method, w)
            d = dequantize_weight(method, q, *w.shape)
            errs.append(np.linalg.norm(d - w) / np.linalg.norm(w))
    e = float(np.max(errs))
    return 1.5 * (4 * ckpt.config.num_hidden_layers) ** 0.5 * e, e


@pytest.mark.parametrize("name", ["dense", "moe"])
@pytest.mark.parametrize("method", METHODS)
def test_prequantized_weights_are_the_reference_bits(paddle_ckpts, method, name):
    folder = paddle_ckpts[f"{name}-{method}"]
    ckpt = open_checkpoint(folder)
    rt = ernie_paddle.load(folder, device="cpu")
    layers = _quant_layers(rt.model)
    expected = sorted(k[: -len(".quant_weight")] for k in ckpt.keys() if k.endswith(".quant_weight"))
    assert sorted(layers) == expected and expected
    stored = 0
    for prefix, layer in layers.items():
        assert layer.method == method and not hasattr(layer, "weight")
        ref = dequantize_weight(method, _tensors(ckpt, prefix), layer.in_features, layer.out_features)
        got = layer.dequantize().numpy()
        assert got.dtype == np.float32 and np.array_equal(got, ref), prefix
        stored += layer.storage_bytes()
        assert layer.weight_t.element_size() == 1  # compact: one byte per weight (wint4: per two)
    full = sum(4 * la.in_features * la.out_features for la in layers.values())
    assert stored < {"wint8": 0.27, "wint4": 0.14, "fp8": 0.26}[method] * full


@pytest.mark.parametrize("name", ["dense", "moe"])
@pytest.mark.parametrize("method", METHODS)
def test_logits_close_to_unquantized(paddle_ckpts, reference_logits, record_property, method, name):
    ref = reference_logits[name]
    got = ernie_paddle.load(paddle_ckpts[f"{name}-{method}"], device="cpu").logits(PROMPTS)
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    tol, weight_err = _relative_tolerance(method, paddle_ckpts[name])
    p, q = _softmax(ref.astype(np.float64)), _softmax(got.astype(np.float64))
    kl = float((p * (np.log(p) - np.log(q))).sum(-1).mean())
    top1 = float((ref.argmax(-1) == got.argmax(-1)).mean())
    STATS[f"{name}-{method}"] = {"rel_l2": rel, "tolerance": tol, "weight_rel_err": weight_err, "kl": kl,
                                 "top1": top1}
    record_property("quant_stats", json.dumps(STATS[f"{name}-{method}"]))
    print(f"\n{name} {method}: top-1 agreement {top1:.3f}, KL {kl:.2e}, relative logit error {rel:.4f} "
          f"(tolerance {tol:.3f}, weight error {weight_err:.4f})")
    assert rel <= tol
    # Tiny random models have small logits (init std 0.02), so KL is small; bounds ~10x the values seen.
    assert kl <= {"wint8": 3e-5, "fp8": 3e-4, "wint4": 5e-3}[method]
    assert top1 >= {"wint8": 0.9, "fp8": 0.8, "wint4": 0.6}[method]
    assert rel > 0  # the weights really were rounded


@pytest.mark.parametrize("method", METHODS)
def test_online_quantization_equals_quantized_checkpoint(paddle_ckpts, moe_hf, method):
    from_ckpt = ernie_paddle.load(paddle_ckpts[f"moe-{method}"], device="cpu")
    online = ernie_paddle.load(moe_hf, device="cpu", quantization=method)  # HF layout, quantized on load
    a, b = _quant_layers(from_ckpt.model), _quant_layers(online.model)
    assert sorted(a) == sorted(b)
    for prefix in a:
        assert np.array_equal(a[prefix].dequantize().numpy(), b[prefix].dequantize().numpy()), prefix
    assert np.array_equal(from_ckpt.logits(PROMPTS), online.logits(PROMPTS))
    assert np.array_equal(from_ckpt.generate(PROMPTS[:1], max_new_tokens=4),
                          online.generate(PROMPTS[:1], max_new_tokens=4))


# ------------------------------------------------------------------------------------------ WINT2 mix
def _wint2_config(end):
    return {"dense_quant_type": "wint8", "moe_quant_type": "w4w2", "quantization": "wint2",
            "moe_quant_config": {"moe_w4_quant_config": {"quant_type": "wint4", "quant_granularity": "per_channel",
                                                         "quant_start_layer": 0, "quant_end_layer": end},
                                 "moe_w2_quant_config": {"quant_type": "wint2", "quant_granularity": "pp_acc",
                                                         "quant_group_size": 64, "quant_start_layer": end + 1,
                                                         "quant_end_layer": 2}}}


def write_wint2_mix(source, root):
    """The released 2-bit mix on a tiny MoE checkpoint ``source`` (Paddle layout): attention, dense MLPs and
    shared experts wint8, the experts of layers <= 1 wint4, later experts CCQ wint2; plus a float32 twin
    holding the reference dequantized weights. Returns ({"wint2": folder, "twin": folder}, {prefix: method})."""
    src = open_checkpoint(source)
    quant, twin, methods = {}, {}, {}
    for key in src.keys():
        arr = np.asarray(src.get(key))
        linear = key.startswith("ernie.layers.") and key.endswith(
            ("qkv_proj.weight", "o_proj.weight", "up_gate_proj.weight", "down_proj.weight"))
        if not linear:
            quant[key] = twin[key] = arr
            continue
        layer = int(key.split(".")[2])
        method = "wint8" if ".experts." not in key else ("wint4" if layer <= 1 else "wint2")
        w = arr.astype(np.float32)
        parts = wint2.encode(w, name=key) if method == "wint2" else quantize_weight(method, w)
        prefix = key[: -len(".weight")]
        quant.update({f"{prefix}.{s}": v for s, v in parts.items()})
        twin[key] = dequantize_weight(method, parts, *w.shape).astype(arr.dtype)
        methods[prefix] = method
    out = {}
    for name, tensors, qc in (("wint2", quant, _wint2_config(1)), ("twin", twin, None)):
        folder = root / name
        folder.mkdir(parents=True)
        write_tensors(folder, tensors.items(), "paddle")
        src.config.replace(quantization_config=qc).write(folder, "paddle")
        out[name] = folder
    return out, methods


@pytest.fixture(scope="module")
def wint2_mix(paddle_ckpts, tmp_path_factory):
    """The 2-bit mix on the tiny MoE (layer 0 dense, 1-2 MoE: layer-1 experts wint4, layer-2 wint2)."""
    return write_wint2_mix(paddle_ckpts["moe"], tmp_path_factory.mktemp("wint2"))


def test_wint2_mix_loads_as_one_model(wint2_mix):
    folders, methods = wint2_mix
    ckpt = open_checkpoint(folders["wint2"])
    assert ckpt.specs["ernie.layers.2.mlp.experts.0.up_gate_proj.quant_weight"].dtype == "U8"
    rt = ernie_paddle.load(folders["wint2"], device="cpu")
    layers = _quant_layers(rt.model)
    assert {p: la.method for p, la in layers.items()} == methods
    assert set(methods.values()) == {"wint8", "wint4", "wint2"}
    for prefix, layer in layers.items():
        ref = dequantize_weight(layer.method, _tensors(ckpt, prefix), layer.in_features, layer.out_features)
        assert np.array_equal(layer.dequantize().numpy(), ref), prefix
    twin = ernie_paddle.load(folders["twin"], device="cpu")
    got, want = rt.logits(PROMPTS), twin.logits(PROMPTS)
    # Same weights, same float32 math; only the summation order inside the matmuls differs.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.array_equal(rt.generate(PROMPTS[:1], max_new_tokens=4), twin.generate(PROMPTS[:1], max_new_tokens=4))


def test_wint2_spec_worked_bytes_through_the_runtime_layer():
    """The spec's worked examples (section 3.4) decoded by the layer the runtime uses."""
    n = 8
    qw = np.zeros((16, n), np.uint8)  # K = 64: one local-scale group
    qw[0, 0], qw[0, 1] = 171, 0x5A
    cs, zp = np.full(n, 128, np.float32), np.zeros(n, np.float32)
    cs[1], zp[1] = 100.25, 37
    ls = np.full((1, n), 0x10, np.uint8)  # high nibble 1 -> scale = super_scale
    tensors = {"quant_weight": qw, "weight_scale": ls, "super_scales": np.ones(n, ml_dtypes.bfloat16),
               "code_scale": cs, "code_zp": zp}
    w = QuantLinear.from_tensors("wint2", tensors, 64, n).dequantize().numpy()
    assert w[:4, 0].tolist() == [10, -10, 16, -32] and w[:4, 1].tolist() == [-15, -19, 12, 4]


def test_fp8_experts_only_checkpoint_probes_names(paddle_ckpts, tmp_path):
    """FastDeploy's is_moe_quantized case: experts stored FP8, attention and dense MLPs still ``P.weight``."""
    plain, quant = open_checkpoint(paddle_ckpts["moe"]), open_checkpoint(paddle_ckpts["moe-fp8"])
    tensors = {k: np.asarray(quant.get(k)) for k in quant.keys() if ".experts." in k}
    tensors.update({k: np.asarray(plain.get(k)) for k in plain.keys()
                    if ".experts." not in k or not k.endswith("_proj.weight")})
    write_tensors(tmp_path, tensors.items(), "paddle")
    qc = {"quantization": "mix_quant", "dense_quant_type": "block_wise_fp8", "moe_quant_type": "block_wise_fp8",
          "is_moe_quantized": True}
    plain.config.replace(quantization_config=qc).write(tmp_path, "paddle")
    rt = ernie_paddle.load(tmp_path, device="cpu")
    layers = _quant_layers(rt.model)
    assert layers and all(".experts." in p and la.method == "fp8" for p, la in layers.items())
    attn = rt.model.ernie.layers[0].self_attn.qkv_proj
    assert type(attn).__name__ == "Linear"
    assert np.array_equal(attn.weight.numpy(), np.asarray(plain.get("ernie.layers.0.self_attn.qkv_proj.weight"),
                                                          np.float32))
    full = ernie_paddle.load(paddle_ckpts["moe-fp8"], device="cpu").logits(PROMPTS)
    base = ernie_paddle.load(paddle_ckpts["moe"], device="cpu").logits(PROMPTS)
    got = rt.logits(PROMPTS)
    assert np.linalg.norm(got - base) < np.linalg.norm(full - base)  # fewer linears rounded, smaller error


# ------------------------------------------------------------------------------------------ errors
def _cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli_main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def _broken(src, dst, edit=None, config=None):
    ckpt = open_checkpoint(src)
    tensors = {k: np.asarray(ckpt.get(k)) for k in ckpt.keys()}
    if edit:
        edit(tensors)
    dst.mkdir()
    write_tensors(dst, tensors.items(), "paddle")
    ckpt.config.replace(quantization_config=config or ckpt.config.quantization_config).write(dst, "paddle")
    return dst


QW = "ernie.layers.0.self_attn.qkv_proj.quant_weight"
BAD = {
    "shape": ("wint8", lambda t: t.update({QW: t[QW][:-1]}), None, "shape"),
    "dtype": ("wint8", lambda t: t.update({QW: t[QW].astype(np.float32)}), None, "int8"),
    "missing-scale": ("fp8", lambda t: t.pop(QW.replace("quant_weight", "weight_scale")), None, "weight_scale"),
    "method-mismatch": ("wint8", None, {"quantization": "block_wise_fp8"}, "look like wint8, but quantization_config says fp8"),
    "unknown-method": ("wint8", None, {"quantization": "awq"}, "unknown quantization 'awq'"),
    "extra-tensor": ("fp8", lambda t: t.update({QW.replace("quant_weight", "code_zp"): np.zeros(256, np.float32)}),
                     None, "code_zp"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_quantized_checkpoints_exit_2(paddle_ckpts, tmp_path, capsys, case):
    method, edit, config, needle = BAD[case]
    folder = _broken(paddle_ckpts[f"dense-{method}"], tmp_path / case, edit, config)
    with pytest.raises(ErnieError, match="quant|shape|missing|tensor"):
        ernie_paddle.load(folder, device="cpu")
    code, err = _cli(capsys, "generate", folder, "--prompt-ids", "1,2,3", "--max-new-tokens", "1",
                     "--device", "cpu")
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_quantization_option_errors(paddle_ckpts, capsys):
    code, err = _cli(capsys, "generate", paddle_ckpts["dense-fp8"], "--prompt-ids", "1,2", "--quantization", "wint8")
    assert code == 2 and "already quantized" in err
    code, err = _cli(capsys, "generate", paddle_ckpts["dense"], "--prompt-ids", "1,2", "--quantization", "int3")
    assert code == 2 and "int3" in err
    with pytest.raises(ErnieError, match="unknown quantization 'wint2'"):
        ernie_paddle.load(paddle_ckpts["dense"], device="cpu", quantization="wint2")


def test_generate_cli_quantization(paddle_ckpts):
    """The real console entry point: --quantization gives what load(quantization=...) gives; exit 2 on bad input."""
    rt = ernie_paddle.load(paddle_ckpts["dense"], device="cpu", quantization="wint4")
    want = rt.generate(PROMPTS[:1], max_new_tokens=5)[0, PROMPTS.shape[1]:]
    r = run_cli("generate", paddle_ckpts["dense"], "--prompt-ids", ",".join(map(str, PROMPTS[0])),
                "--max-new-tokens", "5", "--stop-ids", "", "--quantization", "wint4", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ",".join(map(str, want))
    bad = paddle_ckpts["dense-wint8"] / "config.json"
    cfg = json.loads(bad.read_text())
    cfg["quantization_config"] = {"quantization": "mix_quant", "dense_quant_type": "wint8"}
    broken = bad.parent.parent / "dense-wint8-badcfg"
    broken.mkdir(exist_ok=True)
    for f in bad.parent.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text(json.dumps(cfg))
    r = run_cli("generate", broken, "--prompt-ids", "1,2", "--max-new-tokens", "1", "--device", "cpu")
    assert r.returncode == 2 and "moe_quant_type" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ compute paths
@pytest.mark.parametrize("method", [*METHODS, "wint2"])
@pytest.mark.parametrize("path", ["compiled", "fallback"])
def test_runtime_layer_matches_reference_on_every_path(monkeypatch, method, path):
    """The compiled operator (decode rows and prefill blocks) and the dequantizing fallback (GPU, no
    compiler) on a shape with an odd output count and (fp8) partial 128x128 scale blocks on both axes; the
    kernel form is the checkpoint's bytes transposed, and turns back into them exactly."""
    import paddle

    from ernie_paddle.kernels import predictor_ops
    from ernie_paddle.quant import kernel_form
    from ernie_paddle.quant import linear as qmod

    if path == "fallback":
        monkeypatch.setattr(qmod, "_kernels", lambda: None)
    elif predictor_ops.get() is None:
        pytest.skip(f"no compiled kernels here: {predictor_ops.build_error()}")
    k, n = (320, 201) if method != "wint2" else (192, 73)
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    tensors = wint2.encode(w) if method == "wint2" else quantize_weight(method, w, layout="plain")
    layer = QuantLinear.from_tensors(method, tensors, k, n, layout="plain")
    ref = dequantize_weight(method, tensors, k, n, layout="plain")
    assert np.array_equal(layer.dequantize().numpy(), ref)
    form = {name: b.numpy() for name, b in layer.named_buffers()}
    assert list(form) == [kernel_form.WEIGHT, *kernel_form.SCALE_NAMES[method]]
    assert form["weight_t"].shape[0] == n
    back = kernel_form.from_kernel_form(method, form)
    compact = {s: np.asarray(v) for s, v in tensors.items()}
    assert np.array_equal(back["quant_weight"].view(np.uint8), compact["quant_weight"].view(np.uint8))
    for shape in ((1, k), (3, k), (8, k), (13, k), (70, k), (2, 5, k)):
        x = rng.standard_normal(shape).astype(np.float32)
        want = x.astype(np.float64) @ ref.astype(np.float64)
        got = layer(paddle.to_tensor(x)).numpy()
        assert got.shape == (*shape[:-1], n)
        # float32 sums of K products: |error| <~ sqrt(K) eps max|x w|, about 1e-6 of the output scale
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("method", ["wint8", "wint4", "fp8"])
def test_online_quantization_in_column_chunks_is_exact(method, monkeypatch):
    """Quantizing on load goes ONLINE_CHUNK output columns at a time (bounded float32 copies); the pieces
    join to exactly the tensors of quantizing the whole linear (the last chunk partial)."""
    from ernie_paddle.quant.tensors import quantize_weight
    from ernie_paddle.runtime import quantized_weights as qw

    w = np.random.default_rng(5).standard_normal((256, 640)).astype(ml_dtypes.bfloat16)  # as a bf16 checkpoint
    whole = quantize_weight(method, w.astype(np.float32), block=128, name="x", layout="plain")
    monkeypatch.setattr(qw, "ONLINE_CHUNK", 256)
    chunked, _ = qw._online_tensors(method, w, 128, "x")
    assert set(chunked) == set(whole)
    for key in whole:
        np.testing.assert_array_equal(chunked[key], whole[key])
