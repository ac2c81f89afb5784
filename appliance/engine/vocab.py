"""Tokenizer side of a loaded model: text <-> tokens, token bytes, special tokens, metadata.

Read-only after load, so it is safe to call from the event loop or any thread while the
runner's thread decodes.
"""

from __future__ import annotations

import ctypes

import llama_cpp as ll


class Vocab:
    def __init__(self, model: ll.llama_model_p) -> None:
        self.model = model
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self.vocab)
        self.bos: int = ll.llama_vocab_bos(self.vocab)
        self.eos: int = ll.llama_vocab_eos(self.vocab)
        self.add_bos: bool = bool(ll.llama_vocab_get_add_bos(self.vocab))
        self.eog_ids: list[int] = [t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t)]
        self._eog = frozenset(self.eog_ids)
        self._pieces: dict[int, bytes] = {}

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
