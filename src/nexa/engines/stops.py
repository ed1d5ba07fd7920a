"""Incremental text assembly for streamed generation: UTF-8 joins and stop strings.

Kept apart from any engine so every text engine streams the same way and it can be
tested without a model.
"""

from __future__ import annotations

import codecs


class StopMatcher:
    """Feed token bytes in; get back text that is safe to emit.

    Text that could be the start of a stop string is held back until it is clear either
    way, so a client never sees half of a stop word. Incomplete UTF-8 sequences are held
    until their last byte arrives.
    """

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]
        # Characters a held-back tail can end with (all but the last of each stop string):
        # text ending in any other cannot be the start of one, the common case per token.
        self._inner = set("".join(s[:-1] for s in self.stop))
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text (clients may ask which)

    def feed(self, piece: bytes) -> str:
        """Return the text that can be emitted now; sets `stopped` when a stop string appears."""
        self._held += self._decoder.decode(piece)
        if not self.stop:
            out, self._held = self._held, ""
            return out
        found = [(i, s) for s in self.stop if (i := self._held.find(s)) >= 0]
        if found:
            first, self.matched = min(found, key=lambda f: f[0])
            self.stopped = True
            out, self._held = self._held[:first], ""
            return out
        if self._held[-1:] not in self._inner:
            out, self._held = self._held, ""
            return out
        keep = self._longest_stop_prefix_suffix()
        cut = len(self._held) - keep
        out, self._held = self._held[:cut], self._held[cut:]
        return out

    def flush(self) -> str:
        """Everything still held, at the end of generation."""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._held)), best, -1):
                if self._held.endswith(s[:n]):
                    best = n
                    break
        return best
