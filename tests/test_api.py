"""The front door: every folder loads to one ``Model`` interface, VL takes plain token ids, one engine rule."""

import numpy as np
import paddle
import pytest

import ernie_paddle
from converters.convert import convert
from ernie_paddle.api import choose_engine
from ernie_paddle.devkit.vl_demo import make_tiny_vl_checkpoint
from ernie_paddle.errors import ErnieError
from ernie_paddle.kernels import predictor_ops
from ernie_paddle.runtime.protocols import BatchingModel, Model, StepEngine

pytest_plugins = ("fixtures_models",)  # model_pair, runtime

IDS = [[1, 7, 99, 300, 4, 18, 250, 77, 5], [2, 8, 90, 31, 44, 180, 25, 7, 6]]


@pytest.fixture(scope="module")
def vl_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-vl")
    convert(make_tiny_vl_checkpoint(root / "hf"), root / "paddle", quiet=True)
    return root / "paddle"


@pytest.fixture(scope="module")
def vl(vl_folder):
    return ernie_paddle.load(vl_folder, device="cpu")


def test_vl_logits_take_plain_token_ids(vl):
    from ernie_paddle.config.vl import token_ids
    from ernie_paddle.tokenizer.vl_prompt import VLInputs, modality_types

    ids = np.array(IDS, dtype=np.int64)
    out = vl.logits(ids)
    assert out.shape == (2, ids.shape[1], vl.config.vocab_size) and out.dtype == np.float32
    text_only = VLInputs(ids, *modality_types(ids, token_ids(vl.config)))
    assert np.array_equal(out, vl.logits(text_only))
    assert np.allclose(vl.logits(IDS[0]), out[:1], atol=1e-5)  # one row as a flat list (batch-1 kernels)
    assert np.array_equal(vl.logits(paddle.to_tensor(ids)), out)


def test_vl_generate_and_stream_take_plain_token_ids(vl):
    from ernie_paddle.config.vl import token_ids
    from ernie_paddle.tokenizer.vl_prompt import VLInputs, modality_types

    row = np.array(IDS[:1], dtype=np.int64)
    want = vl.generate(VLInputs(row, *modality_types(row, token_ids(vl.config))), max_new_tokens=5,
                       stop_token_ids=[])
    assert np.array_equal(vl.generate(IDS[:1], max_new_tokens=5, stop_token_ids=[]), want)
    steps = [int(s[0]) for s in vl.stream(IDS[0], max_new_tokens=5, stop_token_ids=[])]
    assert steps == want[0, row.shape[1]:].tolist()
    with pytest.raises(ErnieError, match="padded batches"):
        vl.logits([[1, 2, 3], [4, 5]])


def test_vl_honours_num_threads(vl_folder, monkeypatch):
    calls = []
    monkeypatch.setattr(paddle.base.core, "set_num_threads", calls.append)
    ernie_paddle.load(vl_folder, device="cpu", num_threads=3)
    assert calls == [3]


def test_every_runtime_is_a_model(vl, runtime, model_pair, tmp_path):
    from ernie_paddle.runtime.predictor import export

    text = runtime("dense-tied")
    exported = export(model_pair("dense-tied")[1], tmp_path / "export", max_seq_len=64, max_batch=2)
    predictor = ernie_paddle.load(exported)
    for model in (text, vl, predictor):
        assert isinstance(model, Model), type(model)
    for model in (text, predictor):
        assert isinstance(model, BatchingModel) and isinstance(model.step_engine(), StepEngine)
    assert not isinstance(vl, BatchingModel)  # VL prompts are served one at a time
    ids = np.array(IDS, dtype=np.int64)
    assert np.abs(predictor.logits(ids) - text.logits(ids)).max() < 1e-4
    predictor.close()
    assert predictor.model is None and predictor.predictor is None


def test_engine_rules_are_decided_in_one_place(model_pair):
    folder = model_pair("dense-tied")[1]
    assert choose_engine(folder, "auto") == "predictor"
    assert choose_engine(folder, None) == "dygraph"
    for option in ({"speculative": "mtp"}, {"tp": 2}):
        assert choose_engine(folder, "auto", **option) == "dygraph"
        with pytest.raises(ErnieError, match="runs on the dygraph engine, not --engine predictor"):
            choose_engine(folder, "predictor", **option)
    compact = predictor_ops.get() is not None  # quantized exports stay compact with the compiled operators
    assert choose_engine(folder, "auto", quantization="wint8", device="cpu") == ("predictor" if compact else "dygraph")
    assert choose_engine(folder, "predictor", quantization="wint8") == "predictor"


def test_load_refuses_tp_outside_a_job_of_that_size(model_pair):
    with pytest.raises(ErnieError, match="job of 2 processes"):
        ernie_paddle.load(model_pair("dense-tied")[1], tp=2)
