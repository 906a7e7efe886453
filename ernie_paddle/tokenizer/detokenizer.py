"""Incremental detokenization for streaming: text deltas that never end inside a UTF-8 character."""

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids as they are generated; ``add`` returns the new text that is safe to show.

    It decodes a short window (from the last stable token on) and holds text back while the window ends with
    U+FFFD, i.e. while a byte-fallback character is still incomplete. ``flush`` returns whatever is left, so
    the concatenation of all deltas equals ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: decoding from here is context-free
        self._read = 0  # tokens up to here are already emitted

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids) -> str:
        """Append one id or a sequence of ids; return the newly printable text ("" while waiting)."""
        try:
            self.ids.extend(int(i) for i in token_ids)
        except TypeError:  # a single id (int or numpy integer)
            self.ids.append(int(token_ids))
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) > len(before) and not now.endswith(_REPLACEMENT) and now.startswith(before):
            delta = now[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Return the held-back tail (a final incomplete byte sequence decodes to U+FFFD)."""
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        delta = now[len(before):] if now.startswith(before) else ""
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta
