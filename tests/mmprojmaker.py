"""Synthetic LLaVA-style ("mlp") vision projector GGUFs with random weights, for tests.

libmtmd (llama.cpp's multimodal library) reads a projector GGUF: a small ViT (patch
embedding, position embedding, transformer blocks) and a two-layer MLP that maps each
patch to the text model's embedding size. The "mlp" type (LLaVA 1.5) is the simplest one
libmtmd supports: fixed-size square input, no special tokens in the text model, one image
token per patch. With image_size 32 and patch_size 8 an image becomes 16 tokens.

Built once per content hash into the same cache as tests/ggufmaker.py's models.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np

from tests.ggufmaker import cached_file


@dataclass(frozen=True)
class ProjShape:
    text_n_embd: int = 64  # must equal the paired text model's n_embd (ggufmaker.Shape default)
    n_embd: int = 32
    n_ff: int = 48  # != n_embd: libmtmd swaps ffn up/down of old llava files when they look alike
    n_head: int = 2
    n_layer: int = 2  # llava uses all but the last layer
    image_size: int = 32
    patch_size: int = 8
    proj_hidden: int = 64
    kind: str = "mlp"  # or "qwen2vl_merger" (Qwen2-VL): dynamic resolution, 2x2 patches merged per token, M-RoPE positions

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def make_mmproj(path: Path, shape: ProjShape = ProjShape(), seed: int = 0) -> Path:
    """A random-weight mlp projector GGUF at `path` (a copy of the cached build)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_cached(shape, seed), path)
    return path


def _cached(shape: ProjShape, seed: int) -> Path:
    h = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), repr(sorted(asdict(shape).items())).encode(),
                 str(seed).encode(), version("gguf").encode(), np.__version__.encode()):
        h.update(hashlib.sha256(part).digest())
    return cached_file(f"mmproj-{h.hexdigest()[:24]}.gguf", lambda tmp: _write(tmp, shape, seed))


def _write(path: Path, s: ProjShape, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("tiny-mmproj")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_string("clip.projector_type", s.kind)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.embedding_length", s.n_embd)
    w.add_uint32("clip.vision.feed_forward_length", s.n_ff)
    w.add_uint32("clip.vision.block_count", s.n_layer)
    w.add_uint32("clip.vision.projection_dim", s.text_n_embd)
    w.add_uint32("clip.vision.attention.head_count", s.n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.image_size", s.image_size)
    w.add_uint32("clip.vision.patch_size", s.patch_size)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def t(name: str, *dims: int, scale: float = 0.02, ones: bool = False) -> None:
        arr = np.ones(dims, np.float32) if ones else (rng.standard_normal(dims) * scale).astype(np.float32)
        w.add_tensor(name, arr)

    e, p = s.n_embd, s.patch_size
    t("v.patch_embd.weight", e, 3, p, p)
    if s.kind == "qwen2vl_merger":  # two temporal frames' convolutions, no bias, positions by rotation
        t("v.patch_embd.weight.1", e, 3, p, p)
    else:
        t("v.patch_embd.bias", e)
        t("v.position_embd.weight", s.n_image_tokens, e)
    for i in range(s.n_layer):
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t(f"v.blk.{i}.{n}.weight", e, e)
            t(f"v.blk.{i}.{n}.bias", e)
        for n in ("ln1", "ln2"):
            t(f"v.blk.{i}.{n}.weight", e, ones=True)
            t(f"v.blk.{i}.{n}.bias", e)
        t(f"v.blk.{i}.ffn_up.weight", s.n_ff, e)
        t(f"v.blk.{i}.ffn_up.bias", s.n_ff)
        t(f"v.blk.{i}.ffn_down.weight", e, s.n_ff)
        t(f"v.blk.{i}.ffn_down.bias", e)
    t("mm.0.weight", s.proj_hidden, e * (4 if s.kind == "qwen2vl_merger" else 1))
    t("mm.0.bias", s.proj_hidden)
    t("mm.2.weight", s.text_n_embd, s.proj_hidden, scale=1.0)
    t("mm.2.bias", s.text_n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
