"""Does a (random-weight) GGUF give finite logits on this machine's backend? Prints one line.

Random weights that are not centred overflow f16 on the GPU and every logit turns NaN: the
throughput figures stay plausible, but anything that reads the logits (a grammar) breaks.
"""

from __future__ import annotations

import sys

import llama_cpp as ll
import numpy as np

from appliance.engine.cpufeatures import extra_buffers_safe


def main(path: str) -> int:
    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = 999
    mp.use_extra_bufts = extra_buffers_safe()
    model = ll.llama_model_load_from_file(path.encode(), mp)
    cp = ll.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 64
    ctx = ll.llama_init_from_model(model, cp)
    vocab = ll.llama_model_get_vocab(model)
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    toks = list(range(100, 116))
    arr = (ll.llama_token * len(toks))(*toks)  # must outlive the decode
    batch = ll.llama_batch_get_one(arr, len(toks))
    if ll.llama_decode(ctx, batch) != 0:
        print("logits: llama_decode failed")
        return 1
    row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
    finite = bool(np.isfinite(row).all())
    print(f"logits finite: {finite}, std {float(np.nanstd(row)):.2f}")
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
