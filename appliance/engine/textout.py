"""Turning token bytes into streamable text.

Tokens are byte strings: an emoji may arrive as four single-byte tokens, and a stop string
may span two tokens. A stream must only ever carry whole characters and must never carry a
piece of text that later turns out to be the start of a stop string. `TextStream` holds
back exactly that much and no more.
"""

from __future__ import annotations

import codecs


class TextStream:
    """Incremental decoder for one choice: feed token bytes, get text that is safe to send."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""  # decoded text not yet sent (could start a stop string)
        self.stopped = False  # a stop string was found; nothing more will be emitted
        self.stop_hit: str | None = None

    def feed(self, data: bytes) -> str:
        """Add one token's bytes; return the text that can be sent now."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        return self._release(final=False)

    def flush(self) -> str:
        """End of generation: send what is held (incomplete bytes become U+FFFD)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self._held
        if not self._stop:
            self._held = ""
            return text
        cut = -1
        for s in self._stop:
            i = text.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut, self.stop_hit = i, s
        if cut != -1:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0 if final else self._partial_stop_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
