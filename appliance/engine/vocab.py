"""Tokenizer side of a loaded model: text <-> tokens, token bytes, special tokens, metadata.

Read-only after load, so it is safe to call from the event loop or any thread while the
runner's thread decodes.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from pathlib import Path

import llama_cpp as ll


def _byte_level_chars() -> frozenset[str]:
    """The 256 characters byte-level BPE vocabularies write bytes as (GPT-2's mapping)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [256 + i for i in range(256 - len(keep))]
    return frozenset(map(chr, keep + extra))


_BYTE_CHARS = _byte_level_chars()

# Whole-vocabulary scans cost ~2 us per token through ctypes (0.5 s on Gemma's 262k tokens),
# which a hot swap would pay on every load: they are kept per model file (path, size, mtime).
_SCANS: OrderedDict[tuple[object, ...], tuple[list[int], int | None]] = OrderedDict()
_SCANS_KEPT = 32


class Vocab:
    def __init__(self, model: ll.llama_model_p, file_key: tuple[object, ...] | None = None) -> None:
        self.model = model
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self.vocab)
        self.bos: int = ll.llama_vocab_bos(self.vocab)
        self.eos: int = ll.llama_vocab_eos(self.vocab)
        self.add_bos: bool = bool(ll.llama_vocab_get_add_bos(self.vocab))
        scan = _SCANS.get(file_key) if file_key is not None else None
        if scan is None:
            scan = ([t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t)],
                    self._max_chars_per_token())
            if file_key is not None:
                _SCANS[file_key] = scan
                while len(_SCANS) > _SCANS_KEPT:
                    _SCANS.popitem(last=False)
        self.eog_ids: list[int] = list(scan[0])
        self.max_chars_per_token: int | None = scan[1]
        self._eog = frozenset(self.eog_ids)
        self._pieces: dict[int, bytes] = {}

    @staticmethod
    def file_key(path: Path) -> tuple[object, ...]:
        """Identifies a model file's contents for the scan cache: a changed file is scanned again."""
        st = path.stat()
        return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)

    def _max_chars_per_token(self) -> int | None:
        """At most how many characters of a prompt one token can stand for, or None when
        unknown. Lets the engine refuse a prompt that cannot fit before tokenizing it.

        Why this bounds it: SPM and byte-level BPE never drop input (SPM falls back to byte
        tokens or fails; BPE with all 256 byte tokens always has one), and a token covers at
        most as many characters as its vocabulary text has bytes (SPM writes a space as one
        '▁'; BPE writes each input byte as one character; '<0xNN>' covers one byte; a special
        token parsed from the prompt covers exactly its text). So a prompt of T tokens has at
        most T * max(len(text bytes)) characters. WPM/UGM vocabularies drop or normalise
        whitespace (many characters, no token): no bound, hence None."""
        kind = ll.llama_vocab_type(self.vocab)
        if kind not in (ll.LLAMA_VOCAB_TYPE_SPM, ll.LLAMA_VOCAB_TYPE_BPE):
            return None
        longest, single = 1, set()
        for t in range(self.n_vocab):
            text = ll.llama_vocab_get_text(self.vocab, t) or b""
            longest = max(longest, len(text))
            if kind == ll.LLAMA_VOCAB_TYPE_BPE and len(text) <= 2:
                single.add(text.decode("utf-8", errors="replace"))
        if kind == ll.LLAMA_VOCAB_TYPE_BPE and not _BYTE_CHARS <= single:
            return None  # llama.cpp drops bytes it has no token for: no bound
        return longest

    # --- metadata ----------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = ll.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            ll.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def chat_template(self) -> str | None:
        raw = ll.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    @property
    def tool_use_template(self) -> str | None:
        """The GGUF's `tokenizer.chat_template.tool_use` variant (Hermes, Command R), if any."""
        raw = ll.llama_model_chat_template(self.model, b"tool_use")
        return raw.decode("utf-8", errors="replace") if raw else None

    def token_text(self, tok: int) -> str:
        """The vocabulary's text of a token (e.g. '<s>'), for templates' bos_token/eos_token."""
        if tok < 0 or tok >= self.n_vocab:
            return ""
        raw = ll.llama_vocab_get_text(self.vocab, tok)
        return raw.decode("utf-8", errors="replace") if raw else ""

    # --- tokens --------------------------------------------------------------------------

    def is_eog(self, tok: int) -> bool:
        return tok in self._eog

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, tok: int) -> bytes:
        """The bytes a generated token contributes to the output (special tokens: none)."""
        p = self._pieces.get(tok)
        if p is None:
            p = self._piece(tok, special=False)
            self._pieces[tok] = p
        return p

    def special_ids(self, texts: tuple[str, ...]) -> frozenset[int]:
        """The tokens of these texts that are single special tokens (whose text `piece` hides)."""
        out = set()
        for t in texts:
            toks = self.tokenize(t, add_special=False, parse_special=True)
            if len(toks) == 1 and self._piece(toks[0], special=False) != t.encode():
                out.add(toks[0])
        return frozenset(out)

    def special_piece(self, tok: int) -> bytes:
        """A special token's own text (for markers a parser must see, e.g. `[TOOL_CALLS]`)."""
        return self._piece(tok, special=True)

    def _piece(self, tok: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        if not tokens:
            return ""
        arr = (ll.llama_token * len(tokens))(*tokens)
        cap = len(tokens) * 8 + 16
        buf = ctypes.create_string_buffer(cap)
        n = ll.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, not special, special)
        if n < 0:
            cap = -n
            buf = ctypes.create_string_buffer(cap)
            n = ll.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, not special, special)
        return buf.raw[:n].decode("utf-8", errors="replace")
