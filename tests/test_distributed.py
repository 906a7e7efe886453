"""Tensor- and expert-parallel runtime: 2 processes over 127.0.0.1 (paddle.distributed, gloo on CPU)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from converters.convert import convert
from converters.tp_split import split
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.runtime.distributed import launcher, runinfo
from ernie_paddle.runtime.distributed.model import RankShard
from ernie_paddle.runtime.distributed.rank_runtime import rank_slice

JOB = Path(__file__).with_name("tp_job.py")
PROMPTS = [[5, 9, 100, 7, 33, 250], [8, 1000, 3]]
TINY = dict(initializer_range=0.1, tokenizer=False)


@pytest.fixture(scope="module")
def models(tiny_ckpts, tmp_path_factory):
    """dense (4 heads / 2 kv heads: kv heads split), its Paddle split, MoE (1 kv head: replicated) + MTP."""
    root = tmp_path_factory.mktemp("tp")
    dense = tiny_ckpts("tp-dense", "dense", **TINY)
    moe = tiny_ckpts("tp-moe", "moe", num_key_value_heads=1, bias_scale=0.1, mtp=1, **TINY)
    convert(dense, root / "dense-pd", quiet=True)
    split(root / "dense-pd", root / "dense-split", 2, quiet=True)
    return {"dense": dense, "split": root / "dense-split", "moe": moe, "root": root}


def _single(folder):
    from ernie_paddle.api import load
    from ernie_paddle.runtime.generation import pad_batch

    rt = load(folder, engine="dygraph")
    ids, mask = pad_batch(PROMPTS)
    params = sum(int(np.prod(p.shape)) for p in rt.model.parameters())
    return rt.logits(ids, mask), rt.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[]), params


def _launch(args, log_dir, timeout=150, env=None):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_tp2_equals_single_process(models, tmp_path):
    """Logits within 1e-5 and identical greedy continuations; dense, split folder, MoE tp and MoE ep."""
    cases = {"dense": (models["dense"], "tp"), "split": (models["split"], "tp"), "moe_tp": (models["moe"], "tp"),
             "moe_ep": (models["moe"], "ep")}
    r = _launch([JOB, tmp_path, *(f"{n}:{f}:{m}" for n, (f, m) in cases.items())], tmp_path / "logs")
    assert r.returncode == 0, r.stdout[-3000:] + (tmp_path / "logs" / "workerlog.0").read_text()[-3000:]
    ref = {"dense": _single(models["dense"]), "moe": _single(models["moe"])}
    for name in cases:
        want_logits, want_gen, full_numel = ref["moe" if "moe" in name else "dense"]
        ranks = [np.load(tmp_path / f"{name}.rank{r}.npz") for r in range(2)]
        for got in ranks:
            np.testing.assert_allclose(got["logits"], want_logits, atol=1e-5, rtol=0, err_msg=name)
            np.testing.assert_array_equal(got["gen"], want_gen, err_msg=name)
            assert int(got["numel"]) < full_numel, name  # each rank holds only part of the model
        np.testing.assert_array_equal(ranks[0]["logits"], ranks[1]["logits"])  # the ranks agree bit for bit
        assert len(np.unique(want_gen[:, -12:])) > 4  # the continuation is not one repeated token
    dense, moe = (np.load(tmp_path / f"{n}.rank0.npz") for n in ("dense", "moe_ep"))
    assert list(dense["qkv"]) == [64, (2 + 1 + 1) * 32]  # 2 of 4 query heads, 1 of 2 kv heads, head_dim 32
    assert list(moe["qkv"]) == [64, (2 + 1 + 1) * 32]  # the single kv head is replicated
    assert int(moe["experts"]) == 4 and int(np.load(tmp_path / "moe_tp.rank0.npz")["experts"]) == 8


def test_tp2_quantization_on_load(models, tmp_path):
    """``load(..., quantization=)`` under tp 2: each rank quantizes its own slices (a row-parallel slice
    gets scales of its own rows). The ranks agree bit for bit; the logits differ from the single-process
    quantized model's by no more than quantization moves them from the float ones; wint8 continues
    greedily the same; each rank holds part of the quantized bytes."""
    from tp_job import state_bytes

    from ernie_paddle.api import load
    from ernie_paddle.runtime.generation import pad_batch

    cases = {"dense_wint8": (models["dense"], "tp", "wint8"), "moe_ep_wint8": (models["moe"], "ep", "wint8"),
             "moe_fp8": (models["moe"], "tp", "fp8")}
    r = _launch([JOB, tmp_path, *(f"{n}:{f}:{m}:{q}" for n, (f, m, q) in cases.items())], tmp_path / "logs")
    assert r.returncode == 0, r.stdout[-3000:] + (tmp_path / "logs" / "workerlog.0").read_text()[-3000:]
    ids, mask = pad_batch(PROMPTS)
    real = mask.astype(bool)
    for name, (folder, _, method) in cases.items():
        ranks = [np.load(tmp_path / f"{name}.rank{r}.npz") for r in range(2)]
        single = load(folder, engine="dygraph", quantization=method)
        want = single.logits(ids, mask)
        noise = np.abs(want - load(folder, engine="dygraph").logits(ids, mask))[real].max()
        np.testing.assert_array_equal(ranks[0]["logits"], ranks[1]["logits"], err_msg=name)
        assert np.abs(ranks[0]["logits"] - want)[real].max() <= 2 * noise, name
        if method == "wint8":
            want_gen = single.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[])
            np.testing.assert_array_equal(ranks[0]["gen"], want_gen, err_msg=name)
        assert all(int(rank["nbytes"]) < state_bytes(single.model) for rank in ranks), name


def test_slicing_on_load_equals_converter_split(models):
    """A rank's slice cut from the full checkpoint is exactly what ``convert --tp`` wrote for it."""
    full = open_checkpoint(models["root"] / "dense-pd")
    cfg = full.config
    for r in range(2):
        rank = open_checkpoint(models["split"] / f"rank{r}", cfg)
        assert sorted(rank.keys()) == sorted(full.keys())
        for key in full.keys():
            np.testing.assert_array_equal(rank_slice(key, full.get(key), cfg, 2, r), rank.get(key), err_msg=key)


def test_expert_partition_and_names():
    from ernie_paddle.config.text import ErnieConfig

    cfg = ErnieConfig(family="moe", moe_num_experts=6, moe_k=2, moe_intermediate_size=64)
    plans = [RankShard(4, r, "ep") for r in range(4)]
    owned = [list(p.experts(6)) for p in plans]
    assert sorted(sum(owned, [])) == list(range(6)) and all(owned)  # uneven, but every expert once
    key = "ernie.layers.1.mlp.experts.5.down_proj.weight"
    names = [p.param_name(key, cfg) for p in plans]
    assert names == [None, None, None, "ernie.layers.1.mlp.experts.1.down_proj.weight"]
    assert RankShard(4, 0, "tp").param_name(key, cfg) == key and not plans[0].sliced(key)


def _status_writer(folder):
    def status(rank, state, code=None, reason=""):
        (folder / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "pid": 1, "state": state, "code": code, "reason": reason}))

    return status


def test_diagnose_names_the_rank(tmp_path):
    status = _status_writer(tmp_path)
    status(0, "exited", 3, "rank 0: all_reduce failed")
    status(1, "running")
    code, msg = launcher.diagnose(tmp_path, 1)
    assert code == 1 and "rank 1 died" in msg and "rank 0" not in msg
    status(1, "exited", 2)
    status(0, "exited", 2)
    assert launcher.diagnose(tmp_path, 1) == (2, "")  # a user error, already printed by rank 0
    status(0, "exited", 3, "rank 0: broadcast did not complete")
    status(1, "exited", 0)
    code, msg = launcher.diagnose(tmp_path, 1)
    assert code == 1 and "broadcast did not complete" in msg


def test_diagnose_stopped_job(tmp_path):
    """Stopped by a signal (the launcher exits non-zero): 0 when every rank ended cleanly, as a server shut
    down by SIGTERM does, else 130 (aborted)."""
    status = _status_writer(tmp_path)
    status(0, "exited", 0)
    status(1, "exited", 0)
    assert launcher.diagnose(tmp_path, 15, stopped=True) == (0, "")
    assert launcher.diagnose(tmp_path, 15)[0] == 1  # not asked for: the launcher's failure counts
    status(1, "running")
    assert launcher.diagnose(tmp_path, 15, stopped=True) == (launcher.ABORTED, "aborted")


def test_cli_generate_tp2_matches_single(models):
    from ernie_paddle.api import load

    args = ["--prompt-ids", "5,9,100,7,33,250", "--prompt-ids", "8,1000,3", "--max-new-tokens", "6",
            "--stop-ids", ""]
    r = subprocess.run([sys.executable, "-m", "ernie_paddle", "generate", str(models["moe"]), *args, "--tp", "2",
                        "--moe-parallel", "ep"], capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr
    out = load(models["moe"], engine="dygraph").generate(PROMPTS, max_new_tokens=6, stop_token_ids=[])
    want = [",".join(map(str, row[-6:])) for row in out]
    assert r.stdout.split() == want  # rank 0's lines only, nothing else on stdout


def test_cli_tp_refuses_bad_degree(models):
    r = subprocess.run([sys.executable, "-m", "ernie_paddle", "generate", str(models["dense"]), "--prompt-ids",
                        "5,6", "--tp", "3", "--nnodes", "2", "--master", "127.0.0.1:1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "does not split evenly" in r.stderr


def test_cli_tp_user_error_exits_2_once(tmp_path):
    """An error every rank sees (bad folder) is printed once, by rank 0, with exit status 2."""
    r = subprocess.run([sys.executable, "-m", "ernie_paddle", "generate", str(tmp_path / "missing"), "--prompt-ids",
                        "5,6", "--tp", "2"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.count("no such file or folder") == 1
    assert "Traceback" not in r.stderr and not list(tmp_path.glob("ernie-paddle-tp-*"))


def test_dying_rank_fails_fast_naming_it(models, tmp_path):
    """SIGKILL rank 1 mid-generation: the job exits non-zero, naming rank 1, within seconds."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "ERNIE_PADDLE_TP_TIMEOUT": "20"}
    proc = subprocess.Popen([sys.executable, "-m", "ernie_paddle", "generate", str(models["dense"]), "--prompt-ids",
                             "5,9,100", "--max-new-tokens", "4000", "--stop-ids", "", "--stream", "--tp", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    guard = threading.Timer(120, proc.send_signal, [signal.SIGTERM])  # never let the test hang
    guard.start()
    try:
        assert proc.stdout.readline().strip().isdigit()  # decoding has started
        (run,) = tmp_path.glob("ernie-paddle-tp-*")
        pid = runinfo.read_statuses(run)[1]["pid"]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # forwarded to the launcher, which stops the ranks
            proc.wait(timeout=30)
    assert time.monotonic() - killed < 30
    assert proc.returncode not in (0, None)
    assert "rank 1 died" in err and "workerlog.1" in err


@pytest.mark.slow
def test_cli_parity_tp2(models, tmp_path):
    """``parity --tp 2`` against transformers passes, and only rank 0 writes the JSON."""
    out = tmp_path / "parity.json"
    r = subprocess.run([sys.executable, "-m", "ernie_paddle", "parity", str(models["moe"]), "--tp", "2",
                        "--max-new-tokens", "6", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["passed"] and result["overall"]["max_abs_diff"] < 1e-4
    assert r.stdout.count("PASS") == 1
