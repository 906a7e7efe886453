"""Write a tiny ERNIE 4.5-style tokenizer folder (SentencePiece BPE trained here, no download)."""

import io
import json
import os
from pathlib import Path

from ernie_paddle.devkit.tokenizer_corpus import demo_corpus
from ernie_paddle.errors import ErnieError
from ernie_paddle.tokenizer.chat_template import CHAT_TEMPLATE
from ernie_paddle.tokenizer.thinking_template import THINKING_CHAT_TEMPLATE, THINKING_MARKERS

BOS = "<|begin_of_sentence|>"
EOS = "<|end_of_sentence|>"
UNK = "<unk>"
PAD = "<pad>"
SPM_MASKS = [f"<mask:{i}>" for i in range(4)]  # control pieces inside tokenizer.model
ADDED_MASKS = [f"<mask:{i}>" for i in range(4, 8)]  # appended after the SentencePiece vocab
MIN_VOCAB, MAX_VOCAB = 404, 7200
PLAIN_MARKERS = THINKING_MARKERS[2:]  # think/response/tool markers: not special, so decoded text keeps them



def train_spm(lines: list[str], vocab_size: int, coverage: float = 1.0) -> bytes:
    """Train a byte-fallback SentencePiece BPE model laid out like ERNIE's; return the serialized model."""
    import sentencepiece as spm

    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=coverage, add_dummy_prefix=False,
            remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
            unk_id=0, unk_piece=UNK, bos_id=1, bos_piece=BOS, eos_id=2, eos_piece=EOS, pad_id=3, pad_piece=PAD,
            control_symbols=SPM_MASKS, num_threads=1, minloglevel=2,
        )
    except RuntimeError as exc:
        raise ErnieError(f"cannot train a SentencePiece model with vocab_size={vocab_size}: {exc}") from exc
    return buf.getvalue()


def _added_decoder(spm_size: int, added: tuple[str, ...] = tuple(ADDED_MASKS)) -> dict[str, dict]:
    def entry(content, special=True):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": special}

    out = {str(i): entry(tok) for i, tok in enumerate([UNK, BOS, EOS, PAD, *SPM_MASKS])}
    for j, tok in enumerate(added):
        out[str(spm_size + j)] = entry(tok, special=tok not in PLAIN_MARKERS)
    return out


def tokenizer_config(spm_size: int, added: tuple[str, ...] = tuple(ADDED_MASKS),
                     chat_template: str = CHAT_TEMPLATE) -> dict:
    """The ``tokenizer_config.json`` dict for a demo tokenizer whose SentencePiece vocab has ``spm_size`` pieces
    and whose ``added`` tokens follow it."""
    return {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False, "legacy": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": UNK,
        "cls_token": BOS, "sep_token": EOS, "mask_token": "<mask:1>",
        "additional_special_tokens": [t for t in added if t not in PLAIN_MARKERS],
        "clean_up_tokenization_spaces": False, "model_max_length": 131072,
        "tokenizer_class": "LlamaTokenizer", "added_tokens_decoder": _added_decoder(spm_size, added),
        "chat_template": chat_template,
    }


def special_tokens_map(added: tuple[str, ...] = tuple(ADDED_MASKS)) -> dict:
    return {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": UNK, "cls_token": BOS,
            "sep_token": EOS, "mask_token": "<mask:1>",
            "additional_special_tokens": [t for t in added if t not in PLAIN_MARKERS]}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_demo_tokenizer(folder, vocab_size: int = 1024, seed: int = 0, thinking: bool = False,
                         extra_lines: tuple[str, ...] = ()) -> Path:
    """Write tokenizer.model + JSON files into ``folder`` so that the tokenizer has exactly ``vocab_size`` ids.

    ``thinking``: the ERNIE 4.5 Thinking layout instead: its turn/think/response/tool markers as the added
    tokens and its chat template. ``extra_lines`` join the training text (so that they tokenize compactly).
    """
    folder = Path(folder)
    added = THINKING_MARKERS if thinking else tuple(ADDED_MASKS)
    template = THINKING_CHAT_TEMPLATE if thinking else CHAT_TEMPLATE
    spm_size = vocab_size - len(added)
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ErnieError(f"demo tokenizer vocab_size must be in [{MIN_VOCAB}, {MAX_VOCAB}], got {vocab_size}")
    lines = demo_corpus(seed) + list(extra_lines)
    # Small vocabularies cannot hold every character: rare ones then go through byte fallback.
    coverage = 1.0 if vocab_size >= 600 else 0.999 if vocab_size >= 520 else 0.99
    model = train_spm(lines, spm_size, coverage)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    _write_json(folder / "tokenizer_config.json", tokenizer_config(spm_size, added, template))
    _write_json(folder / "special_tokens_map.json", special_tokens_map(added))
    _write_json(folder / "added_tokens.json", {tok: spm_size + j for j, tok in enumerate(added)})
    return folder
