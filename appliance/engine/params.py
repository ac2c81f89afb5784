"""One mapping from a catalog entry to llama.cpp's model and context parameters.

The runner creates its context with `context_params()`, the estimator sizes buffers from
the same `context_shape()`, its tests load contexts through the Runner, and the benchmark's
bare-load reference (bench/bareload.py) uses the same functions: a changed setting changes
all of them at once.

Generation: `n_ctx = context x parallel` with one KV stream per slot (`kv_unified = false`;
llama.cpp pads each slot's share up to a multiple of 256), `n_batch = n_ubatch = 512`, one
logits row per slot (`n_outputs_max = parallel`: it cut Gemma 270M's compute buffer from
514 to 20 MiB). Embeddings: every token is an output, and each input must sit whole in one
micro-batch: `n_batch = n_ubatch = max(context, 32)` and a unified KV cache (per-slot
streams split a batch into equal-length micro-batches: the longer input's vector came out
wrong).

`context_shape` is pure and imports no llama.cpp (the scheduler uses it before any load);
the functions that build llama.cpp's structs import it when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence, cast

from ..config import ModelConfig

if TYPE_CHECKING:
    import llama_cpp as ll

N_BATCH = 512  # tokens per decode and per micro-batch (llama.cpp's default micro-batch)
MIN_EMBED_BATCH = 32
SplitMode = Literal["none", "layer"]
SPLIT_MODES: tuple[SplitMode, ...] = ("none", "layer")


@dataclass(frozen=True)
class ContextShape:
    """The sizes of a context for one catalog entry (what the memory estimate depends on)."""

    n_ctx: int  # KV cells asked for, all slots together (before llama.cpp's padding)
    n_seq_max: int
    n_batch: int
    n_ubatch: int
    n_outputs_max: int  # 0: every token may be an output (embeddings)
    kv_unified: bool
    embeddings: bool
    kv_cache_type: str


def context_shape(cfg: ModelConfig, n_batch: int = N_BATCH) -> ContextShape:
    if cfg.embedding:
        batch = max(cfg.context, MIN_EMBED_BATCH)
        return ContextShape(cfg.context * cfg.parallel, cfg.parallel, batch, batch, 0, True, True, cfg.kv_cache_type)
    return ContextShape(cfg.context * cfg.parallel, cfg.parallel, n_batch, n_batch, cfg.parallel, False, False,
                        cfg.kv_cache_type)


def context_params(cfg: ModelConfig, *, threads: int, n_batch: int = N_BATCH,
                   declares_pooling: bool = False) -> ll.llama_context_params:
    """llama.cpp's context parameters for `cfg`. `declares_pooling`: the GGUF names its
    pooling type (embeddings use it; otherwise mean pooling)."""
    import llama_cpp as ll

    shape = context_shape(cfg, n_batch)
    cp = ll.llama_context_default_params()
    cp.n_ctx = shape.n_ctx
    cp.n_seq_max = shape.n_seq_max
    cp.kv_unified = shape.kv_unified
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_AUTO
    cp.type_k = cp.type_v = _kv_type(shape.kv_cache_type)
    cp.n_batch = cp.n_ubatch = shape.n_batch
    cp.n_outputs_max = shape.n_outputs_max
    if shape.embeddings:
        cp.n_outputs_max_per_seq = 0
        cp.embeddings = True
        cp.pooling_type = ll.LLAMA_POOLING_TYPE_UNSPECIFIED if declares_pooling else ll.LLAMA_POOLING_TYPE_MEAN
    else:
        cp.n_outputs_max_per_seq = 1  # one row per sequence a step: the bound of in-graph sampling
    return cast("ll.llama_context_params", cp)


def model_params(*, n_gpu_layers: int, main_gpu: int = 0, split_mode: str = "none",
                 extra_buffers: bool, workers: Sequence[str] = ()) -> ll.llama_model_params:
    """llama.cpp's model parameters: layers offloaded, GPU(s), and whether the CPU's extra
    buffer types (repacking, AMX) are used (cpufeatures.extra_buffers_safe()).

    `workers` (RPC `host:port`s): the offloaded layers are split by free memory over the
    workers' devices and the local GPUs, workers first (llama.cpp's own order: fewer
    transfers); what is not offloaded stays on the CPU. Raises WorkerUnreachable first.
    """
    import llama_cpp as ll

    if split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode must be one of {sorted(SPLIT_MODES)}")
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = n_gpu_layers
    mp.main_gpu = main_gpu
    mp.split_mode = ll.LLAMA_SPLIT_MODE_NONE if split_mode == "none" else ll.LLAMA_SPLIT_MODE_LAYER
    mp.use_extra_bufts = extra_buffers
    if workers:
        _split_over_workers(mp, workers)
    return cast("ll.llama_model_params", mp)


def _split_over_workers(mp: ll.llama_model_params, workers: Sequence[str]) -> None:
    import ctypes

    import llama_cpp as ll

    from ..hardware.rpc import local_gpu_handles, remote_devices

    devs = [(d.handle, d.free) for d in remote_devices(list(workers))] + local_gpu_handles()
    device_list = (ctypes.c_void_p * (len(devs) + 1))(*[h for h, _ in devs], None)
    split = (ctypes.c_float * max(len(devs), ll.llama_max_devices()))(*[float(max(f, 1)) for _, f in devs])
    mp.devices = ctypes.cast(device_list, ctypes.c_void_p).value  # type: ignore[assignment]  # a c_void_p field
    mp.tensor_split = split
    mp.split_mode = ll.LLAMA_SPLIT_MODE_LAYER
    mp.main_gpu = 0
    mp._rpc_keep = (device_list, split)  # C reads them during the load: alive as long as `mp`


def _kv_type(name: str) -> int:
    import llama_cpp as ll

    types = {"f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}
    return int(types[name])
