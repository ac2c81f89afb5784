"""Fill-in-the-middle prompts: code before and after the cursor -> the token sequence a FIM
model was trained on (prefix-suffix-middle, as llama-server's /infill builds it).

Only vocabularies that name FIM tokens (Qwen2.5-Coder, CodeLlama, StarCoder2, Codestral,
DeepSeek-Coder …) can do it; any other model gets a clear 400 rather than a prompt it would
continue as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import llama_cpp as ll

from ..errors import InvalidRequest
from .vocab import Vocab


@dataclass(frozen=True)
class FimTokens:
    pre: int
    suf: int
    mid: int
    sep: int | None  # separates extra files of a repository-level prompt


def fim_tokens(vocab: Vocab) -> FimTokens | None:
    """The vocabulary's FIM tokens, or None when it has no prefix/suffix/middle triple."""
    v = vocab.vocab
    pre, suf, mid = ll.llama_vocab_fim_pre(v), ll.llama_vocab_fim_suf(v), ll.llama_vocab_fim_mid(v)
    if min(pre, suf, mid) < 0:
        return None
    sep = ll.llama_vocab_fim_sep(v)
    return FimTokens(pre, suf, mid, sep if sep >= 0 else None)


def fim_prompt(vocab: Vocab, model_id: str, prefix: str, suffix: str, middle: str = "",
               extra: Sequence[tuple[str, str]] = (), param: str = "suffix") -> list[int]:
    """[BOS] [extra files] PRE prefix SUF suffix MID middle, as token ids. `extra` is
    (filename, text) pairs of other files for context, each after a FIM separator."""
    t = fim_tokens(vocab)
    if t is None:
        raise InvalidRequest(f"the model {model_id!r} has no fill-in-the-middle tokens in its vocabulary; "
                             "use a code model with FIM (Qwen2.5-Coder, CodeLlama, StarCoder2, Codestral …)",
                             param=param)

    def tok(text: str) -> list[int]:
        return vocab.tokenize(text, False, False) if text else []

    out: list[int] = [vocab.bos] if vocab.add_bos and vocab.bos >= 0 else []
    if extra:
        if t.sep is None:
            raise InvalidRequest(f"the model {model_id!r} has no FIM file separator token for extra files",
                                 param="input_extra")
        for name, text in extra:
            out += [t.sep] + tok(f"{name}\n{text}")
        out += [t.sep]
    return out + [t.pre] + tok(prefix) + [t.suf] + tok(suffix) + [t.mid] + tok(middle)
