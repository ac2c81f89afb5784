"""Benchmark: our Runner at 1, 4, 16 concurrent streams vs llama-cpp-python's `Llama`.

    python -m appliance.engine.bench --model PATH [--streams 1,4,16] [--tokens 64]
        [--rpc HOST:PORT --gpu-layers N]   # N layers on RPC workers (docs/cluster.md)

Both sides get the same requests (greedy, fixed length: a logit_bias of -100 on every
end-of-generation token), the same context per sequence and the same thread count; `Llama`
serves them one after another (it has no batching). Prints aggregate generated tokens/s.
Not a test: numbers depend on the machine and on whoever else is using it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from ..config import ModelConfig
from .runner import Runner
from .types import GenerationRequest, SamplingParams


def _prompts(n: int, tag: str) -> list[str]:
    return [f"Request {tag}-{i}: write a short story about the number {i * 7 + 3}." for i in range(n)]


async def _ours(runner: Runner, n: int, tokens: int, bias: dict[int, float]) -> tuple[float, int]:
    params = SamplingParams(max_tokens=tokens, temperature=0, logit_bias=bias)
    t0 = time.perf_counter()
    gens = runner.generate_batch([GenerationRequest(p, params) for p in _prompts(n, f"ours{n}")])
    done = 0
    for g in gens:
        async for _ in g:
            pass
        done += g.usage.completion_tokens
    return time.perf_counter() - t0, done


def _theirs(llm: object, n: int, tokens: int, bias: dict[int, float]) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = 0
    for p in _prompts(n, f"theirs{n}"):
        out = llm.create_completion(p, max_tokens=tokens, temperature=0.0, logit_bias=bias)  # type: ignore[attr-defined]
        done += out["usage"]["completion_tokens"]
    return time.perf_counter() - t0, done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.engine.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--context", type=int, default=512, help="context per sequence (both sides)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-llama", action="store_true", help="only measure our runner")
    ap.add_argument("--rpc", action="append", default=[], metavar="HOST:PORT",
                    help="split over this RPC worker (repeat for several)")
    ap.add_argument("--gpu-layers", type=int, default=-1, help="layers offloaded (to GPUs and workers); -1 all")
    args = ap.parse_args(argv)
    streams = [int(s) for s in args.streams.split(",") if s]

    from llama_cpp import Llama

    from .cpufeatures import match_in_llama_cpp_python

    match_in_llama_cpp_python()  # same model params for Llama as for our runner (see cpufeatures)

    cfg = ModelConfig(source=f"file://{args.model.absolute()}", context=args.context, parallel=max(streams))
    runner = Runner([args.model], cfg, model_id="bench", n_threads=args.threads, n_gpu_layers=args.gpu_layers,
                    workers=args.rpc)
    runner.warmup()
    bias = {t: -100.0 for t in runner.vocab.eog_ids}
    llm = None
    if not args.skip_llama:
        llm = Llama(model_path=str(args.model), n_ctx=args.context, n_batch=512, n_threads=args.threads,
                    n_threads_batch=args.threads, verbose=False)
        llm.create_completion("warm up", max_tokens=2, temperature=0.0)

    print(f"model {args.model.name}, {args.tokens} tokens per request, context {args.context}/sequence, "
          f"{args.threads} threads" + (f", {args.gpu_layers} layers on {', '.join(args.rpc)}" if args.rpc else ""))
    print(f"{'streams':>7} | {'runner tok/s':>12} | {'Llama seq tok/s':>15} | {'ratio':>5}")
    try:
        for n in streams:
            dt, toks = asyncio.run(_ours(runner, n, args.tokens, bias))
            ours = toks / dt
            theirs_s = ratio_s = "-"
            if llm is not None:
                dt2, toks2 = _theirs(llm, n, args.tokens, bias)
                theirs = toks2 / dt2
                theirs_s, ratio_s = f"{theirs:15.1f}", f"{ours / theirs:5.2f}"
            print(f"{n:>7} | {ours:12.1f} | {theirs_s:>15} | {ratio_s:>5}", flush=True)
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
