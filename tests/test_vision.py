"""Images through libmtmd: a synthetic "mlp" (LLaVA) projector on a tiny llama model."""

from __future__ import annotations

import io
from pathlib import Path

import llama_cpp as ll
import pytest
from PIL import Image

from appliance.engine.vision import MARKER, Projector, pseudo_ids
from appliance.errors import InvalidRequest
from tests.ggufmaker import make_gguf
from tests.mmprojmaker import ProjShape, make_mmproj


def png(w: int = 50, h: int = 40, color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("vision")
    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(str(make_gguf(d / "m.gguf")).encode(), ll.llama_model_default_params())
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 256, 64, 1, 1
    ctx = ll.llama_init_from_model(model, cp)
    proj = Projector(make_mmproj(d / "p.gguf"), model, use_gpu=False, n_threads=1)
    yield model, ctx, proj
    proj.close()
    ll.llama_free(ctx)
    ll.llama_model_free(model)


def test_libmtmd_loads_tokenizes_and_evaluates_an_image(loaded) -> None:
    model, ctx, proj = loaded
    vp = proj.tokenize(f"look: {MARKER} what is it?", [png()], add_special=True)
    n_img = ProjShape().n_image_tokens
    assert [(s.start, s.length) for s in vp.images] == [(vp.images[0].start, n_img)]
    span = vp.images[0]
    assert vp.tokens[span.start:span.start + n_img] == pseudo_ids(span.digest, n_img)
    assert all(t >= 0 for i, t in enumerate(vp.tokens) if not span.start <= i < span.start + n_img)
    mem = ll.llama_get_memory(ctx)
    proj.decode(ctx, span, 0, 0, 64)
    assert ll.llama_memory_seq_pos_max(mem, 0) == n_img - 1


def test_same_image_same_ids_other_image_other_ids(loaded) -> None:
    _, _, proj = loaded
    a = proj.tokenize(f"{MARKER} x", [png()], add_special=True)
    b = proj.tokenize(f"{MARKER} x", [png()], add_special=True)
    c = proj.tokenize(f"{MARKER} x", [png(color=(0, 0, 255))], add_special=True)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_undecodable_image_is_refused(loaded) -> None:
    _, _, proj = loaded
    with pytest.raises(InvalidRequest, match="image 1 could not be decoded"):
        proj.tokenize(f"{MARKER} x", [b"not an image"], add_special=True)
