"""What sampling costs one decode step, in process (no HTTP): host sampler chains vs llama.cpp's
in-graph (backend) sampling, for N streams decoding one token each. Prints one line per case.

    python scripts/sampling_cost.py MODEL.gguf [--streams 1,16] [--steps 40] [--gpu-layers 999]

Cases: greedy; temperature 0.8 over the whole vocabulary (top_k 0); temperature 0.8 with the
defaults a request gets (top_k 40, min_p 0.05). "host": `llama_sampler_sample` on the decode
thread after the logits rows were copied back; "graph": the chain attached with
`llama_set_sampler`, the token drawn inside `llama_decode`.
"""

from __future__ import annotations

import argparse
import os
import time

import llama_cpp as ll

from appliance.engine.cpufeatures import extra_buffers_safe


def chain(case: str, seed: int) -> ll.llama_sampler_p:
    c = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    add = lambda s: ll.llama_sampler_chain_add(c, s)  # noqa: E731
    if case == "greedy":
        add(ll.llama_sampler_init_greedy())
        return c
    if case == "t0.8 k40 minp":
        add(ll.llama_sampler_init_top_k(40))
        add(ll.llama_sampler_init_min_p(0.05, 1))
    add(ll.llama_sampler_init_temp(0.8))
    add(ll.llama_sampler_init_dist(seed))
    return c


def run(model: ll.llama_model_p, n: int, case: str, graph: bool, steps: int, threads: int) -> str:
    cp = ll.llama_context_default_params()
    cp.n_ctx = 512 * n
    cp.n_seq_max = n
    cp.kv_unified = False
    cp.n_batch = cp.n_ubatch = 512
    cp.n_outputs_max = n
    cp.n_outputs_max_per_seq = 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = ll.llama_init_from_model(model, cp)
    chains = [chain(case, i) for i in range(n)]
    if graph:
        for i, c in enumerate(chains):
            if not ll.llama_set_sampler(ctx, i, c):
                return f"{case:14s} graph N={n}: refused by llama.cpp"
    b = ll.llama_batch_init(n, 0, 1)
    toks = [1] * n
    t_dec = t_smp = 0.0
    warm = 3
    for step in range(steps + warm):
        b.n_tokens = n
        for i in range(n):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = toks[i], step, 1, 1
            b.seq_id[i][0] = i
        t0 = time.perf_counter()
        if ll.llama_decode(ctx, b) != 0:
            raise SystemExit("llama_decode failed")
        t1 = time.perf_counter()
        toks = [ll.llama_sampler_sample(chains[i], ctx, i) for i in range(n)]
        t2 = time.perf_counter()
        if step >= warm:
            t_dec += t1 - t0
            t_smp += t2 - t1
    for i in range(n):
        ll.llama_set_sampler(ctx, i, None)
    for c in chains:
        ll.llama_sampler_free(c)
    ll.llama_batch_free(b)
    ll.llama_free(ctx)
    d, s = t_dec / steps * 1e3, t_smp / steps * 1e3
    return (f"{case:14s} {'graph' if graph else 'host ':5s} N={n:<3d} decode {d:7.2f} ms  sample {s:6.2f} ms  "
            f"step {d + s:7.2f} ms  ({n / (d + s) * 1e3:7.1f} tok/s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--streams", default="1,16")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--gpu-layers", type=int, default=999)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = a.gpu_layers
    mp.use_extra_bufts = extra_buffers_safe()
    model = ll.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        raise SystemExit(f"cannot load {a.model}")
    for n in (int(x) for x in a.streams.split(",")):
        for case in ("greedy", "t0.8 all vocab", "t0.8 k40 minp"):
            for graph in (False, True):
                print(run(model, n, case, graph, a.steps, a.threads), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
