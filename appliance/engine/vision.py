"""Images in a prompt, through llama.cpp's multimodal library (libmtmd).

A model with a projector (`mmproj` in the catalog) gets a `Projector`: libmtmd's context
on the loaded text model. A prompt with images is tokenized by libmtmd into text and image
chunks (`tokenize`); the result is a `VisionPrompt`: the token list the runner plans with,
in which each image's positions hold pseudo-ids (negative, derived from the image's
content hash, so prefix reuse across requests is keyed on the image bytes), plus the image
spans (start, length, libmtmd chunk). The runner's step planner reads a prompt's text
between images like any prompt and each image as one part of its own, which `decode`
encodes (the vision tower) and evaluates into the slot's sequence.

Token indices and KV positions: a prompt's list index is what the planner and the slot
table count (KV cells, prefix reuse, the context limit). For most models an image's tokens
take one position each, so index and position agree. Models whose decoder uses M-RoPE
(Qwen2-VL family) give an image fewer positions than tokens (libmtmd's `n_pos`:
max(width, height) in merged patches; its tokens carry 2-D positions inside that range), so
the text after it continues at fewer positions than tokens; `VisionPrompt.position` maps an
index to its position, and the runner gives llama.cpp positions only through it.

The projector types exercised by the tests are listed in docs/models.md.
"""

from __future__ import annotations

import ctypes
import hashlib
import weakref
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as ll
from llama_cpp import mtmd_cpp as mtmd

from ..errors import EngineError, InvalidRequest

MARKER = mtmd.mtmd_default_marker().decode()  # where an image goes in the prompt text
_CHUNK_IMAGE = 1
_ID_SPAN = 2**31 - 2


@dataclass(frozen=True)
class ImageSpan:
    """One image's positions in a prompt; `chunk` is libmtmd's, alive as long as its prompt."""

    start: int
    length: int  # tokens (KV cells)
    digest: bytes
    chunk: int
    n_pos: int  # positions it advances the sequence by: `length`, or fewer with M-RoPE


@dataclass
class VisionPrompt:
    """A tokenized prompt with images (pseudo-ids at image positions)."""

    tokens: list[int]
    images: list[ImageSpan]
    _keep: object = None  # libmtmd's chunk list, freed when this prompt is collected

    @property
    def image_tokens(self) -> int:
        return sum(s.length for s in self.images)

    def image_at(self, pos: int) -> ImageSpan | None:
        return next((s for s in self.images if s.start == pos), None)

    def position(self, index: int) -> int:
        """The KV position of the token at `index` of the prompt, or of what is generated
        after it (asked only at image starts and outside images: the KV is cut at those)."""
        return index - sum(s.length - s.n_pos for s in self.images if s.start + s.length <= index)

    def boundary(self, keep: int) -> int:
        """`keep` cached positions, moved back to an image's start if it falls inside one."""
        return next((s.start for s in self.images if s.start < keep < s.start + s.length), keep)


def pseudo_ids(digest: bytes, n: int) -> list[int]:
    """The placeholder ids of an image's positions: negative (never a vocabulary id), fixed
    by its content hash, distinct along the image."""
    base = int.from_bytes(digest[:8], "little")
    return [-1 - (base + i) % _ID_SPAN for i in range(n)]


class Projector:
    """libmtmd's context for one loaded model (used on the runner's thread, and for
    tokenizing on the event loop: image decoding and preprocessing read only the
    projector's parameters)."""

    def __init__(self, path: Path, model: ll.llama_model_p, *, use_gpu: bool, n_threads: int) -> None:
        cp = mtmd.mtmd_context_params_default()
        cp.use_gpu = use_gpu
        cp.n_threads = n_threads
        cp.print_timings = False
        ctx = mtmd.mtmd_init_from_file(str(path).encode(), model, cp)
        if not ctx:
            raise EngineError(f"libmtmd could not load the projector {path} for this model")
        self._ctx = ctx
        if not mtmd.mtmd_support_vision(ctx):
            self.close()
            raise EngineError(f"the projector {path} has no vision encoder")

    def tokenize(self, text: str, images: list[bytes], *, add_special: bool) -> VisionPrompt:
        """`text` with one MARKER per image, in order. Raises InvalidRequest for an image
        libmtmd cannot decode or a marker count that does not match."""
        if text.count(MARKER) != len(images):
            raise InvalidRequest(f"the prompt has {text.count(MARKER)} image markers for {len(images)} images",
                                 param="messages")
        bitmaps: list[int] = []
        chunks = mtmd.mtmd_input_chunks_init()
        if not chunks:
            raise EngineError("libmtmd could not allocate a chunk list")
        try:
            digests = []
            for i, data in enumerate(images):
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bm = mtmd.mtmd_helper_bitmap_init_from_buf(self._ctx, buf, len(data), False)
                if not bm:
                    raise InvalidRequest(f"image {i + 1} could not be decoded (not a PNG, JPEG, GIF, BMP or WebP image?)",
                                         param="messages")
                bitmaps.append(bm)
                digest = hashlib.sha256(data).digest()
                digests.append(digest)
                mtmd.mtmd_bitmap_set_id(bm, digest.hex().encode())
            raw = text.encode()
            inp = mtmd.mtmd_input_text(text=raw, text_len=len(raw), add_special=add_special, parse_special=True)
            arr = (ctypes.c_void_p * max(1, len(bitmaps)))(*bitmaps)
            ret = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if ret != 0:
                raise InvalidRequest(f"libmtmd could not tokenize the images (error {ret})", param="messages")
            prompt = _read_chunks(chunks, digests)
        except BaseException:
            mtmd.mtmd_input_chunks_free(chunks)
            raise
        finally:
            for b in bitmaps:
                mtmd.mtmd_bitmap_free(b)
        weakref.finalize(prompt, mtmd.mtmd_input_chunks_free, chunks)
        prompt._keep = chunks
        return prompt

    def decode(self, lctx: ll.llama_context_p, span: ImageSpan, pos0: int, seq: int, n_batch: int) -> None:
        """Encode the image and evaluate its embeddings into `seq` from position `pos0` on
        (libmtmd lays out M-RoPE positions where the model needs them)."""
        if mtmd.mtmd_encode_chunk(self._ctx, span.chunk) != 0:
            raise EngineError("libmtmd could not encode an image")
        embd = mtmd.mtmd_get_output_embd(self._ctx)
        new_pos = ll.llama_pos(0)
        ret = mtmd.mtmd_helper_decode_image_chunk(self._ctx, lctx, span.chunk, embd, pos0, seq, n_batch,
                                                  ctypes.byref(new_pos), mtmd.mtmd_helper_post_decode_callback(), None)
        if ret != 0:
            raise EngineError(f"evaluating an image failed ({ret})")

    def close(self) -> None:
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None


def _read_chunks(chunks: int, digests: list[bytes]) -> VisionPrompt:
    tokens: list[int] = []
    images: list[ImageSpan] = []
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        c = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(c) == _CHUNK_IMAGE:
            n = mtmd.mtmd_input_chunk_get_n_tokens(c)
            digest = digests[len(images)]
            images.append(ImageSpan(len(tokens), n, digest, c, mtmd.mtmd_input_chunk_get_n_pos(c)))
            tokens.extend(pseudo_ids(digest, n))
        else:
            n_out = ctypes.c_size_t(0)
            ptr = mtmd.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n_out))
            tokens.extend(int(ptr[j]) for j in range(n_out.value))
    return VisionPrompt(tokens, images)
