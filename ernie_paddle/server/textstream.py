"""Token ids -> text deltas for one choice: incremental detokenization plus stop strings.

Text that could be the start of a stop string is held back until it is known not to be one, so a stop
string never reaches the client, even split over several tokens.
"""

from __future__ import annotations


class ChoiceText:
    """Feed generated ids; get printable deltas; ``stopped`` turns true when a stop string appeared."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.detok = tokenizer.detokenizer(skip_special_tokens=True)
        self.stop = [s for s in (stop or []) if s]
        self.pending = ""
        self.text = ""
        self.stopped = False

    def feed(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.detok.add(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        self.pending += self.detok.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[:min(hits)], "", True
        elif final:
            out, self.pending = self.pending, ""
        else:
            hold = max((k for s in self.stop for k in range(1, len(s)) if self.pending.endswith(s[:k])),
                       default=0)
            out = self.pending[:len(self.pending) - hold]
            self.pending = self.pending[len(out):]
        self.text += out
        return out
