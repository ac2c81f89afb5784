"""llama.cpp's own load time for a model: the reference for the hot-swap figure.

Run as a child process (`python -m appliance.bench.bareload`) so it shares nothing with the
servers under test. It loads the model and creates a context with the appliance's own
parameters (engine/params.py: per-slot KV streams, context × parallel cells, the same batch
and flash attention), then decodes one token, since the first decode is when the GPU
allocates its compute buffers. The first load warms the page cache and the CUDA context; the
next `--repeat` loads are timed, as the appliance swaps a model it has loaded before. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ..engine.params import N_BATCH


def _once(ll: Any, path: bytes, mp: Any, cp: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    model = ll.llama_model_load_from_file(path, mp)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path.decode()}")
    t1 = time.perf_counter()
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
    p.add_argument("--batch", type=int, default=N_BATCH)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    import llama_cpp as ll

    from ..config import ModelConfig
    from ..engine import llamalog
    from ..engine.cpufeatures import extra_buffers_safe
    from ..engine.params import context_params, model_params

    llamalog.install()
    ll.llama_backend_init()
    model = Path(a.model).resolve()
    # unvalidated (the source is not read): catalog defaults but for context and parallel
    cfg = ModelConfig.model_construct(source=f"file://{model}", context=a.context, parallel=a.parallel)
    # as the appliance (and the pinned llama-server) load it
    mp = model_params(n_gpu_layers=a.gpu_layers, extra_buffers=extra_buffers_safe())
    cp = context_params(cfg, threads=a.threads, n_batch=a.batch)
    path = str(model).encode()
    _once(ll, path, mp, cp)  # page cache, CUDA context, kernels: what a swapping daemon already has
    runs = [_once(ll, path, mp, cp) for _ in range(a.repeat)]
    total = [r["total_s"] for r in runs]
    print(json.dumps({"runs": runs, "total_s_median": statistics.median(total), "total_s_min": min(total)}))


if __name__ == "__main__":
    main()
