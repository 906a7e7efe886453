"""Generation: KV cache vs full recomputation, padding, sampling rules, stops, defaults, CLI."""

import json
import shutil

import numpy as np
import paddle
import pytest
from helpers import run_cli

from ernie_paddle.api import load
from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.generation import apply_repetition_penalty, filter_logits, read_prompts_file

pytest_plugins = ("fixtures_models",)  # model_pair, runtime

PROMPTS = [[5, 17, 300, 42, 9, 77, 1000], [11, 12], [900, 3, 250, 640, 128]]
NO_STOP = {"stop_token_ids": []}


@pytest.mark.parametrize("name", ["dense-tied", "moe-untied-mtp"])
def test_cached_decoding_equals_full_recomputation(runtime, name):
    """At every step the cached logits equal a full forward over the whole (left-padded) sequence."""
    rt = runtime(name)
    ids = np.array([[0, 0, 0, 0, 0, 5, 17, 300], [900, 3, 250, 640, 128, 7, 8, 9]])
    mask = (np.arange(8) >= np.array([[5], [0]])).astype(np.int64)
    seq, steps = ids, 0
    for tokens, logits in rt.stream(ids, max_new_tokens=12, attention_mask=mask, output_logits=True, **NO_STOP):
        full_mask = np.concatenate([mask, np.ones((2, seq.shape[1] - 8), np.int64)], axis=1)
        full = rt.logits(seq, full_mask)[:, -1]
        assert np.abs(full - logits).max() <= 1e-5
        seq = np.concatenate([seq, tokens[:, None]], axis=1)
        steps += 1
    assert steps == 12


def test_cache_grows_past_its_capacity(runtime):
    """A cache created too small reallocates and keeps its contents: same logits as a full forward."""
    model = runtime("dense-untied").model
    ids = np.array([[5, 17, 300, 42, 9, 77]])
    cache = model.new_cache(capacity=2)
    with paddle.no_grad():
        model(paddle.to_tensor(ids[:, :3]), cache)
        for t in range(3, 6):
            step = model(paddle.to_tensor(ids[:, t:t + 1]), cache).numpy()[:, -1]
        full = model(paddle.to_tensor(ids)).numpy()[:, -1]
    assert cache.length == 6 and cache.layers[0].k.shape[2] >= 6
    assert np.abs(step - full).max() <= 1e-5


@pytest.mark.parametrize("name", ["dense-untied", "moe-tied"])
def test_left_padded_batch_equals_single_prompts(runtime, name):
    rt = runtime(name)
    batch = rt.generate(PROMPTS, max_new_tokens=10, **NO_STOP)
    width = max(map(len, PROMPTS))
    assert batch.shape == (3, width + 10) and batch.dtype == np.int64
    for row, prompt in zip(batch, PROMPTS):
        single = rt.generate([prompt], max_new_tokens=10, **NO_STOP)[0]
        assert row[width:].tolist() == single[len(prompt):].tolist()
        assert row[width - len(prompt):width].tolist() == prompt
    padded_logits = rt.logits(*_padded(PROMPTS))
    for row, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(padded_logits[row, width - len(prompt):], rt.logits([prompt])[0], atol=1e-5)


def _padded(prompts):
    from ernie_paddle.runtime.generation import pad_batch

    return pad_batch(prompts)


def test_logits_api_types(runtime):
    rt = runtime("dense-tied")
    out = rt.logits(paddle.to_tensor([[5, 6, 7]], dtype="int64"))
    assert out.dtype == np.float32 and out.shape == (1, 3, rt.config.vocab_size)
    np.testing.assert_array_equal(out, rt.logits(np.array([[5, 6, 7]])))


def test_seeded_sampling_repeats_and_seed_matters(runtime):
    rt = runtime("moe-tied")
    opts = dict(max_new_tokens=24, temperature=1.5, top_p=0.95, **NO_STOP)
    a = rt.generate(PROMPTS, seed=7, **opts)
    assert np.array_equal(a, rt.generate(PROMPTS, seed=7, **opts))
    assert not np.array_equal(a, rt.generate(PROMPTS, seed=8, **opts))
    assert not np.array_equal(a, rt.generate(PROMPTS, max_new_tokens=24, **NO_STOP))  # it really sampled


def test_top_k_and_top_p_stay_in_the_allowed_set(runtime):
    rt = runtime("dense-tied")
    for step, (tokens, logits) in enumerate(rt.stream(PROMPTS, max_new_tokens=20, top_k=4, temperature=3.0,
                                                      seed=1, output_logits=True, **NO_STOP)):
        top4 = np.argsort(-logits, axis=-1)[:, :4]
        assert all(t in row for t, row in zip(tokens, top4)), step
    picked_outside_top1 = 0
    for tokens, logits in rt.stream(PROMPTS, max_new_tokens=20, top_p=0.6, temperature=2.0, seed=2,
                                    output_logits=True, **NO_STOP):
        for tok, row in zip(tokens, logits):
            order = np.argsort(-row)
            probs = np.exp((row[order] - row[order[0]]) / 2.0)
            probs /= probs.sum()
            nucleus = order[: int(np.searchsorted(np.cumsum(probs), 0.6) + 1)]
            assert tok in nucleus
            picked_outside_top1 += tok != order[0]
    assert picked_outside_top1 > 0  # the nucleus held more than one token and sampling used it


def test_filter_logits_examples():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert np.isfinite(filter_logits(logits, top_p=0.75)).tolist() == [[True, True, False, False]]
    assert np.isfinite(filter_logits(logits, top_p=0.85)).tolist() == [[True, True, True, False]]
    assert np.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    np.testing.assert_allclose(filter_logits(logits, temperature=0.5), logits / 0.5)


def test_top_k_one_is_greedy(runtime):
    rt = runtime("moe-untied-mtp")
    greedy = rt.generate(PROMPTS, max_new_tokens=12, **NO_STOP)
    assert np.array_equal(rt.generate(PROMPTS, max_new_tokens=12, top_k=1, seed=3, **NO_STOP), greedy)


def test_stop_id_ends_the_sequence(runtime):
    rt = runtime("dense-tied")
    free = rt.generate([PROMPTS[0]], max_new_tokens=16, **NO_STOP)[0, len(PROMPTS[0]):]
    stop = int(free[3])
    first = int(np.nonzero(free == stop)[0][0])
    out = rt.generate([PROMPTS[0]], max_new_tokens=16, stop_token_ids=[stop])[0]
    assert out.tolist() == PROMPTS[0] + free[: first + 1].tolist()  # ends right after the stop id
    held = rt.generate([PROMPTS[0]], max_new_tokens=16, stop_token_ids=[stop], min_new_tokens=first + 2)[0]
    assert stop not in held[len(PROMPTS[0]): len(PROMPTS[0]) + first + 2].tolist()
    batch = rt.generate([PROMPTS[0], PROMPTS[2]], max_new_tokens=16, stop_token_ids=[stop])
    row = batch[0, len(PROMPTS[0]):]
    assert row[first] == stop and (row[first + 1:] == 0).all()  # a stopped row is padded


def test_repetition_penalty():
    logits = np.array([[2.0, -1.0, 0.5]], dtype=np.float32)
    out = apply_repetition_penalty(logits, [{0, 1}], 2.0)
    np.testing.assert_allclose(out, [[1.0, -2.0, 0.5]])


def test_repetition_penalty_in_generation(runtime):
    rt = runtime("dense-tied")
    plain = rt.generate([[5, 6, 7]], max_new_tokens=40, **NO_STOP)[0]
    assert len(set(plain.tolist())) < len(plain)  # this model repeats itself without a penalty
    out = rt.generate([[5, 6, 7]], max_new_tokens=40, repetition_penalty=1e4, **NO_STOP)[0]
    assert len(set(out.tolist())) == len(out)


def test_stream_matches_generate(runtime):
    rt = runtime("moe-tied")
    steps = list(rt.stream([PROMPTS[1]], max_new_tokens=9, **NO_STOP))
    assert [int(s[0]) for s in steps] == rt.generate([PROMPTS[1]], max_new_tokens=9, **NO_STOP)[0, 2:].tolist()


def test_generation_config_defaults(model_pair, tmp_path):
    _, pd = model_pair("dense-untied")
    folder = tmp_path / "with-genconfig"
    shutil.copytree(pd, folder)
    base = load(folder)
    free = base.generate([PROMPTS[0]], max_new_tokens=8, **NO_STOP)[0, 7:]
    (folder / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": int(free[2]), "max_new_tokens": 8, "do_sample": True, "top_k": 1, "temperature": 5.0}))
    rt = load(folder)
    out = rt.generate([PROMPTS[0]])  # greedy (no sampling option), stops at the file's eos
    first = int(np.nonzero(free == free[2])[0][0])
    assert out[0, 7:].tolist() == free[: first + 1].tolist()
    sampled = rt.generate([PROMPTS[0]], do_sample=True, seed=5, **NO_STOP)  # the file's top_k=1 applies
    assert sampled[0, 7:].tolist() == free.tolist()


def test_load_rejects_bf16_on_cpu(model_pair):
    with pytest.raises(ErnieError, match="not supported on CPU"):
        load(model_pair("dense-tied")[1], dtype="bfloat16", device="cpu")


def test_prompts_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("1, 2, 3\n\nhello world\n")
    assert read_prompts_file(tmp_path / "p.txt") == [[1, 2, 3], "hello world\n".strip()]
    (tmp_path / "p.json").write_text(json.dumps({"prompts": [[4, 5], "hi"]}))
    assert read_prompts_file(tmp_path / "p.json") == [[4, 5], "hi"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ErnieError, match="JSON"):
        read_prompts_file(tmp_path / "bad.json")


def test_generate_cli(model_pair, runtime, tmp_path):
    _, pd = model_pair("dense-tied")
    expected = runtime("dense-tied").generate(PROMPTS[:2], max_new_tokens=5, **NO_STOP)[:, 7:]
    res = run_cli("generate", pd, "--prompt-ids", "5,17,300,42,9,77,1000", "--prompt-ids", "11 12",
                  "--max-new-tokens", "5", "--stop-ids", "")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [",".join(map(str, row)) for row in expected]
    (tmp_path / "p.txt").write_text("11,12\n")
    streamed = run_cli("generate", pd, "--prompts-file", tmp_path / "p.txt", "--max-new-tokens", "5",
                       "--stop-ids", "", "--stream")
    assert streamed.returncode == 0 and streamed.stdout.split() == [str(t) for t in expected[1]]
    text = run_cli("generate", pd, "--prompt", "hello", "--max-new-tokens", "3")
    assert text.returncode == 0 and text.stdout.endswith("\n"), text.stderr  # the fixture has a tokenizer
    bare = tmp_path / "bare"
    shutil.copytree(pd, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json",
                                                             "added_tokens.json"))
    text = run_cli("generate", bare, "--prompt", "hello")
    assert text.returncode == 2 and "tokenizer" in text.stderr and "Traceback" not in text.stderr


def test_output_penalties_and_logit_bias_follow_their_definitions():
    from ernie_paddle.runtime.generation import apply_logit_bias, apply_output_penalties

    logits = np.array([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    out = apply_output_penalties(logits, [{0: 3, 1: 1}, {}], frequency=0.5, presence=0.25)
    np.testing.assert_allclose(out, [[2.0 - 1.5 - 0.25, -1.0 - 0.5 - 0.25, 0.5, 3.0], [1.0] * 4])
    biased = apply_logit_bias(logits, {3: -100.0, 1: 2.5, 99: 7.0})  # an id past the vocab is ignored
    np.testing.assert_allclose(biased, [[2.0, 1.5, 0.5, -97.0], [1.0, 3.5, 1.0, -99.0]])
    assert (logits[0] == [2.0, -1.0, 0.5, 3.0]).all()  # the input is left alone


def test_min_p_keeps_tokens_above_a_fraction_of_the_top_probability():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(np.log(probs), min_p=0.3)  # keeps p >= 0.15
    assert np.isfinite(out[0]).tolist() == [True, True, True, False]
    assert np.isfinite(filter_logits(np.log(probs), min_p=0.0)[0]).all()


def _penalised_reference(rt, prompt, n, frequency=0.0, presence=0.0, repetition=1.0, bias=None):
    """Greedy tokens from teacher-forced full-forward logits with each control applied by its definition."""
    seq, out = list(prompt), []
    for _ in range(n):
        x = rt.logits(np.array([seq]))[0, -1].astype(np.float64)
        for t in set(seq):  # HF repetition penalty over prompt and output
            x[t] = x[t] / repetition if x[t] > 0 else x[t] * repetition
        for t in set(out):  # OpenAI: count over the output only
            x[t] -= frequency * out.count(t) + presence
        for t, b in (bias or {}).items():
            x[t] += b
        out.append(int(x.argmax()))
        seq.append(out[-1])
    return out


@pytest.mark.parametrize("controls", [
    {"frequency_penalty": 1.5}, {"presence_penalty": 2.0}, {"repetition_penalty": 3.0},
    {"frequency_penalty": 0.7, "presence_penalty": 0.3, "logit_bias": {640: 6.0, 17: -50.0}},
])
def test_penalties_in_generate_match_their_definition(runtime, controls):
    rt = runtime("dense-tied")
    prompt, n = [5, 17, 300, 42], 24
    plain = rt.generate([prompt], max_new_tokens=n, **NO_STOP)[0, len(prompt):].tolist()
    got = rt.generate([prompt], max_new_tokens=n, **controls, **NO_STOP)[0, len(prompt):].tolist()
    ref = _penalised_reference(rt, prompt, n, controls.get("frequency_penalty", 0.0),
                               controls.get("presence_penalty", 0.0), controls.get("repetition_penalty", 1.0),
                               controls.get("logit_bias"))
    assert got == ref
    assert got != plain  # the control changed the output


def test_min_p_one_samples_the_greedy_tokens(runtime):
    rt = runtime("dense-tied")
    greedy = rt.generate([PROMPTS[0]], max_new_tokens=10, **NO_STOP)
    sampled = rt.generate([PROMPTS[0]], max_new_tokens=10, do_sample=True, temperature=1.5, min_p=1.0, seed=3,
                          **NO_STOP)
    assert sampled.tolist() == greedy.tolist()


def test_speculative_refuses_the_controls_it_does_not_implement(runtime):
    rt = runtime("moe-untied-mtp")
    with pytest.raises(ErnieError, match="frequency_penalty"):
        rt.generate([PROMPTS[0]], max_new_tokens=4, speculative="mtp", frequency_penalty=1.0)
