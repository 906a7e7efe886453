"""Token generation over a KV cache: greedy or sampled, batched with left padding, streamed step by step.

Greedy unless the caller asks for sampling (``do_sample=True`` or any of temperature / top_k / top_p /
min_p); missing sampling values then come from ``generation_config.json``. Stop ids default to the file's
(or the model config's) ``eos_token_id``; ``stop_token_ids=[]`` disables stopping.

Before each pick the logits go through, in order: ``repetition_penalty`` (HF: positive logits of tokens in
the prompt or the output divided by it, negative ones multiplied), ``frequency_penalty`` and
``presence_penalty`` (OpenAI: ``logit[t] -= frequency * count[t] + presence * (count[t] > 0)``, counts over
the generated tokens), ``logit_bias`` (added), the min-new-tokens ban on stop ids; sampling then applies
temperature, ``min_p`` (drop tokens whose probability is under ``min_p`` times the top one), top-k, top-p.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import paddle

from ernie_paddle.errors import ErnieError

_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p")
_PENALTY_KEYS = ("repetition_penalty", "frequency_penalty", "presence_penalty")


@dataclass(kw_only=True)
class LogitControls:
    """What changes a logits row before the pick (the order is the module docstring's), plus ``min_p``."""

    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit

    def controls(self) -> dict:
        """These fields as keyword arguments (for ``Options`` or the runtime's ``stream``)."""
        return {f.name: getattr(self, f.name) for f in fields(LogitControls)}


@dataclass(kw_only=True)
class Options(LogitControls):
    """Resolved generation options."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    seed: int | None = None


def read_generation_config(folder: str | Path) -> dict:
    """The folder's ``generation_config.json`` as a dict ({} when absent)."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ErnieError(f"generation_config.json is not valid JSON: {exc}", path) from None
    return data if isinstance(data, dict) else {}


def read_prompts_file(path) -> list[list[int] | str]:
    """Prompts from a file: JSON (a list of id lists or strings, or {"prompts": [...]}) or text lines.

    A text line made only of integers (split by commas or spaces) is a token-id prompt; any other line is
    text, which needs a tokenizer.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ErnieError(f"cannot read prompts file: {exc.strerror}", path) from None
    except UnicodeDecodeError:
        raise ErnieError("prompts file is not UTF-8 text", path) from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            items = data["prompts"] if isinstance(data, dict) else data
            prompts = [p if isinstance(p, str) else [int(t) for t in p] for p in items]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ErnieError('expected a JSON list of prompts (id lists or strings) or {"prompts": [...]}',
                             path) from None
    else:
        prompts = [_line_prompt(line) for line in text.splitlines() if line.strip()]
    if not prompts or not all(prompts):
        raise ErnieError("the prompts file holds no prompts (or an empty one)", path)
    return prompts


def _line_prompt(line: str) -> list[int] | str:
    parts = line.replace(",", " ").split()
    return [int(p) for p in parts] if all(p.lstrip("-").isdigit() for p in parts) else line


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list | tuple) else [value]))


def resolve_options(defaults: dict, model_config=None, **kwargs) -> Options:
    """Merge caller options over ``generation_config.json`` values and model-config token ids."""
    unknown = set(kwargs) - set(Options.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation option(s): {sorted(unknown)}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    wants_sampling = given.get("do_sample", any(k in given for k in _SAMPLING_KEYS))
    opts = Options(do_sample=bool(wants_sampling))
    if "max_new_tokens" in defaults:
        opts.max_new_tokens = int(defaults["max_new_tokens"])
    if opts.do_sample:
        for key in (*_SAMPLING_KEYS, *_PENALTY_KEYS):
            if defaults.get(key) is not None:
                setattr(opts, key, type(getattr(opts, key))(defaults[key]))
    eos = defaults.get("eos_token_id", getattr(model_config, "eos_token_id", None))
    opts.stop_token_ids = _ids(eos)
    pad = defaults.get("pad_token_id", getattr(model_config, "pad_token_id", None))
    opts.pad_token_id = int(pad) if pad is not None else 0
    for key, value in given.items():
        setattr(opts, key, _ids(value) if key == "stop_token_ids" else value)
    if opts.do_sample and opts.temperature <= 0:
        opts.do_sample = False
    if opts.max_new_tokens < 0 or opts.min_new_tokens < 0 or opts.top_k < 0:
        raise ErnieError("max_new_tokens, min_new_tokens and top_k must be >= 0")
    if not 0.0 < opts.top_p <= 1.0 or opts.repetition_penalty <= 0 or not 0.0 <= opts.min_p <= 1.0:
        raise ErnieError("top_p must be in (0, 1], min_p in [0, 1] and repetition_penalty > 0")
    opts.logit_bias = {int(t): float(b) for t, b in (opts.logit_bias or {}).items()} or None
    return opts


def penalties_in_use(opts: Options) -> list[str]:
    """Names of the output-history controls ``opts`` turns on beyond repetition_penalty (for engines that
    implement only that one)."""
    return [name for name, on in (("frequency_penalty", opts.frequency_penalty != 0),
                                  ("presence_penalty", opts.presence_penalty != 0),
                                  ("logit_bias", bool(opts.logit_bias)), ("min_p", opts.min_p > 0)) if on]


def pad_batch(prompts, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad a list of token-id sequences (or an int array [B, T]) -> (ids int64, mask int64)."""
    if isinstance(prompts, paddle.Tensor):
        prompts = prompts.numpy()
    if isinstance(prompts, np.ndarray):
        arr = prompts.reshape(1, -1) if prompts.ndim == 1 else prompts
        return arr.astype(np.int64), np.ones(arr.shape, dtype=np.int64)
    if len(prompts) and not isinstance(prompts[0], Sequence | np.ndarray):
        prompts = [prompts]
    seqs = [list(map(int, p)) for p in prompts]
    if not seqs or not all(seqs):
        raise ErnieError("every prompt needs at least one token id")
    width = max(map(len, seqs))
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return ids, mask


def filter_logits(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
    """Scale by temperature and set tokens outside the min-p / top-k / top-p (nucleus) sets to -inf; rows
    [B, V]. min-p keeps tokens with probability >= ``min_p`` times the most likely one's."""
    out = logits.astype(np.float64) / max(temperature, 1e-6)
    if min_p > 0.0:
        top = out.max(axis=-1, keepdims=True)
        out = np.where(out < top + np.log(min_p), -np.inf, out)
    if 0 < top_k < out.shape[-1]:
        kth = np.partition(out, -top_k, axis=-1)[:, -top_k][:, None]
        out = np.where(out < kth, -np.inf, out)
    if top_p < 1.0:
        order = np.argsort(-out, axis=-1, kind="stable")
        sorted_logits = np.take_along_axis(out, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        before = np.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        out = np.where(drop, -np.inf, out)
    return out


class TokenHistory:
    """One row's tokens: ``seen`` holds the prompt's and the output's (for repetition_penalty), ``counts``
    the output's only (for the frequency and presence penalties)."""

    def __init__(self, prompt=()):
        self.seen: set[int] = {int(t) for t in prompt}
        self.counts: dict[int, int] = {}

    def add(self, token: int) -> None:
        self.seen.add(token)
        self.counts[token] = self.counts.get(token, 0) + 1


def apply_repetition_penalty(logits: np.ndarray, history: list[set[int]], penalty: float) -> np.ndarray:
    """Divide positive (multiply negative) logits of already-seen tokens by ``penalty``."""
    if penalty == 1.0:
        return logits
    logits = logits.copy()
    for row, seen in enumerate(history):
        if seen:
            idx = np.fromiter(seen, dtype=np.int64)
            vals = logits[row, idx]
            logits[row, idx] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def apply_output_penalties(logits: np.ndarray, counts: list[dict[int, int]], frequency: float,
                           presence: float) -> np.ndarray:
    """OpenAI's penalties: ``logit[t] -= frequency * count[t] + presence * (count[t] > 0)`` per row."""
    if frequency == 0 and presence == 0:
        return logits
    logits = logits.copy()
    for row, count in enumerate(counts):
        if count:
            idx = np.fromiter(count.keys(), dtype=np.int64, count=len(count))
            n = np.fromiter(count.values(), dtype=np.float64, count=len(count))
            logits[row, idx] -= frequency * n + presence
    return logits


def apply_logit_bias(logits: np.ndarray, bias: dict[int, float] | None) -> np.ndarray:
    """Add ``bias[t]`` to every row's logit of token ``t`` (ids past the logits' width are ignored)."""
    if not bias:
        return logits
    logits = logits.copy()
    idx = [t for t in bias if 0 <= t < logits.shape[-1]]
    logits[:, idx] += np.array([bias[t] for t in idx], dtype=logits.dtype)
    return logits


def adjust_logits(logits: np.ndarray, opts: Options, history: list[TokenHistory], step: int) -> np.ndarray:
    """Everything applied to logits [B, V] before the pick (see the module docstring), greedy or not."""
    logits = apply_repetition_penalty(logits, [h.seen for h in history], opts.repetition_penalty)
    logits = apply_output_penalties(logits, [h.counts for h in history], opts.frequency_penalty,
                                    opts.presence_penalty)
    logits = apply_logit_bias(logits, opts.logit_bias)
    if step < opts.min_new_tokens and opts.stop_token_ids:
        logits = logits.copy()
        logits[:, [t for t in opts.stop_token_ids if t < logits.shape[-1]]] = -np.inf
    return logits


def choose_next(logits: np.ndarray, opts: Options, rng: np.random.Generator, history: list[TokenHistory],
                step: int) -> np.ndarray:
    """Next token per row from float32 logits [B, V]."""
    logits = adjust_logits(logits, opts, history, step)
    if not opts.do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    filtered = filter_logits(logits, opts.temperature, opts.top_k, opts.top_p, opts.min_p)
    probs = np.exp(filtered - filtered.max(axis=-1, keepdims=True))
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(len(cdf)) * cdf[:, -1]
    picks = np.array([np.searchsorted(c, x, side="right") for c, x in zip(cdf, u)], dtype=np.int64)
    return np.minimum(picks, logits.shape[-1] - 1)


def stream(model, prompts, attention_mask=None, output_logits: bool = False, defaults: dict | None = None,
           **options) -> Iterator:
    """Yield the next token ids [B] step by step (with ``output_logits``: (ids, logits [B, V]) pairs).

    ``model`` is an ``ErnieForCausalLM``; rows that already stopped yield the pad id.
    """
    opts = resolve_options(defaults or {}, model.config, **options)
    ids, mask = pad_batch(prompts, opts.pad_token_id)
    if attention_mask is not None:
        mask = np.asarray(attention_mask.numpy() if isinstance(attention_mask, paddle.Tensor)
                          else attention_mask, dtype=np.int64).reshape(ids.shape)
    if opts.max_new_tokens == 0:
        return
    rng = np.random.default_rng(opts.seed)
    history = [TokenHistory(row[m > 0].tolist()) for row, m in zip(ids, mask)]
    finished = np.zeros(len(ids), dtype=bool)
    stops = np.array(opts.stop_token_ids, dtype=np.int64)
    cache = model.new_cache(ids.shape[1] + opts.max_new_tokens)
    with paddle.no_grad():
        step_mask = None if mask.all() else paddle.to_tensor(mask)
        logits = model(paddle.to_tensor(ids), cache, step_mask, last_only=True)[:, -1].numpy()
        for step in range(opts.max_new_tokens):
            nxt = choose_next(logits, opts, rng, history, step)
            nxt[finished] = opts.pad_token_id
            yield (nxt, logits) if output_logits else nxt
            for row, tok in enumerate(nxt.tolist()):
                history[row].add(tok)
            finished |= np.isin(nxt, stops)
            if finished.all() or step == opts.max_new_tokens - 1:
                return
            logits = model(paddle.to_tensor(nxt[:, None]), cache, last_only=True)[:, -1].numpy()


def generate(model, prompts, attention_mask=None, defaults: dict | None = None, **options) -> np.ndarray:
    """Prompt plus new ids, int64 [B, T + n] (n <= max_new_tokens; shorter when every row stopped)."""
    ids, _ = pad_batch(prompts, resolve_options(defaults or {}, model.config, **options).pad_token_id)
    steps = [tok[:, None] for tok in stream(model, prompts, attention_mask, defaults=defaults, **options)]
    return np.concatenate([ids, *steps], axis=1) if steps else ids
