"""Bad input to ``convert``: exit status 2, a message naming the file and the problem, no traceback,
no destination left behind, and the source untouched."""

import json
import shutil
import struct

import pytest
from helpers import run_cli, tree_digest

from converters.convert import convert


@pytest.fixture(scope="module")
def sharded_hf(moe_hf, tmp_path_factory):
    """The tiny MoE checkpoint re-written as several HF shards with an index."""
    root = tmp_path_factory.mktemp("sharded")
    pd = root / "pd"
    convert(moe_hf, pd, quiet=True)
    convert(pd, root / "hf", max_shard_size="200KB", quiet=True)
    return root / "hf"


def _first_shard(folder):
    return sorted(folder.glob("model-*.safetensors"))[0]


def _truncate(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    return "truncated"


def _garbage_header(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff\xfe not json at all \x00\x01\x02\x03\x04\x05\x06\x07"
    f.write_bytes(bytes(data))
    return "not valid JSON"


def _oversized_header(folder):
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    return "header claims"


def _short_data(folder):
    f = folder / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b, e]  # keep the header, drop the tensor's last bytes
    f.write_bytes(data[: 8 + n + e - 16])
    return "truncated"


def _index_missing_shard(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "model-99999-of-99999.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return "does not exist"


def _index_disagrees(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.extra.weight"] = _first_shard(folder).name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return "disagree"


def _duplicate_key(folder):
    shards = sorted(folder.glob("model-*.safetensors"))
    shutil.copy(shards[0], shards[1])
    return "appears twice"


def _shape_contradicts(folder):
    conf = json.loads((folder / "config.json").read_text())
    conf["intermediate_size"] = conf["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(conf))
    return "contradicts config.json"


def _unknown_tensor(folder):
    from safetensors.numpy import load_file, save_file

    f = folder / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.0.self_attn.rotary.inv_freq"] = tensors["model.norm.weight"].copy()
    save_file(tensors, f, metadata={"format": "pt"})
    return "unknown tensor"


def _no_config(folder):
    (folder / "config.json").unlink()
    return "config.json not found"


def _invalid_config(folder):
    (folder / "config.json").write_text("{ this is not json")
    return "not valid JSON"


def _unknown_architecture(folder):
    conf = json.loads((folder / "config.json").read_text())
    conf["architectures"], conf["model_type"] = ["LlamaForCausalLM"], "llama"
    (folder / "config.json").write_text(json.dumps(conf))
    return "unknown architecture"


SINGLE_FILE_CASES = [_truncate, _garbage_header, _oversized_header, _short_data, _shape_contradicts,
                     _unknown_tensor, _no_config, _invalid_config, _unknown_architecture]
SHARDED_CASES = [_index_missing_shard, _index_disagrees, _duplicate_key]


def _check_refused(src, dst, expect, *extra):
    before = tree_digest(src) if src.exists() else None
    r = run_cli("convert", src, dst, *extra)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert expect in r.stderr, r.stderr
    assert not dst.exists() or extra
    assert not list(dst.parent.glob(f".{dst.name}.tmp-*")), "temporary folder left behind"
    if before is not None:
        assert tree_digest(src) == before, "source was modified"
    return r.stderr


@pytest.mark.parametrize("damage", SINGLE_FILE_CASES, ids=lambda f: f.__name__.strip("_"))
def test_single_file_damage(dense_hf, tmp_path, damage):
    src = tmp_path / "src"
    shutil.copytree(dense_hf, src)
    expect = damage(src)
    err = _check_refused(src, tmp_path / "dst", expect)
    assert str(src) in err  # the message names the file or folder


@pytest.mark.parametrize("damage", SHARDED_CASES, ids=lambda f: f.__name__.strip("_"))
def test_sharded_damage(sharded_hf, tmp_path, damage):
    src = tmp_path / "src"
    shutil.copytree(sharded_hf, src)
    expect = damage(src)
    err = _check_refused(src, tmp_path / "dst", expect)
    assert str(src) in err


def test_missing_path(tmp_path):
    _check_refused(tmp_path / "nope", tmp_path / "dst", "no such file or folder")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _check_refused(tmp_path / "empty", tmp_path / "dst", "config.json not found")


def test_dst_exists_without_overwrite(dense_hf, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    src = tmp_path / "src"
    shutil.copytree(dense_hf, src)
    r = run_cli("convert", src, dst)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (dst / "keep.txt").read_text() == "mine" and len(list(dst.iterdir())) == 1


def test_dst_inside_src(dense_hf, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dense_hf, src)
    before = tree_digest(src)
    r = run_cli("convert", src, src / "out")
    assert r.returncode == 2 and "inside the source" in r.stderr and "Traceback" not in r.stderr
    assert tree_digest(src) == before


def test_overwrite_replaces_only_on_success(dense_hf, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(dense_hf, src)
    assert run_cli("convert", src, dst, "-q").returncode == 0
    good = tree_digest(dst)
    _truncate(src)
    r = run_cli("convert", src, dst, "--overwrite")
    assert r.returncode == 2
    assert tree_digest(dst) == good  # the old destination survives a failed overwrite


def test_config_dialect_contradicts_tensors(dense_hf, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dense_hf, src)
    conf = json.loads((src / "config.json").read_text())
    conf["architectures"] = ["Ernie4_5_ForCausalLM"]  # the Paddle dialect's name, over HF tensors
    (src / "config.json").write_text(json.dumps(conf))
    _check_refused(src, tmp_path / "dst", "paddle dialect but the tensors are in the hf layout")


def test_inspect_lists_every_problem(dense_hf, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dense_hf, src)
    _shape_contradicts(src)
    r = run_cli("inspect", src, "--json")
    assert r.returncode == 1, r.stderr
    problems = json.loads(r.stdout)["problems"]
    n_layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    assert len(problems) == 2 * n_layers  # up_gate and down of every dense layer
    assert all("contradicts config.json" in p for p in problems)
