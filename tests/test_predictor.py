"""The Paddle Inference predictor: parity with dygraph, in-place KV buffer, export folders, cache, CLI."""

import collections
import importlib
import json
import shutil

import numpy as np
import paddle
import pytest
from helpers import run_cli

from ernie_paddle.api import load
from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.batching import EagerEngine
from ernie_paddle.runtime.generation import pad_batch
from ernie_paddle.runtime.predictor import (
    PredictorRuntime,
    checkpoint_digest,
    export,
    resolve_engine,
    supports,
)
from ernie_paddle.runtime.predictor.batching import PredictorEngine
from ernie_paddle.runtime.predictor.runner import GC_THRESHOLD_GB, Predictor

pytest_plugins = ("fixtures_models",)  # model_pair, runtime

PROMPTS = [[5, 17, 300, 42, 9, 77, 1000], [11, 12], [900, 3, 250, 640, 128]]
NO_STOP = {"stop_token_ids": []}
CASES = [("dense-tied", "hf"), ("dense-tied", "paddle"), ("moe-tied", "hf"), ("moe-untied-mtp", "paddle")]


@pytest.fixture(scope="session")
def exported(model_pair, tmp_path_factory):
    """Factory: exported(name, fmt) -> export folder of that checkpoint (written once per session)."""
    root = tmp_path_factory.mktemp("exports")
    made = {}

    def make(name, fmt="paddle"):
        if (name, fmt) not in made:
            hf, pd = model_pair(name)
            made[name, fmt] = export(hf if fmt == "hf" else pd, root / f"{name}-{fmt}", max_seq_len=256,
                                     max_batch=4)
        return made[name, fmt]

    return make


@pytest.fixture(scope="session")
def predictor(exported):
    loaded = {}

    def get(name, fmt="paddle"):
        if (name, fmt) not in loaded:
            loaded[name, fmt] = load(exported(name, fmt))
        return loaded[name, fmt]

    return get


def _compare_streams(pred, eager, ids, mask, steps=16):
    """Logits within 1e-5 at every decode step and identical greedy tokens; returns the tokens."""
    ours = list(pred.stream(ids, attention_mask=mask, max_new_tokens=steps, output_logits=True, **NO_STOP))
    ref = list(eager.stream(ids, attention_mask=mask, max_new_tokens=steps, output_logits=True, **NO_STOP))
    assert len(ours) == len(ref) == steps
    for step, ((tok, logits), (ref_tok, ref_logits)) in enumerate(zip(ours, ref)):
        assert np.abs(logits - ref_logits).max() <= 1e-5, step
        assert tok.tolist() == ref_tok.tolist(), step
    return np.stack([t for t, _ in ours], axis=1)


def assert_engines_match(pred, eager, steps=16):
    """Prefill logits within 1e-5 (batch 1 and a left-padded batch of 3, real positions) and every decode step
    equal (``_compare_streams``); returns the batch-1 greedy tokens."""
    single = np.array([PROMPTS[0]])
    assert np.abs(pred.logits(single) - eager.logits(single)).max() <= 1e-5
    tokens = _compare_streams(pred, eager, single, None, steps)
    ids, mask = pad_batch(PROMPTS)
    real = mask.astype(bool)
    assert np.abs(pred.logits(ids, mask)[real] - eager.logits(ids, mask)[real]).max() <= 1e-5
    _compare_streams(pred, eager, ids, mask, steps)
    return tokens


@pytest.mark.parametrize("name,fmt", CASES)
def test_predictor_matches_dygraph(runtime, predictor, name, fmt):
    """Prefill logits at every position and every decode step within 1e-5; same greedy text; batch 1 and
    a left-padded batch of 3."""
    pred, eager = predictor(name, fmt), runtime(name, fmt)
    assert isinstance(pred, PredictorRuntime) and pred.config.vocab_size == eager.config.vocab_size
    tokens = assert_engines_match(pred, eager)
    assert len(set(tokens[0].tolist())) > 1  # a real continuation, not one repeated id
    np.testing.assert_array_equal(pred.generate(PROMPTS, max_new_tokens=12, **NO_STOP),
                                  eager.generate(PROMPTS, max_new_tokens=12, **NO_STOP))


def test_predictor_frees_garbage_in_batches(predictor, monkeypatch):
    """The runner sets Paddle's GC threshold (one GC task per 10 MB, not per tensor) unless the environment
    names one."""
    predictor("dense-tied")
    assert paddle.get_flags(["FLAGS_eager_delete_tensor_gb"])["FLAGS_eager_delete_tensor_gb"] == GC_THRESHOLD_GB
    paddle.set_flags({"FLAGS_eager_delete_tensor_gb": 0.0})
    monkeypatch.setenv("FLAGS_eager_delete_tensor_gb", "0")
    try:
        Predictor(predictor("dense-tied").predictor.folder)
        assert paddle.get_flags(["FLAGS_eager_delete_tensor_gb"])["FLAGS_eager_delete_tensor_gb"] == 0.0
    finally:
        paddle.set_flags({"FLAGS_eager_delete_tensor_gb": GC_THRESHOLD_GB})


def test_kv_buffer_is_written_in_place(runtime, predictor):
    """The predictor writes keys/values into the runner's buffer (same memory every step), equal to the
    dygraph cache; nothing else holds the cache."""
    pred, eager = predictor("moe-tied"), runtime("moe-tied")
    ids = np.array([PROMPTS[0]])
    cache, ref = pred.model.new_cache(16), eager.model.new_cache(16)
    pred.model.logits(ids, cache)
    ptr = cache.kv.data_ptr()
    with paddle.no_grad():
        eager.model(paddle.to_tensor(ids), ref)
        for tok in (7, 8, 9):
            pred.model.logits(np.array([[tok]]), cache, last_only=True)
            eager.model(paddle.to_tensor([[tok]]), ref, last_only=True)
    assert cache.kv.data_ptr() == ptr and cache.length == ref.length == 10
    kv = cache.kv.numpy()
    assert np.abs(kv[:, :, :, :, 10:]).max() == 0  # columns past the length untouched
    for i, layer in enumerate(ref.layers):
        np.testing.assert_allclose(kv[i, 0, :, :, :10], layer.k[:, :, :10].numpy(), atol=1e-5)
        np.testing.assert_allclose(kv[i, 1, :, :, :10], layer.v[:, :, :10].numpy(), atol=1e-5)


def _op_counts(program_json):
    """(ops of the top-level block, ops inside conditional blocks) by op name."""
    program = json.loads(program_json.read_text())["program"]
    top, nested = collections.Counter(), collections.Counter()

    def walk(node, depth):
        if isinstance(node, dict):
            for op in node.get("ops", []):
                (top if depth == 0 else nested)[op.get("#")] += 1
                walk(op.get("regions", []), depth + 1)
            for key, value in node.items():
                if key != "ops":
                    walk(value, depth)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth)

    walk(program["regions"], 0)
    return top, nested


def _mlp_blocks(program_json, layers):
    """The top-level operations of each of ``layers``' MLP block (between its post-attention norm and the next
    norm; the last layer's also holds the logit rows' gather), by name without the dialect."""
    ops = [op["#"].split(".")[-1] for op in json.loads(program_json.read_text())["program"]["regions"][0]["blocks"][0]["ops"]]
    norms = [i for i, name in enumerate(ops) if name == "ernie_rms_norm"]
    return [ops[norms[2 * i + 1] + 1: norms[2 * i + 2]] for i in layers]


def test_moe_program_runs_only_chosen_experts(exported, runtime, tmp_path, monkeypatch):
    """Compiled CPU operators: each MoE layer's routed experts are one operator (it runs only the chosen
    experts). Paddle's own operators: each routed expert is a conditional block (run only when a token
    selected it), its matmuls nested; the top level holds only dense, attention, router and shared
    matmuls. Both programs give the same logits."""
    from ernie_paddle.kernels import predictor_ops

    config = runtime("moe-tied").config
    moe_layers, dense_layers = len(config.moe_layers), config.num_hidden_layers - len(config.moe_layers)
    native = exported("moe-tied")
    if predictor_ops.get() is None:  # no compiler here: the export fell back to Paddle's own operators
        assert json.loads((native / "manifest.json").read_text())["program"]["ops"] == "paddle"
        pytest.skip(f"no compiled operators on this host: {predictor_ops.build_error()}")
    assert json.loads((native / "manifest.json").read_text())["program"]["ops"] == "native"
    top, nested = _op_counts(native / "step.json")
    custom = {name.split(".")[-1]: n for name, n in top.items() if "ernie_" in name}  # "<dialect id>.ernie_..."
    assert custom["ernie_moe"] == moe_layers and "ernie_moe_experts" not in custom and not nested and "1.if" not in top
    # an MoE block: router and routed experts in one operator, the shared expert's two linears, the residual add
    blocks = _mlp_blocks(native / "step.json", config.moe_layers)
    assert blocks[0] == ["ernie_moe", "ernie_linear", "ernie_linear_add", "add"] and max(map(len, blocks)) <= 6
    # per layer: qkv, o (+ residual); dense MLP or shared expert: up_gate, down (+ residual); head
    linears = 2 * config.num_hidden_layers + 2 * dense_layers + 2 * moe_layers + 1
    assert custom["ernie_linear"] + custom["ernie_linear_add"] == linears
    assert custom["ernie_linear_add"] == config.num_hidden_layers + dense_layers + moe_layers
    monkeypatch.setenv("ERNIE_PADDLE_NATIVE_OPS", "0")
    predictor_ops.reset()
    try:
        plain = export(runtime("moe-tied").folder, tmp_path / "plain", max_seq_len=64, max_batch=2)
    finally:
        monkeypatch.delenv("ERNIE_PADDLE_NATIVE_OPS")
        predictor_ops.reset()
    assert json.loads((plain / "manifest.json").read_text())["program"]["ops"] == "paddle"
    top, nested = _op_counts(plain / "step.json")
    assert top["1.if"] == moe_layers * config.moe_num_experts
    assert nested["1.matmul"] == 2 * moe_layers * config.moe_num_experts
    # per layer: qkv, rotary pairs, q.k, p.v, o; dense MLP 2; MoE router + shared expert 3; head 1
    assert top["1.matmul"] == 5 * config.num_hidden_layers + 2 * dense_layers + 3 * moe_layers + 1
    ids = np.array([PROMPTS[0]])
    np.testing.assert_allclose(load(plain).logits(ids), load(native).logits(ids), atol=1e-5)


@pytest.mark.parametrize("quantization", [None, "wint8"])
def test_export_leaves_the_model_unchanged(model_pair, tmp_path, quantization):
    """Saving the step program with Paddle's operator set (the one traced over a loaded model; the native
    program is traced over a model built without weights) leaves the model as it was: the same sublayers,
    parameter objects, memory and values, and the same dygraph logits."""
    from ernie_paddle.runtime.predictor.program import StepProgram, save_program

    _, pd = model_pair("moe-untied-mtp")
    rt = load(pd, device="cpu", **({"quantization": quantization} if quantization else {}))
    model, ids = rt.model, np.array([PROMPTS[0]])
    layers = [id(layer) for layer in model.sublayers()]
    before = {name: (id(p), p.data_ptr(), p.numpy().copy()) for name, p in model.named_parameters()}
    logits = rt.logits(ids)
    save_program(StepProgram(model), str(tmp_path / "step"), "float32")
    after = dict(model.named_parameters())
    assert [id(layer) for layer in model.sublayers()] == layers and list(after) == list(before)
    for name, (ident, ptr, value) in before.items():
        assert id(after[name]) == ident and after[name].data_ptr() == ptr, name
        assert np.array_equal(after[name].numpy(), value), name
    np.testing.assert_array_equal(rt.logits(ids), logits)


def test_moved_export_still_loads(exported, predictor, tmp_path):
    src = exported("dense-tied")
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(src, tmp_path / "copy")
    shutil.move(tmp_path / "copy", moved)
    ids = np.array([PROMPTS[2]])
    np.testing.assert_array_equal(load(moved).logits(ids), predictor("dense-tied").logits(ids))


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


DAMAGE = {
    "missing params": (lambda d: (d / "step.pdiparams").unlink(), "step.pdiparams is missing"),
    "manifest digest": (lambda d: _edit_json(d / "manifest.json", lambda m: m["files"]["step.pdiparams"].update(
        sha256="0" * 64)), "step.pdiparams does not match the sha256"),
    "edited config": (lambda d: _edit_json(d / "config.json", lambda c: c.update(rope_theta=10000.0)),
                      "config.json"),
    "flipped byte": (lambda d: _flip_byte(d / "step.pdiparams"), "step.pdiparams does not match"),
    "not json": (lambda d: (d / "manifest.json").write_text("{"), "not valid JSON"),
    "older program": (lambda d: _edit_json(d / "manifest.json", lambda m: m["program"].update(version=1)),
                      "calls compiled operators of another ernie-paddle"),
}


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_export_fails_clearly(exported, tmp_path, damage):
    folder = tmp_path / "export"
    shutil.copytree(exported("dense-tied"), folder)
    apply, message = DAMAGE[damage]
    apply(folder)
    with pytest.raises(ErnieError, match=message) as info:
        load(folder)
    assert str(folder) in str(info.value)


def test_export_cache_keyed_by_digest(model_pair, monkeypatch, tmp_path):
    """First use exports into $ERNIE_PADDLE_HOME/exports/<digest>...; later loads reuse it; the same
    checkpoint's exports of other program or Paddle versions are deleted, other checkpoints' kept; a cached
    folder whose manifest names another checkpoint is refused."""
    monkeypatch.setenv("ERNIE_PADDLE_HOME", str(tmp_path))
    hf, _ = model_pair("dense-untied")
    digest = checkpoint_digest(hf)
    stale, other = (tmp_path / "exports" / f"{d[:24]}-float32-native-v1-paddle0.0" for d in (digest, "e" * 64))
    for old in (stale, other):
        old.mkdir(parents=True)
        (old / "weights.bin").write_bytes(b"old")
    rt = load(hf, engine="predictor")
    assert not stale.exists() and (other / "weights.bin").exists()
    (folder,) = (tmp_path / "exports").glob(f"{digest[:24]}-float32-*")
    assert rt.folder == folder and rt.manifest["source"]["digest"] == digest
    export_mod = importlib.import_module("ernie_paddle.runtime.predictor.export_cache")
    monkeypatch.setattr(export_mod, "export", lambda *a, **k: pytest.fail("re-exported a cached checkpoint"))
    again = load(hf, engine="predictor")
    assert np.array_equal(again.logits([PROMPTS[1]]), rt.logits([PROMPTS[1]]))
    _edit_json(folder / "manifest.json", lambda m: m["source"].update(digest="f" * 64))
    with pytest.raises(ErnieError, match="holds an export of a checkpoint with digest .*delete the cached folder"):
        load(hf, engine="predictor")


def test_engine_choice_and_limits(model_pair, exported, runtime):
    hf, _ = model_pair("dense-tied")
    assert resolve_engine(hf, "auto") == "predictor" and resolve_engine(hf, None) == "dygraph"
    assert resolve_engine(exported("dense-tied"), None) == "predictor"
    with pytest.raises(ErnieError, match="only on the predictor"):
        load(exported("dense-tied"), engine="dygraph")
    with pytest.raises(ErnieError, match="unknown engine"):
        resolve_engine(hf, "tensorrt")
    config = runtime("dense-tied").config
    assert supports(config) is None
    assert supports(config.replace(quantization_config={"quant_type": "wint8"})) is None  # exported compact
    pred = load(exported("dense-tied"))  # max_seq_len 256, max_batch 4
    with pytest.raises(ErnieError, match="--max-batch 4"):
        pred.generate([[1, 2]] * 5, max_new_tokens=2)
    with pytest.raises(ErnieError, match="--max-seq-len 256"):
        pred.generate([list(range(3, 250))], max_new_tokens=20, **NO_STOP)


def test_server_engine_matches_eager(runtime, predictor):
    """Prefill, decode, merge a new request in, drop a finished row: same logits as the eager engine."""
    ours, ref = PredictorEngine(predictor("dense-tied").model), EagerEngine(runtime("dense-tied"))
    c1, l1 = ours.prefill(PROMPTS[:2])
    r1, m1 = ref.prefill(PROMPTS[:2])
    assert np.abs(l1 - m1).max() <= 1e-5
    for step in range(3):
        tok = np.argmax(l1, axis=-1)
        l1, m1 = ours.decode(c1, tok), ref.decode(r1, tok)
        assert np.abs(l1 - m1).max() <= 1e-5, step
    c2, l2 = ours.prefill([PROMPTS[2]])
    r2, m2 = ref.prefill([PROMPTS[2]])
    c1, r1 = ours.merge(c1, c2), ref.merge(r1, r2)
    tok = np.concatenate([np.argmax(l1, -1), np.argmax(l2, -1)])
    l1, m1 = ours.decode(c1, tok), ref.decode(r1, tok)
    assert np.abs(l1 - m1).max() <= 1e-5
    c1, r1 = ours.select(c1, [0, 2]), ref.select(r1, [0, 2])
    tok = np.argmax(l1, axis=-1)[[0, 2]]
    for step in range(3):
        l1, m1 = ours.decode(c1, tok), ref.decode(r1, tok)
        assert l1.shape[0] == 2 and np.abs(l1 - m1).max() <= 1e-5, step
        tok = np.argmax(l1, axis=-1)


def test_cli_export_then_generate(model_pair, runtime, tmp_path):
    hf, _ = model_pair("moe-tied")
    out = tmp_path / "exported"
    r = run_cli("export", hf, out, "--max-seq-len", "64", "--max-batch", "2")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["max_seq_len"] == 64 and manifest["source"]["digest"] == checkpoint_digest(hf)
    assert {"step.json", "step.pdiparams", "config.json", "generation_config.json"} <= set(manifest["files"])
    r = run_cli("generate", out, "--prompt-ids", "5,17,300,42", "--max-new-tokens", "8", "--stop-ids", "")
    assert r.returncode == 0, r.stderr
    expected = runtime("moe-tied", "hf").generate([[5, 17, 300, 42]], max_new_tokens=8, **NO_STOP)[0, 4:]
    assert r.stdout.strip() == ",".join(map(str, expected.tolist()))
    r = run_cli("export", hf, out)
    assert r.returncode == 2 and "not empty" in r.stderr


@pytest.mark.parametrize("method", ["wint8", "fp8"])
def test_quantized_checkpoint_without_compiled_ops_exports_dequantized(model_pair, tmp_path, monkeypatch, method):
    """Without the compiled operators (as on the GPU) a quantized checkpoint exports float32 dequantized
    weights under Paddle's operators: predictor logits equal the quantized dygraph model's (<= 1e-5) at
    prefill and decode; ``auto`` keeps such quantized checkpoints on dygraph. (The compact exports of
    the compiled operators: tests/test_predictor_quant.py.)"""
    from converters.quantize import quantize
    from ernie_paddle.kernels import predictor_ops

    _, pd = model_pair("moe-tied")
    quantized = tmp_path / method
    quantize(pd, quantized, method, quiet=True)
    monkeypatch.setenv("ERNIE_PADDLE_NATIVE_OPS", "0")
    predictor_ops.reset()
    try:
        assert resolve_engine(quantized, "auto", device="cpu") == "dygraph"
        folder = export(quantized, tmp_path / "export", max_seq_len=64, max_batch=2)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["program"]["ops"] == "paddle"
        assert manifest["weights"] == {"quantization": method, "dequantized_at_export": True,
                                       "activations": "float32"}
        assert "quantization_config" not in json.loads((folder / "config.json").read_text())
        pred, eager = load(folder), load(quantized, engine="dygraph")
        ids = np.array([PROMPTS[0]])
        assert np.abs(pred.logits(ids) - eager.logits(ids)).max() <= 1e-5
        _compare_streams(pred, eager, ids, None, steps=6)
    finally:
        monkeypatch.delenv("ERNIE_PADDLE_NATIVE_OPS")
        predictor_ops.reset()
