"""Constrained decoding with llguidance: the tokenizer's vocabulary as the engine reads it, grammars compiled
against it, and a per-row constraint that masks one logits row and follows the tokens chosen from it.

llguidance was picked over outlines-core (xgrammar pulls triton) with ``scripts/bench_grammar_engines.py``:
per-token cost is of the same order (tens of microseconds on the demo vocabularies), but llguidance compiles
a new JSON schema in about a millisecond where outlines-core builds a regex index that grows with the
vocabulary (15 ms at 1k tokens, 56 ms at 7k), and only llguidance takes context-free grammars (Lark/GBNF,
and the forced tool call's ``%json`` inside fixed text).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("ernie_paddle.server")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPECIAL_PREFIX = b"\xff"  # llguidance's mark for a special token: its text never matches grammar bytes


class GrammarError(ValueError):
    """A grammar, schema or regex the engine cannot compile (the message says why)."""


@dataclass(frozen=True)
class Grammar:
    """What to compile: ``kind`` is "json_schema" (text is the schema as JSON), "regex", "lark", "grammar"
    (Lark or llama.cpp GBNF text) or "choice" (a JSON list of strings)."""

    kind: str
    text: str


def vocabulary_bytes(tokenizer, n_vocab: int | None = None) -> list[bytes]:
    """The bytes each token id stands for: SentencePiece pieces with ``▁`` as a space, byte-fallback
    ``<0xNN>`` pieces as that byte, special (added or control) tokens marked with ``\\xff``; ids past the
    tokenizer (padded embedding rows) are empty, so no grammar ever allows them."""
    size = max(len(tokenizer), n_vocab or 0)
    special = tokenizer.special_ids
    pieces = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    out: list[bytes] = []
    for i in range(size):
        piece = pieces[i] if i < len(pieces) else None
        if piece is None:
            out.append(b"")
        elif i in special:
            out.append(SPECIAL_PREFIX + piece.encode("utf-8"))
        elif m := _BYTE_PIECE.fullmatch(piece):
            out.append(bytes([int(m.group(1), 16)]))
        elif i in tokenizer.backend.added_by_id:  # a non-special added token is its literal text
            out.append(piece.encode("utf-8"))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


class _TokenizerView:
    """The duck-typed tokenizer ``llguidance.TokenizerWrapper`` reads."""

    def __init__(self, tokenizer, tokens: list[bytes], stop_ids: list[int]):
        self._tok = tokenizer
        self.tokens = tokens
        self.eos_token_id = stop_ids[0]
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = sorted(tokenizer.special_ids)

    def __call__(self, text):
        if not isinstance(text, str):
            raise TypeError("text only")  # tells the wrapper to pass str, not bytes
        return self._tok.encode(text, add_special_tokens=False)


def grammar_text(grammar: Grammar) -> str:
    """The llguidance grammar for ``grammar`` (not yet checked against a vocabulary)."""
    from llguidance import LLMatcher, grammar_from

    try:
        if grammar.kind == "json_schema":  # compact separators: no runs of free whitespace
            return LLMatcher.grammar_from_json_schema(grammar.text, defaults={"whitespace_flexible": False})
        return grammar_from(grammar.kind, grammar.text)
    except ValueError as exc:
        raise GrammarError(str(exc)) from exc


class GrammarEngine:
    """Compiles grammars for one tokenizer; ``stop_ids`` are the tokens a finished grammar allows (EOS).

    The llguidance tokenizer is built once, on first use (about a second for a 100k vocabulary).
    """

    def __init__(self, tokenizer, stop_ids, n_vocab: int | None = None):
        if not stop_ids:
            raise ValueError("constrained decoding needs at least one stop token id")
        self.tokenizer, self.stop_ids, self.n_vocab = tokenizer, sorted(stop_ids), n_vocab
        self._ll = None
        self._lock = threading.Lock()
        self._checked: dict[str, str] = {}

    @property
    def ll_tokenizer(self):
        with self._lock:
            if self._ll is None:
                import llguidance

                tokens = vocabulary_bytes(self.tokenizer, self.n_vocab)
                view = _TokenizerView(self.tokenizer, tokens, self.stop_ids)
                self._ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(view), n_vocab=len(tokens),
                                                  eos_token=self.stop_ids)
            return self._ll

    def compile(self, grammar: Grammar) -> str:
        """The checked grammar text; raises ``GrammarError`` with the engine's message when it is invalid."""
        from llguidance import LLMatcher

        text = grammar_text(grammar)
        if text not in self._checked:
            if len(self._checked) >= 256:  # many distinct schemas: start over rather than grow
                self._checked.clear()
            is_error, messages = LLMatcher.validate_grammar_with_warnings(text, self.ll_tokenizer)
            if is_error:
                raise GrammarError(messages[0] if messages else "invalid grammar")
            self._checked[text] = text
        return text

    def constraint(self, grammar: Grammar) -> TokenConstraint:
        """A fresh matcher for one generated sequence."""
        from llguidance import LLMatcher

        matcher = LLMatcher(self.ll_tokenizer, self.compile(grammar), log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return TokenConstraint(matcher, self.ll_tokenizer.vocab_size, self.stop_ids)


class TokenConstraint:
    """One sequence's grammar state: ``apply`` masks a logits row, ``accept`` advances by the chosen token.

    Never raises while decoding (one row must not fail its batch): should the matcher break, only the stop
    tokens stay allowed, so that sequence ends at once.
    """

    def __init__(self, matcher, vocab_size: int, stop_ids):
        self.matcher, self.vocab_size, self.stop_ids = matcher, vocab_size, list(stop_ids)

    def allowed(self) -> np.ndarray:
        """Boolean mask over the engine's vocabulary of the tokens the grammar allows next."""
        if not self.matcher.is_error():
            bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            mask = np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool)
            if mask.any():
                return mask
        log.warning("constrained decoding stopped: %s", self.matcher.get_error() or "no token allowed")
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[self.stop_ids] = True
        return mask

    def apply(self, row: np.ndarray) -> np.ndarray:
        """A copy of the 1-D logits ``row`` with every token the grammar forbids at ``-inf``."""
        allowed = self.allowed()
        out = np.full_like(row, -np.inf)
        n = min(row.shape[-1], allowed.shape[0])
        out[:n] = np.where(allowed[:n], row[:n], -np.inf)
        return out

    def accept(self, token: int) -> None:
        if not self.matcher.is_error():
            self.matcher.consume_token(int(token))  # a refused token leaves the matcher in its error state

    @property
    def finished(self) -> bool:
        """True once the grammar can take nothing more (a stop token has been accepted or is all that's left)."""
        return self.matcher.is_stopped()
