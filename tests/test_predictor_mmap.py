"""Streaming export and mapped weights: the export's memory is bounded by a tensor group, ``weights.bin``
mapped gives the resident logits, a truncated file is a clear error, ``--offload-folder`` exports once."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from test_predictor import PROMPTS

from ernie_paddle.api import load
from ernie_paddle.errors import ErnieError
from ernie_paddle.kernels import predictor_ops
from ernie_paddle.runtime.predictor import export
from ernie_paddle.runtime.predictor import weight_file as wf

pytest_plugins = ("fixtures_models",)
pytestmark = pytest.mark.skipif(predictor_ops.get() is None, reason="no C++ compiler for the native program")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wint4_export(model_pair, tmp_path_factory):
    """An MoE checkpoint exported with wint4 experts (quantized on the fly)."""
    _, pd = model_pair("moe-untied-mtp")
    return export(pd, tmp_path_factory.mktemp("mmap") / "export", max_seq_len=64, max_batch=4,
                  quantization="wint4")


def test_mapped_weights_give_the_resident_logits(wint4_export):
    resident, mapped = load(wint4_export, mmap=False), load(wint4_export, mmap=True)
    assert not resident.predictor.mmap and mapped.predictor.mmap
    assert isinstance(mapped.predictor.weight_buffers.mapped, np.memmap)
    assert resident.predictor.weight_buffers.mapped is None
    ids = np.array([PROMPTS[0], PROMPTS[0][::-1]])
    np.testing.assert_array_equal(mapped.logits(ids), resident.logits(ids))
    np.testing.assert_array_equal(mapped.generate(ids, max_new_tokens=6), resident.generate(ids, max_new_tokens=6))
    buffers = mapped.predictor.weight_buffers  # with no budget every step drops the mapped pages: same tokens
    buffers.budget = 0
    np.testing.assert_array_equal(mapped.generate(ids, max_new_tokens=6), resident.generate(ids, max_new_tokens=6))
    assert buffers.trims >= 6


def test_mapped_experts_beyond_their_budget_prefill_a_token_per_run(wint4_export):
    """When the mapped experts exceed the mapped-page budget a prompt runs one token per step (so no step
    pages in more than one token's experts): the same logits within 1e-5 and the same tokens, left padding
    included."""
    resident, mapped = load(wint4_export, mmap=False), load(wint4_export, mmap=True)
    assert mapped.predictor.tokens_per_run() is None and resident.predictor.tokens_per_run() is None
    mapped.predictor.weight_buffers.budget = 0
    assert mapped.predictor.tokens_per_run() == 1
    ids = [PROMPTS[0], PROMPTS[1][:3]]
    np.testing.assert_allclose(mapped.logits(np.array([PROMPTS[0]])), resident.logits(np.array([PROMPTS[0]])),
                               rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mapped.generate(ids, max_new_tokens=6), resident.generate(ids, max_new_tokens=6))


def test_only_the_routed_experts_stay_mapped(wint4_export):
    """A mapped load maps the expert stacks (most of an MoE's bytes) and reads the rest: the mapped region
    holds exactly the entries marked as experts."""
    manifest = json.loads((wint4_export / "manifest.json").read_text())
    entries = wf.entries_from_manifest(manifest, wint4_export)
    experts = [e for e in entries if e.experts]
    assert experts and all(".experts." in e.name for e in experts)
    assert not any(".experts." in e.name for e in entries if not e.experts)
    tensors, buffers = wf.open_weights(wint4_export, entries, mmap=True)
    lo, hi = buffers.mapped.ctypes.data, buffers.mapped.ctypes.data + buffers.mapped.nbytes
    for e in entries:
        assert (lo <= tensors[e.name].data_ptr() < hi) == e.experts, e.name


def test_weight_file_holds_every_stored_weight(wint4_export):
    """The manifest's table covers weights.bin exactly, aligned, and names each stored weight's arrays."""
    manifest = json.loads((wint4_export / "manifest.json").read_text())
    entries = wf.entries_from_manifest(manifest, wint4_export)
    assert all(e.offset % wf.ALIGN == 0 for e in entries)
    assert wf.file_bytes(entries) == (wint4_export / wf.FILE).stat().st_size
    names = {e.name for e in entries}
    for weight, fmt in manifest["weight_formats"].items():
        base = weight.removesuffix(".weight")
        assert (weight if "embed_tokens" in weight else f"{base}.weight_t") in names, weight
        assert (f"{base}.weight_scale" in names) == (fmt == "wint4"), weight
    assert manifest["weight_formats"]["ernie.layers.1.mlp.experts.up_gate_proj"] == "wint4"


def test_truncated_weight_file_is_a_clear_error(wint4_export, tmp_path):
    """Cut weights.bin: the load fails naming the file (the manifest's size check), and the mapping itself
    refuses a file too short for its table, naming the tensor it ends inside."""
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(wint4_export, folder)
    path = folder / wf.FILE
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(ErnieError, match="weights.bin has .* bytes, the manifest says"):
        load(folder, mmap=True)
    entries = wf.entries_from_manifest(json.loads((folder / "manifest.json").read_text()), folder)
    with pytest.raises(ErnieError, match=r"weights.bin has \d+ bytes but its weights need \d+; it ends inside") as err:
        wf.open_weights(folder, entries, mmap=True)
    assert str(folder / wf.FILE) in str(err.value)


def test_offload_folder_exports_once_and_maps(model_pair, tmp_path):
    hf, pd = model_pair("moe-tied")
    offload = tmp_path / "offload"
    rt = load(pd, offload_folder=offload)
    assert rt.predictor.mmap and (offload / wf.FILE).is_file()
    stamp = (offload / wf.FILE).stat().st_mtime_ns
    ids = np.array([PROMPTS[1]])
    again = load(pd, offload_folder=offload)
    assert (offload / wf.FILE).stat().st_mtime_ns == stamp  # reused, not exported again
    np.testing.assert_array_equal(again.logits(ids), rt.logits(ids))
    np.testing.assert_allclose(rt.logits(ids), load(pd, engine="dygraph").logits(ids), atol=1e-5)
    other, _ = model_pair("dense-tied")
    with pytest.raises(ErnieError, match="holds an export of a checkpoint with digest"):
        load(other, offload_folder=offload)
    with pytest.raises(ErnieError, match="already an export folder"):
        load(offload, offload_folder=tmp_path / "x")


def test_cli_mmap_options(model_pair, tmp_path):
    _, pd = model_pair("dense-tied")
    ids = ",".join(map(str, PROMPTS[1]))
    mapped = run_cli("generate", str(pd), "--prompt-ids", ids, "--max-new-tokens", "4", "--offload-folder",
                     str(tmp_path / "off"))
    plain = run_cli("generate", str(pd), "--prompt-ids", ids, "--max-new-tokens", "4", "--engine", "dygraph")
    assert mapped.returncode == 0, mapped.stderr
    assert mapped.stdout.split() == plain.stdout.split()
    bad = run_cli("generate", str(pd), "--prompt-ids", ids, "--mmap", "--engine", "dygraph")
    assert bad.returncode == 2 and "predictor engine" in bad.stderr and "Traceback" not in bad.stderr


EXPORT_CHILD = textwrap.dedent("""
    import json, sys
    from ernie_paddle.kernels import predictor_ops
    from ernie_paddle.runtime.predictor import export

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    predictor_ops.get()
    before = status("VmRSS")
    export(sys.argv[1], sys.argv[2], max_seq_len=64, max_batch=2)
    print(json.dumps({"baseline": before, "peak": status("VmHWM")}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for VmHWM")
def test_export_memory_is_bounded_by_the_largest_group(tmp_path):
    """A ~300 MB bf16 checkpoint in the release layout (its largest tensor group is the embedding, as in
    the releases) exports within the process baseline + 2x its largest group; the float model alone would
    be twice the checkpoint."""
    from converters.tensor_groups import plan_groups
    from ernie_paddle.devkit import scale_checkpoint as sc
    from ernie_paddle.io.checkpoint import open_checkpoint

    cfg = sc.scaled_config("21B-A3B", layers=3, hidden_size=1024, num_attention_heads=8, num_key_value_heads=2,
                           head_dim=128, intermediate_size=2048, moe_num_experts=16, moe_k=2,
                           moe_intermediate_size=512, vocab_size=103424)
    folder = sc.write_random_checkpoint(tmp_path / "ckpt", cfg, seed=1, max_shard_size="100MB", quiet=True).folder
    ckpt = open_checkpoint(folder)
    largest = max(sum(o.nbytes for o in g.outputs) for g in plan_groups(ckpt, "paddle"))
    total = ckpt.total_bytes
    assert 250e6 < total < 400e6 and largest >= 150e6
    out = subprocess.run([sys.executable, "-c", EXPORT_CHILD, str(folder), str(tmp_path / "export")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    grown = got["peak"] - got["baseline"]
    print(f"\nexport of {total / 1e6:.0f} MB: baseline {got['baseline'] / 1e6:.0f} MB, peak {got['peak'] / 1e6:.0f} "
          f"MB, grown {grown / 1e6:.0f} MB, largest group {largest / 1e6:.0f} MB")
    assert grown < 2 * largest, got
    assert abs(wf.file_bytes(wf.entries_from_manifest(
        json.loads((tmp_path / "export" / "manifest.json").read_text()), tmp_path / "export")) / total - 1) < 0.05


def test_a_fresh_export_is_not_hashed_again(wint4_export, monkeypatch):
    """Export hashes its files once for the manifest; the rename into place carries those digests, so the
    first load does not read weights.bin again to verify it."""
    from ernie_paddle.runtime.predictor import manifest as mf

    def no_hashing(*_args, **_kw):
        raise AssertionError("hashed again")

    monkeypatch.setattr(mf.hashlib, "sha256", no_hashing)
    assert mf.verify_export(wint4_export)["files"][wf.FILE]["bytes"] == (wint4_export / wf.FILE).stat().st_size


def test_export_of_a_checkpoint_missing_a_norm_names_it(model_pair, tmp_path):
    """A tensor the program reads but the checkpoint lacks fails the streaming export with the key named,
    and leaves no destination behind."""
    import shutil

    from safetensors.numpy import load_file, save_file

    _, pd = model_pair("dense-tied")
    folder = tmp_path / "ckpt"
    shutil.copytree(pd, folder)
    (shard,) = folder.glob("*.safetensors")
    tensors = load_file(shard)
    del tensors["ernie.norm.weight"]
    save_file(tensors, shard)
    for index in folder.glob("*.index.json"):
        index.unlink()
    with pytest.raises(ErnieError, match="missing.*'ernie.norm.weight'"):
        export(folder, tmp_path / "out", max_seq_len=32, max_batch=1)
    assert not (tmp_path / "out").exists()
