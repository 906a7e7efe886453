"""Speculative decoding with the MTP layer: greedy identity, exact sampling law, cache rollback, wiring."""

import math
from collections import Counter

import numpy as np
import paddle
import pytest
from helpers import run_cli

from ernie_paddle.devkit.mtp_fit import damp_main_layers, fit_mtp
from ernie_paddle.errors import ErnieError
from ernie_paddle.models.kv_cache import KVCache
from ernie_paddle.runtime import speculative as spec
from ernie_paddle.runtime.generation import filter_logits

pytest_plugins = ("fixtures_models",)  # model_pair, runtime

NO_STOP = dict(stop_token_ids=[])
PROMPTS = [[5, 17, 300, 42, 9, 77, 1000], [11, 12], [400, 3, 90, 91]]


@pytest.fixture(scope="module")
def fitted(tiny_ckpts):
    """A tiny 2-layer MoE model (dense layer 0, MoE layer 1 with a shared expert and a selection bias)
    whose attention / MLP outputs are scaled by 0.1, so its next token depends mostly on the current one,
    plus an MTP layer fitted to it by least squares on greedy continuations of 32 random prompts."""
    from ernie_paddle.api import load

    rt = load(tiny_ckpts("spec-moe2", "moe", mtp=1, num_hidden_layers=2, bias_scale=0.1), device="cpu")
    damp_main_layers(rt.model, 0.1)
    seqs = rt.generate(np.random.default_rng(0).integers(3, 1024, size=(32, 4)), max_new_tokens=28, **NO_STOP)
    agreement = fit_mtp(rt.model, seqs, block_scale=0.5)
    assert agreement > 0.7  # MTP top-1 equals the main model's next-next token on the fitting data
    return rt


def _check_greedy(rt, prompts, k, new=24):
    ref = rt.generate(prompts, max_new_tokens=new, **NO_STOP)
    out, stats = spec.generate(rt.model, prompts, num_draft=k, max_new_tokens=new, **NO_STOP)
    np.testing.assert_array_equal(out, ref)
    assert stats.new_tokens == new * len(ref) and stats.drafted > 0
    assert stats.main_forwards * (k + 1) >= stats.new_tokens >= stats.main_forwards
    return stats


@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_identical_random_mtp(runtime, k):
    rt = runtime("moe-untied-mtp")
    _check_greedy(rt, PROMPTS[:1], k)
    _check_greedy(rt, PROMPTS, k)  # left-padded batch


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_identical_fitted_mtp_with_real_acceptance(fitted, k):
    prompts = np.random.default_rng(1).integers(3, 1024, size=(4, 5)).tolist()
    single = _check_greedy(fitted, prompts[:1], k, new=32)
    batch = _check_greedy(fitted, [p[: 2 + i] for i, p in enumerate(prompts)], k, new=32)
    print(f"k={k}: acceptance {batch.acceptance_rate:.3f}, {batch.tokens_per_forward:.2f} tokens/forward "
          f"(single prompt {single.acceptance_rate:.3f}, {single.tokens_per_forward:.2f})")
    assert batch.acceptance_rate > (0.6 if k == 1 else 0.45)
    assert batch.tokens_per_forward > (1.5 if k == 1 else 2.0)
    assert batch.accepted < batch.drafted  # rejections happen too: rollback is exercised


def test_greedy_identical_with_penalty_stops_and_min_tokens(fitted):
    opts = dict(max_new_tokens=20, repetition_penalty=1.3, min_new_tokens=6)
    plain = fitted.generate(PROMPTS[:2], stop_token_ids=[], **opts)
    stop = int(plain[1, 7 + 8])  # a token the second row emits after min_new_tokens: both paths stop there
    ref = fitted.generate(PROMPTS[:2], stop_token_ids=[stop], **opts)
    out = fitted.generate(PROMPTS[:2], stop_token_ids=[stop], speculative="mtp", num_draft=2, **opts)
    np.testing.assert_array_equal(out, ref)
    assert stop in out[1, 7:].tolist() and fitted.speculative_stats.accepted > 0


def _simulated_k1_counts(model, seq, prompt_len):
    """(drafted, accepted) that greedy k=1 speculation must report, from an MTP recomputed from scratch."""
    ids = paddle.to_tensor(seq[None])
    with paddle.no_grad():
        hidden = model.ernie(ids)
        draft = model.head(spec.mtp_forward(model, ids[:, 1:], hidden[:, :-1], KVCache(1))).numpy()[0]
    drafts = draft.argmax(-1)  # drafts[i] guesses seq[i + 2]
    n, emitted, total, drafted, accepted = prompt_len, 1, len(seq) - prompt_len, 0, 0
    while emitted < total:
        a = 0
        if total - emitted > 1:
            drafted += 1
            a = int(drafts[n - 1] == seq[n + 1])
        accepted += a
        emitted += min(a + 1, total - emitted)
        n += a + 1
    return drafted, accepted


def test_mtp_cache_rollback_matches_recomputation(fitted):
    prompt = [7, 300, 12, 45]
    out, stats = spec.generate(fitted.model, [prompt], num_draft=1, max_new_tokens=40, **NO_STOP)
    assert (stats.drafted, stats.accepted) == _simulated_k1_counts(fitted.model, out[0], len(prompt))
    assert 0 < stats.accepted < stats.drafted


def test_cache_primitives(fitted):
    """Truncating and hiding columns leaves both caches as if the dropped tokens never ran."""
    model = fitted.model
    seq = np.array([[9, 10, 11, 12, 3, 3]])
    with paddle.no_grad():
        ref = model(paddle.to_tensor(seq)).numpy()[:, -1]
        cache = model.new_cache(16)
        model(paddle.to_tensor([[9, 10, 11, 12], [9, 10, 11, 12]]), cache)
        model(paddle.to_tensor([[3, 3], [3, 500]]), cache)
        spec.keep_columns(cache, np.array([[True, True], [True, False]]))
        got = model(paddle.to_tensor([[77], [3]]), cache).numpy()[:, -1]
        np.testing.assert_allclose(got[1], ref[0], atol=1e-4)
        hidden = model.ernie(paddle.to_tensor(seq))
        full = spec.mtp_forward(model, paddle.to_tensor(seq[:, 1:]), hidden[:, :-1], KVCache(1)).numpy()
        mtp = KVCache(1)
        spec.mtp_forward(model, paddle.to_tensor(seq[:, 1:3]), hidden[:, :2], mtp)
        spec.mtp_forward(model, paddle.to_tensor([[999, 5]]), hidden[:, 2:4], mtp)  # a junk draft, dropped
        spec.truncate(mtp, 2)
        step = spec.mtp_forward(model, paddle.to_tensor(seq[:, 3:]), hidden[:, 2:5], mtp).numpy()
    np.testing.assert_allclose(step[0, -1], full[0, -1], atol=1e-4)


def test_mtp_input_puts_the_embedding_half_first(moe_hf):
    """linear_proj's first H input rows read emb_norm(embed(token)), the last H hidden_norm(hidden)."""
    from ernie_paddle.api import load

    model = load(moe_hf, device="cpu").model
    h = model.config.hidden_size
    weight = np.zeros((2 * h, h), dtype=np.float32)
    weight[:h] = np.eye(h)
    model.ernie.mtp_linear_proj[0].weight.set_value(weight)
    hid = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 1, h)).astype(np.float32))
    with paddle.no_grad():
        same_token = spec.mtp_forward(model, paddle.to_tensor([[5], [5]]), hid, KVCache(1)).numpy()
        other_token = spec.mtp_forward(model, paddle.to_tensor([[5], [6]]), hid, KVCache(1)).numpy()
    np.testing.assert_allclose(same_token[0], same_token[1], atol=1e-6)  # the hidden half is ignored
    assert np.abs(other_token[0] - other_token[1]).max() > 1e-2


def _exact_law(rt, prompt, depth, **sampling):
    """Probability of every reachable sequence of ``depth`` new tokens under the main model."""
    law = {(): 1.0}
    for _ in range(depth):
        prefixes = list(law)
        logits = rt.logits(np.array([prompt + list(p) for p in prefixes]))[:, -1]
        filtered = filter_logits(logits, **sampling)
        probs = np.exp(filtered - filtered.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        law = {pre + (int(t),): law[pre] * row[t] for pre, row in zip(prefixes, probs)
               for t in np.flatnonzero(row > 0)}
    return law


def _chi2_pvalue(counts: Counter, law: dict, n: int) -> float:
    """Pearson chi-square goodness of fit (bins expected < 5 pooled); Wilson-Hilferty tail probability."""
    big = {k: p for k, p in law.items() if p * n >= 5}
    rest = n - sum(counts[k] for k in big)
    obs = [counts[k] for k in big] + [rest]
    exp = [p * n for p in big.values()] + [n * (1 - sum(big.values()))]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp) if e > 0)
    df = len(big) - (0 if exp[-1] > 1e-9 else 1)
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


SAMPLING = dict(temperature=0.05, top_k=3)


def test_sampled_outputs_follow_the_main_model(fitted, monkeypatch):
    prompt, n, depth = [11, 22, 33, 44], 3000, 3
    law = _exact_law(fitted, prompt, depth, **SAMPLING)
    # 4 new tokens so the first round drafts 2: tokens 2 and 3 come from drafts or corrections
    out, stats = spec.generate(fitted.model, [prompt] * n, num_draft=2, max_new_tokens=4, seed=1234,
                               **SAMPLING, **NO_STOP)
    counts = Counter(map(tuple, out[:, len(prompt): len(prompt) + depth].tolist()))
    assert set(counts) <= set(law)
    p_value = _chi2_pvalue(counts, law, n)
    print(f"chi-square p = {p_value:.3f} over {len(law)} outcomes; acceptance {stats.acceptance_rate:.3f}")
    assert p_value > 1e-3
    assert 0.2 < stats.acceptance_rate < 0.95  # both the accept and the residual-draw paths ran
    # the same test catches a broken rule: accepting every draft gives the MTP's law, not the model's
    monkeypatch.setattr(spec, "accept_draft", lambda u, p, q: True)
    bad, _ = spec.generate(fitted.model, [prompt] * n, num_draft=2, max_new_tokens=4, seed=1234,
                           **SAMPLING, **NO_STOP)
    bad_counts = Counter(map(tuple, bad[:, len(prompt): len(prompt) + depth].tolist()))
    assert _chi2_pvalue(bad_counts, law, n) < 1e-6


def test_seeded_sampling_repeats(fitted):
    run = [fitted.generate(PROMPTS[:2], max_new_tokens=12, seed=s, speculative="mtp", num_draft=2,
                           temperature=0.05, top_k=5, **NO_STOP) for s in (3, 3, 4)]
    np.testing.assert_array_equal(run[0], run[1])
    assert not np.array_equal(run[0], run[2])


def test_api_stream_and_errors(fitted, runtime):
    ref = fitted.generate(PROMPTS, max_new_tokens=10, **NO_STOP)
    steps = list(fitted.stream(PROMPTS, max_new_tokens=10, speculative="mtp", num_draft=3, **NO_STOP))
    np.testing.assert_array_equal(np.stack(steps, 1), ref[:, 7:])
    stats = fitted.speculative_stats.as_dict()
    assert stats["new_tokens"] == 30 and 0 < stats["acceptance_rate"] <= 1
    with pytest.raises(ErnieError, match="MTP layer"):
        runtime("moe-tied").generate(PROMPTS[:1], max_new_tokens=3, speculative="mtp")
    with pytest.raises(ErnieError, match="num_draft"):
        fitted.generate(PROMPTS[:1], max_new_tokens=3, speculative="mtp", num_draft=0)
    with pytest.raises(ErnieError, match="unknown speculative"):
        fitted.generate(PROMPTS[:1], max_new_tokens=3, speculative="eagle")
    with pytest.raises(ErnieError, match="num_draft"):  # raised at the call, before iterating
        fitted.stream(PROMPTS[:1], max_new_tokens=3, speculative="mtp", num_draft=-1)
    assert fitted.generate(PROMPTS[:1], max_new_tokens=0, speculative="mtp").shape == (1, 7)


def test_generate_cli_speculative(model_pair, runtime):
    _, pd = model_pair("moe-untied-mtp")
    expected = runtime("moe-untied-mtp").generate(PROMPTS[:2], max_new_tokens=6, **NO_STOP)[:, 7:]
    res = run_cli("generate", pd, "--prompt-ids", "5,17,300,42,9,77,1000", "--prompt-ids", "11 12",
                  "--max-new-tokens", "6", "--stop-ids", "", "--speculative", "mtp", "--num-draft", "2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [",".join(map(str, row)) for row in expected]
    assert "acceptance rate" in res.stderr and "tokens per main-model forward" in res.stderr


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - (x.max(-1, keepdims=True) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)))


def test_stream_output_logits_are_the_main_models_rows(fitted):
    """Each emitted token comes with the raw target logits row it was emitted from: its log-softmax equals
    the teacher-forced one of ``runtime.logits(prompt + generated)``; the ids and the sampled law are
    unchanged by asking for them."""
    new = 12
    plain = list(spec.stream(fitted.model, PROMPTS, num_draft=2, max_new_tokens=new, **NO_STOP))
    steps = list(spec.stream(fitted.model, PROMPTS, num_draft=2, max_new_tokens=new, output_logits=True,
                             **NO_STOP))
    ids = np.stack([s[0] for s in steps], 1)
    np.testing.assert_array_equal(ids, np.stack(plain, 1))
    np.testing.assert_array_equal(ids, fitted.generate(PROMPTS, max_new_tokens=new, **NO_STOP)[:, 7:])
    for r, prompt in enumerate(PROMPTS):
        seq = np.array([prompt + ids[r].tolist()], dtype=np.int64)
        forced = _log_softmax(fitted.logits(seq)[0, len(prompt) - 1: -1])  # [new, V]
        got = _log_softmax(np.stack([s[1][r] for s in steps]))
        np.testing.assert_allclose(got, forced, atol=1e-4)
        assert (got.argmax(-1) == ids[r]).all()  # greedy: the emitted token is the top of its own row
    sampled = [list(spec.stream(fitted.model, PROMPTS[:2], num_draft=2, max_new_tokens=8, seed=7, temperature=0.7,
                                output_logits=scored, **NO_STOP)) for scored in (False, True)]
    np.testing.assert_array_equal(np.stack(sampled[0], 1), np.stack([s[0] for s in sampled[1]], 1))


def test_stream_output_logits_with_a_stop_pads_finished_rows(fitted):
    ref = fitted.generate(PROMPTS[:2], max_new_tokens=10, **NO_STOP)
    stop = int(ref[1, 7 + 3])  # the second row stops after its 4th token
    steps = list(fitted.stream(PROMPTS[:2], max_new_tokens=10, speculative="mtp", num_draft=3, output_logits=True,
                               stop_token_ids=[stop]))
    ids, rows = np.stack([s[0] for s in steps], 1), np.stack([s[1] for s in steps], 1)
    want = fitted.generate(PROMPTS[:2], max_new_tokens=10, stop_token_ids=[stop])
    np.testing.assert_array_equal(ids, want[:, 7:7 + ids.shape[1]])
    cut = ids[1].tolist().index(stop) + 1
    assert (rows[1, cut:] == 0).all() and (rows[1, :cut] != 0).any(axis=-1).all()
