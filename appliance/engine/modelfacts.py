"""What a model can do, read from its GGUF through llama.cpp without loading its weights
(a vocab-only load: template, FIM tokens, architecture), for /v1/models/{id} and /api/show.

llama.cpp reads the header natively in milliseconds where the `gguf` package takes seconds
over a large vocabulary; still blocking, so callers run it in a thread. Kept per file
(path, size, mtime), like the vocabulary scans.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as ll

from ..store.ggufinfo import quant_name
from . import llamalog
from .fim import fim_tokens
from .vocab import Vocab

_KEPT = 64
_cache: OrderedDict[tuple[object, ...], "ModelFacts"] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    chat_template: str | None
    fim: bool
    context_train: int | None
    vocab_size: int
    parameters: int  # tensor elements (llama.cpp counts them from the header alone)
    quantization: str | None  # general.file_type's name, e.g. "Q4_K_M"


def read_model_facts(path: Path) -> ModelFacts:
    """Blocking: the facts of the GGUF at `path` (cached per file contents)."""
    key = Vocab.file_key(path)
    with _lock:
        if key in _cache:
            return _cache[key]
    llamalog.install()
    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    mp.vocab_only = True
    with llamalog.capture():
        model = ll.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise ValueError(f"llama.cpp could not read {path}")
    try:
        v = Vocab(model, key)
        arch = v.meta("general.architecture") or ""
        ctx = v.meta(f"{arch}.context_length")
        ftype = v.meta("general.file_type")
        facts = ModelFacts(arch, v.chat_template, fim_tokens(v) is not None,
                           int(ctx) if ctx and ctx.isdigit() else None, v.n_vocab,
                           int(ll.llama_model_n_params(model)),
                           quant_name(ftype) if ftype and ftype.isdigit() else None)
    finally:
        ll.llama_model_free(model)
    with _lock:
        _cache[key] = facts
        while len(_cache) > _KEPT:
            _cache.popitem(last=False)
    return facts
