"""llama.cpp's own load time for a model: the reference for the hot-swap figure.

Run as a child process (`python -m appliance.bench.bareload`) so it shares nothing with the
servers under test. It loads the model and creates a context with the settings the appliance
uses (per-slot KV streams, context × parallel cells, the same batch and flash attention), then
decodes one token, since the first decode is when the GPU allocates its compute buffers. The
first load warms the page cache and the CUDA context; the next `--repeat` loads are timed, as
the appliance swaps a model it has loaded before. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any


def _once(ll: Any, path: bytes, a: argparse.Namespace) -> dict[str, float]:
    t0 = time.perf_counter()
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = a.gpu_layers
    mp.use_extra_bufts = a.extra_buffers  # as the appliance and the pinned llama-server load
    model = ll.llama_model_load_from_file(path, mp)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path.decode()}")
    t1 = time.perf_counter()
    cp = ll.llama_context_default_params()
    cp.n_ctx = a.context * a.parallel
    cp.n_seq_max = a.parallel
    cp.kv_unified = False
    cp.n_batch = cp.n_ubatch = a.batch
    cp.n_outputs_max = a.parallel
    cp.n_threads = cp.n_threads_batch = a.threads
    cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = ll.llama_init_from_model(model, cp)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context")
    t2 = time.perf_counter()
    batch = ll.llama_batch_get_one((ll.llama_token * 1)(1), 1)
    if ll.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed")
    ll.llama_synchronize(ctx)
    t3 = time.perf_counter()
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return {"model_s": t1 - t0, "context_s": t2 - t1, "first_decode_s": t3 - t2, "total_s": t3 - t0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--parallel", type=int, default=16)
    p.add_argument("--gpu-layers", type=int, default=999)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    import llama_cpp as ll

    from ..engine import llamalog
    from ..engine.cpufeatures import extra_buffers_safe

    a.extra_buffers = extra_buffers_safe()

    llamalog.install()
    ll.llama_backend_init()
    path = a.model.encode()
    _once(ll, path, a)  # page cache, CUDA context, kernels: what a swapping daemon already has
    runs = [_once(ll, path, a) for _ in range(a.repeat)]
    total = [r["total_s"] for r in runs]
    print(json.dumps({"runs": runs, "total_s_median": statistics.median(total), "total_s_min": min(total)}))


if __name__ == "__main__":
    main()
