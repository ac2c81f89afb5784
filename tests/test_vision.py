"""Images through libmtmd: a synthetic "mlp" (LLaVA) projector on a tiny llama model, and a
synthetic "qwen2vl_merger" (Qwen2-VL) projector on a tiny qwen2vl model, whose decoder
rotates with M-RoPE (an image takes fewer positions than tokens)."""

from __future__ import annotations

import ctypes
import io
import re
from dataclasses import replace
from pathlib import Path

import llama_cpp as ll
import numpy as np
import pytest
from llama_cpp import mtmd_cpp as mtmd
from PIL import Image

from appliance.config import ModelConfig
from appliance.engine import llamalog
from appliance.engine.runner import Runner
from appliance.engine.types import GenerationRequest, SamplingParams
from appliance.engine.vision import MARKER, Projector, pseudo_ids
from appliance.errors import InvalidRequest
from appliance.scheduler.estimate import projector_need
from tests.ggufmaker import Shape, make_gguf
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


# --- the engine: images read inside the continuous-batching steps ---------------------------


N_IMG = ProjShape().n_image_tokens


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("vrunner")
    model = make_gguf(d / "m.gguf")
    r = Runner([model], ModelConfig(source=f"file://{model}", context=256, parallel=4), model_id="tiny-vl",
               n_threads=1, mmproj=make_mmproj(d / "p.gguf"))
    yield r
    r.close()


def greedy(r: Runner, n: int = 6) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, logit_bias={t: -100.0 for t in r.vocab.eog_ids})


async def run(r: Runner, reqs: list[GenerationRequest]) -> list[tuple[str, object]]:
    out = []
    for g in r.generate_batch(reqs):
        text = "".join([d.text async for d in g])
        out.append((text, g.usage))
    return out


async def test_an_image_request_counts_the_image_tokens_in_usage(runner: Runner) -> None:
    prompt = f"Describe {MARKER} please"
    [(text, u)] = await run(runner, [GenerationRequest(prompt, greedy(runner), images=(png(),))])
    n_text = len(runner.tokenize("Describe ")) + len(runner.tokenize(" please", add_special=False))
    assert u.prompt_tokens == n_text + N_IMG  # type: ignore[attr-defined]
    assert text


async def test_image_requests_batch_with_text_requests_and_decode_as_they_do_alone(runner: Runner) -> None:
    red, blue = png(), png(color=(0, 0, 255))
    reqs = [
        GenerationRequest(f"A {MARKER} red", greedy(runner), images=(red,)),
        GenerationRequest("just some text", greedy(runner)),
        GenerationRequest(f"B {MARKER} and {MARKER} two", greedy(runner), images=(blue, red)),
        GenerationRequest("more text here", greedy(runner)),
    ]
    alone = [(await run(runner, [q]))[0][0] for q in reqs]
    together = await run(runner, reqs)
    assert [t for t, _ in together] == alone
    assert together[2][1].prompt_tokens == len(runner.tokenize("B ")) + 2 * N_IMG + len(  # type: ignore[attr-defined]
        runner.tokenize(" and ", add_special=False)) + len(runner.tokenize(" two", add_special=False))


async def test_prefix_reuse_is_keyed_on_the_image_content(runner: Runner) -> None:
    p = greedy(runner, 2)
    await run(runner, [GenerationRequest(f"Reuse {MARKER} this", p, images=(png(7, 9),))])
    [(_, same)] = await run(runner, [GenerationRequest(f"Reuse {MARKER} this", p, images=(png(7, 9),))])
    assert same.cached_tokens == same.prompt_tokens - 1  # type: ignore[attr-defined]
    [(_, other)] = await run(runner, [GenerationRequest(f"Reuse {MARKER} this", p, images=(png(7, 9, (1, 2, 3)),))])
    assert other.cached_tokens == len(runner.tokenize("Reuse "))  # type: ignore[attr-defined]


async def test_bad_images_are_refused_before_anything_is_decoded(runner: Runner, tiny_gguf: Path) -> None:
    evaluated = runner.stats.prompt_tokens_evaluated
    with pytest.raises(InvalidRequest, match="could not be decoded"):
        runner.generate(GenerationRequest(f"x {MARKER} y", greedy(runner), images=(b"\x89PNG broken",)))
    with pytest.raises(InvalidRequest, match="markers for 2 images"):
        runner.generate(GenerationRequest(f"x {MARKER} y", greedy(runner), images=(png(), png())))
    with Runner([tiny_gguf], ModelConfig(source=f"file://{tiny_gguf}", context=256), n_threads=1) as plain:
        with pytest.raises(InvalidRequest, match="does not take images"):
            plain.generate(GenerationRequest(f"x {MARKER} y", greedy(plain), images=(png(),)))
    assert runner.stats.prompt_tokens_evaluated == evaluated


# --- M-RoPE (Qwen2-VL family): positions are not token indices after an image ---------------


MROPE = Shape(arch="qwen2vl", name="tiny-qwen2vl", qk_scale=0.5)  # sharp attention: wrong positions show
MROPE_PROJ = ProjShape(kind="qwen2vl_merger")


@pytest.fixture(scope="module")
def mrope_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("mrope")
    return make_gguf(d / "m.gguf", MROPE), make_mmproj(d / "p.gguf", MROPE_PROJ)


@pytest.fixture(scope="module")
def mrope_runner(mrope_files: tuple[Path, Path]):
    model, proj = mrope_files
    r = Runner([model], ModelConfig(source=f"file://{model}", context=256, parallel=2), model_id="tiny-qwen2vl",
               n_threads=1, mmproj=proj)
    yield r
    r.close()


def llama_cpps_own_greedy(files: tuple[Path, Path], prompt: str, images: list[bytes], n: int,
                          banned: list[int]) -> tuple[list[int], list[float], int, list[tuple[int, int]]]:
    """(greedy tokens, their logprobs, prompt tokens, each image's (tokens, positions)) as llama.cpp evaluates the prompt itself: libmtmd's helper
    reads the chunks (each image at its M-RoPE positions, n_past advancing by its n_pos), then
    a plain llama_decode loop goes on from the position it returns."""
    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(str(files[0]).encode(), ll.llama_model_default_params())
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 256, 64, 1, 1
    ctx = ll.llama_init_from_model(model, cp)
    proj = Projector(files[1], model, use_gpu=False, n_threads=1)
    batch = ll.llama_batch_init(1, 0, 1)
    try:
        vp = proj.tokenize(prompt, images, add_special=True)
        n_past = ll.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(proj._ctx, ctx, vp._keep, 0, 0, 64, True, ctypes.byref(n_past)) == 0
        n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        out: list[int] = []
        logprobs: list[float] = []
        for i in range(n):
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).astype(np.float64)
            allowed = logits.copy()
            allowed[banned] = -np.inf
            out.append(int(allowed.argmax()))
            logprobs.append(float(logits[out[-1]] - logits.max() - np.log(np.exp(logits - logits.max()).sum())))
            batch.n_tokens = 1
            batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = (
                out[-1], n_past.value + i, 1, 0, True)
            assert ll.llama_decode(ctx, batch) == 0
        return out, logprobs, mtmd.mtmd_helper_get_n_tokens(vp._keep), [(s.length, s.n_pos) for s in vp.images]
    finally:
        ll.llama_batch_free(batch)
        proj.close()
        ll.llama_free(ctx)
        ll.llama_model_free(model)


async def greedy_ids(r: Runner, req: GenerationRequest) -> tuple[list[int], list[float], object]:
    [g] = r.generate_batch([req])
    deltas = [d async for d in g]
    return [t for d in deltas for t in d.token_ids], [lp.logprob for d in deltas for lp in d.logprobs], g.usage


@pytest.mark.parametrize("images", [0, 1, 2])
async def test_mrope_greedy_output_is_llama_cpps_own(mrope_runner: Runner, mrope_files: tuple[Path, Path],
                                                     images: int) -> None:
    pics = [png(64, 32), png(7, 9, (0, 0, 255))][:images]
    prompt = "Here " + " and ".join([MARKER] * images) + " is what I see"
    params = replace(greedy(mrope_runner, 8), logprobs=True)
    ids, logprobs, usage = await greedy_ids(mrope_runner, GenerationRequest(prompt, params, images=tuple(pics)))
    want, want_logprobs, n_prompt, spans = llama_cpps_own_greedy(mrope_files, prompt, pics, 8,
                                                                 sorted(mrope_runner.vocab.eog_ids))
    assert ids == want
    assert logprobs == pytest.approx(want_logprobs, abs=1e-3)  # (float sums in other batch shapes)
    assert all(n_pos < n for n, n_pos in spans)  # the case at stake: fewer positions than tokens
    assert usage.prompt_tokens == n_prompt  # type: ignore[attr-defined]  # image tokens counted, as libmtmd does


async def test_mrope_image_and_text_requests_batch_and_reuse_prefixes(mrope_runner: Runner) -> None:
    reqs = [
        GenerationRequest(f"A {MARKER} wide one", greedy(mrope_runner), images=(png(64, 32),)),
        GenerationRequest("just some text", greedy(mrope_runner)),
        GenerationRequest(f"B {MARKER} tall one", greedy(mrope_runner), images=(png(7, 9),)),
    ]
    alone = [(await run(mrope_runner, [q]))[0][0] for q in reqs]
    together = await run(mrope_runner, reqs)
    assert [t for t, _ in together] == alone
    [(again, u)] = await run(mrope_runner, [reqs[0]])  # its KV is still in a slot: trimmed at a position
    assert (again, u.cached_tokens) == (alone[0], u.prompt_tokens - 1)  # type: ignore[attr-defined]
    assert mrope_runner.stats.decode_failures == 0  # (a stale position fails a decode, which is retried)


# --- memory: the projector's weights and its encoder's compute buffer in the estimate -------




def test_projector_estimate_matches_what_libmtmd_allocates(loaded, tmp_path: Path) -> None:
    model, _, _ = loaded
    path = make_mmproj(tmp_path / "big.gguf", ProjShape(n_embd=256, n_ff=1024, n_head=4, image_size=224, patch_size=14))
    with llamalog.capture() as chunks:  # libmtmd's log goes the way llama.cpp's does
        Projector(path, model, use_gpu=False, n_threads=1).close()
    log = "".join(chunks)
    mib = 1024 * 1024
    weights = float(re.search(r"model size:\s+([\d.]+) MiB", log).group(1)) * mib  # type: ignore[union-attr]
    compute = float(re.search(r"compute buffer size =\s+([\d.]+) MiB", log).group(1)) * mib  # type: ignore[union-attr]
    need = projector_need(path)
    assert abs(need.weights - weights) < 0.01 * mib
    assert 0.95 <= need.compute / compute < 1.15


@pytest.mark.parametrize("with_projector, all_layers", [(False, True), (True, False)])
async def test_the_scheduler_counts_the_projector_when_placing_a_model(tmp_path: Path, with_projector: bool,
                                                                       all_layers: bool) -> None:
    from tests.schedharness import GB, make, use

    proj = make_mmproj(tmp_path / "mmproj.gguf", ProjShape(n_embd=256, n_ff=1024, n_head=4, image_size=224, patch_size=14))
    assert projector_need(proj).total > 8_000_000
    h = make(tmp_path, {"x": 10 * GB}, gpus=(11 * GB + 5_000_000,), layers=10,
             models={"x": {"gpu_layers": "auto", "mmproj": "file:///models/x-mmproj.gguf"}},
             mmproj={"x": proj} if with_projector else None)
    await use(h, "x")
    assert h.runners[-1].placement.all_layers is all_layers
