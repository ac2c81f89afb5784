"""A model's memory need before it is loaded, from its GGUF header and its catalog settings.

need = offloaded weights + KV cache + compute buffers, following how llama.cpp places them:
- weights: llama.cpp offloads the LAST `n_gpu_layers` layers, counting the output layer
  (output projection + norm) as layer n_layer, so one offloaded "layer" is the output and
  token embeddings always stay in RAM. On the CPU device everything is in RAM.
- KV cache: n_ctx = context x parallel cells (each slot's context padded up to a multiple of
  256, as llama.cpp does; the whole unified cache of an embedding model padded once), per
  offloaded layer n_embd_k_gqa + n_embd_v_gqa elements of the cache type; sliding-window
  layers keep a full cache (llama.cpp's default swa_full = true).
- compute buffers: the worst-case prompt graph (n_ubatch tokens, n_outputs_max outputs);
  a linear model of the graph's largest live tensors, calibrated against the sizes
  llama.cpp logs (tests/test_estimate.py keeps it within 15%).
After a real load the scheduler measures the footprint and prefers that (footprints.py).
The header facts come from the store's reader (store/ggufinfo.py); the context's sizes from
the engine's own mapping (engine/params.py's `context_shape`, which the runner creates its
context with); this module is the math.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

from ..config import ModelConfig
from ..engine.params import context_shape
from ..hardware.devices import DeviceKind
from ..store.ggufinfo import GGUFInfo, read_gguf_info
from ..store.ggufmeta import read_meta

# bytes per element of the KV cache types (ggml block sizes: q8_0 34 B / 32, q4_0 18 B / 32)
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
CTX_PAD = 256
MiB = 1024 * 1024


@dataclass(frozen=True)
class Estimate:
    weights: int  # on the device
    kv: int
    compute: int
    mapped: int = 0  # of `weights`, bytes memory-mapped from the file (RAM device only)

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute

    def plus(self, o: "Estimate") -> "Estimate":
        return Estimate(self.weights + o.weights, self.kv + o.kv, self.compute + o.compute, self.mapped + o.mapped)


class Estimator(Protocol):
    def layer_count(self, paths: Sequence[Path]) -> int:
        """Offloadable layers, output included: n_gpu_layers for "all" (n_layer + 1)."""
        ...

    def estimate(self, paths: Sequence[Path], cfg: ModelConfig, *, gpu_layers: int, device: DeviceKind) -> Estimate:
        """Need on one device with `gpu_layers` of `layer_count()` offloaded (ignored on "cpu")."""
        ...


def slot_context(context: int) -> int:
    return -(-context // CTX_PAD) * CTX_PAD


def kv_cells(cfg: ModelConfig) -> int:
    """KV cells llama.cpp allocates: per-slot streams are padded one by one, a unified cache once."""
    shape = context_shape(cfg)
    if shape.kv_unified:
        return slot_context(shape.n_ctx)
    return slot_context(cfg.context) * cfg.parallel


def attended_cells(cfg: ModelConfig) -> int:
    """KV cells one token attends over: its slot's stream, or the whole unified cache."""
    return kv_cells(cfg) if context_shape(cfg).kv_unified else slot_context(cfg.context)


def kv_bytes(info: GGUFInfo, cfg: ModelConfig, layers: Sequence[int]) -> int:
    per_elem = KV_BYTES[cfg.kv_cache_type]
    cells = kv_cells(cfg)
    elems = sum(info.n_embd_k_gqa(i) + info.n_embd_v_gqa(i) for i in layers)
    return int(cells * elems * per_elem)


def compute_bytes(info: GGUFInfo, cfg: ModelConfig) -> int:
    """Worst-case graph memory (the prompt micro-batch) plus the host output buffer.

    ggml's allocator reuses memory, so the peak is the larger of the per-layer live
    activations (FFN gate/up [n_ff, n_tokens] plus a handful of [n_embd, n_tokens] rows:
    measured 2 n_ff + 8 n_embd floats per token) and the logits of the outputs
    [n_vocab, n_outputs]. Added to it: the attention mask, f16, one slot's context per
    token, twice for models with sliding-window layers (a second mask). n_outputs is the
    context's n_outputs_max (`parallel` for generation) or the whole micro-batch for
    embeddings. The output buffer holds `parallel` logits rows in RAM.
    """
    f32 = 4
    shape = context_shape(cfg)
    n_tokens = min(shape.n_ubatch, kv_cells(cfg))
    n_outputs = shape.n_outputs_max or n_tokens
    n_embd, n_vocab = info.embedding, info.vocab_size
    acts = n_tokens * (2 * info.feed_forward + 8 * n_embd) * f32
    logits = n_vocab * n_outputs * f32 + 2 * n_tokens * n_embd * f32
    masks = 2 if info.sliding_window else 1
    mask = masks * n_tokens * attended_cells(cfg) * 2
    output = (n_vocab + (n_embd if cfg.embedding else 0)) * cfg.parallel * f32
    return int(max(acts, logits) + mask + output)


def output_layer_bytes(info: GGUFInfo) -> int:
    """The output projection on the device: token_embd's size when tied (llama.cpp then
    loads a second copy of it for the output layer; the input copy stays in RAM)."""
    return info.token_embd_bytes if info.output_tied else info.output_bytes


def weights_on_device(info: GGUFInfo, gpu_layers: int) -> int:
    """Bytes of the last `gpu_layers` layers (the output layer first) that llama.cpp offloads."""
    if gpu_layers <= 0:
        return 0
    out = output_layer_bytes(info) + info.other_bytes
    k = min(gpu_layers - 1, info.layers)
    return out + sum(info.layer_bytes[info.layers - k : info.layers])


def header(paths: Sequence[Path | str]) -> GGUFInfo:
    """`read_gguf_info`, cached: the planner asks for estimates many times per decision.
    Keyed by each file's size and mtime too, so a file replaced in place is read again."""
    keys = []
    for p in paths:
        st = os.stat(p)
        keys.append((str(p), st.st_size, st.st_mtime_ns))
    return _header(tuple(keys))


@lru_cache(maxsize=64)
def _header(keys: tuple[tuple[str, int, int], ...]) -> GGUFInfo:
    return read_gguf_info([k[0] for k in keys])


class GGUFEstimator:
    """Estimates from the GGUF header; cheap enough to call before every load."""

    def layer_count(self, paths: Sequence[Path]) -> int:
        return header(paths).layers + 1

    def estimate(self, paths: Sequence[Path], cfg: ModelConfig, *, gpu_layers: int, device: DeviceKind) -> Estimate:
        info = header(paths)
        n = info.layers
        if device == "cpu":
            weights = info.tensor_bytes
            kv = kv_bytes(info, cfg, range(n))
            return Estimate(weights, kv, compute_bytes(info, cfg), mapped=weights)
        k = max(0, min(gpu_layers, n + 1))
        layers = range(n - max(0, k - 1), n) if k > 1 else range(0)
        weights = weights_on_device(info, k)
        kv = kv_bytes(info, cfg, layers)
        compute = compute_bytes(info, cfg) if k > 0 else 0
        return Estimate(weights, kv, compute)


def projector_need(path: Path | str) -> Estimate:
    """A multimodal projector (libmtmd) beside its model, on the model's device: its weights
    (read into buffers, not mapped) and the vision encoder's compute buffer for one image at
    the header's image_size. Per patch, the buffer holds the patch's pixels (im2col, 3 p^2
    floats), one FFN row and one embedding row: within 12% of what libmtmd reserved for
    synthetic mlp projectors of 64 to 576 patches (flash attention on, libmtmd's default
    where supported; without it attention scores add n_head x patches^2 floats)."""
    st = os.stat(path)
    return _projector(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _projector(path: str, size: int, mtime_ns: int) -> Estimate:
    meta = read_meta(path)
    weights = sum(t.n_bytes for t in meta.tensors)
    image = int(meta.get("clip.vision.image_size") or 0)
    patch = int(meta.get("clip.vision.patch_size") or 1)
    per_patch = 3 * patch * patch + int(meta.get("clip.vision.feed_forward_length") or 0) \
        + int(meta.get("clip.vision.embedding_length") or 0)
    return Estimate(weights, 0, (image // patch) ** 2 * per_patch * 4)
