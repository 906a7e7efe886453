"""Token-level backends: SentencePiece (``tokenizer.model``) and HF ``tokenizers`` (``tokenizer.json``).

Both take the added tokens (specials, masks) as a list and give ``encode``/``decode`` with the semantics of
transformers' legacy Llama-style tokenizer: added tokens are cut out of the raw text first, the text between
them is encoded on its own, and decoding maps ``▁`` to a space and ``<0xNN>`` pieces to bytes.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from ernie_paddle.errors import ErnieError

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class AddedToken:
    """A token matched on the raw text before SentencePiece runs."""

    content: str
    id: int
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False


def _split_pattern(tokens) -> tuple[re.Pattern | None, list[AddedToken]]:
    """Longest-first alternation; group k+1 matches ``order[k]`` (with its lstrip/rstrip whitespace)."""
    order = sorted(tokens, key=lambda t: len(t.content), reverse=True)
    alts = [(r"\s*" if t.lstrip else "") + re.escape(t.content) + (r"\s*" if t.rstrip else "") for t in order]
    return (re.compile("|".join(f"({a})" for a in alts)) if alts else None), order


def _bytes_to_text(buf: bytearray) -> str:
    # Invalid runs decode like Python's errors="replace", which keeps streamed text equal to the full decode.
    return bytes(buf).decode("utf-8", errors="replace")


class SpmBackend:
    """SentencePiece encoding with added-token splitting done here (as transformers does)."""

    def __init__(self, model_path: Path, added: list[AddedToken]):
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        except (RuntimeError, OSError) as exc:
            raise ErnieError(f"not a valid SentencePiece model ({exc})", model_path) from exc
        if self.sp.get_piece_size() == 0:
            raise ErnieError("SentencePiece model has no pieces", model_path)
        n = self.sp.get_piece_size()
        by_text = {t.content: t for t in added}
        for i in range(n):  # control pieces (bos/eos/masks) are special added tokens, as in transformers
            if self.sp.is_control(i) and self.sp.id_to_piece(i) not in by_text:
                by_text[self.sp.id_to_piece(i)] = AddedToken(self.sp.id_to_piece(i), i)
        self.added_by_text = by_text
        self.added_by_id = {t.id: t for t in by_text.values()}
        self.size = max([n, *(t.id + 1 for t in by_text.values())])
        self._pattern, self._order = _split_pattern(by_text.values())

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_by_text:
            return self.added_by_text[token].id
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str | None:
        if i in self.added_by_id:
            return self.added_by_id[i].content
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def encode(self, text: str) -> list[int]:
        if self._pattern is None:
            return self.sp.encode(text)
        ids, pos = [], 0
        for m in self._pattern.finditer(text):
            if m.start() > pos:
                ids += self.sp.encode(text[pos:m.start()])
            ids.append(self._order[m.lastindex - 1].id)
            pos = m.end()
        if pos < len(text):
            ids += self.sp.encode(text[pos:])
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        parts, buf = [], bytearray()
        n = self.sp.get_piece_size()
        for i in ids:
            i = int(i)
            tok = self.added_by_id.get(i)
            if tok is not None:
                if skip_special_tokens and tok.special:
                    continue
                text = tok.content
            elif 0 <= i < n:
                piece = self.sp.id_to_piece(i)
                m = _BYTE_PIECE.fullmatch(piece) if self.sp.is_byte(i) else None
                if m:
                    buf.append(int(m.group(1), 16))
                    continue
                text = piece.replace("\u2581", " ")
            else:
                continue  # ids past the vocabulary (padded embedding rows) decode to nothing
            if buf:
                parts.append(_bytes_to_text(buf))
                buf.clear()
            parts.append(text)
        if buf:
            parts.append(_bytes_to_text(buf))
        return "".join(parts)


class HFJsonBackend:
    """A ``tokenizer.json`` run by the ``tokenizers`` library (added tokens handled by it)."""

    def __init__(self, json_path: Path, added: list[AddedToken]):
        from tokenizers import AddedToken as HFAdded
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(json_path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ErnieError(f"not a valid tokenizer.json ({exc})", json_path) from exc
        missing = [t for t in added if self.tok.token_to_id(t.content) is None]
        for t in sorted(missing, key=lambda t: t.id):
            self.tok.add_tokens([HFAdded(t.content, special=t.special, normalized=False,
                                         lstrip=t.lstrip, rstrip=t.rstrip)])
        self.size = self.tok.get_vocab_size(with_added_tokens=True)
        decoder = self.tok.get_added_tokens_decoder()
        self.added_by_id = {i: AddedToken(t.content, i, t.special) for i, t in decoder.items()}

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(int(i))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
