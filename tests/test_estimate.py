"""The memory estimate against reality: the buffer sizes llama.cpp itself logs when the engine's
Runner loads a model and creates its context (engine/params.py: n_seq_max = parallel,
n_ctx = context x parallel, per-slot KV streams, n_outputs_max = parallel; for embedding
models a unified cache and one input per micro-batch)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp as ll
import pytest

from appliance.config import ModelConfig
from appliance.engine import llamalog
from appliance.engine.params import context_shape
from appliance.engine.runner import Runner
from appliance.scheduler.estimate import GGUFEstimator, kv_cells, output_layer_bytes, weights_on_device
from appliance.store import read_gguf_info
from ggufmaker import Shape, make_gguf


def logged_buffers(path: Path, cfg: ModelConfig) -> llamalog.BufferSizes:
    """Load on the CPU with the engine's own Runner and return what llama.cpp reported."""
    with Runner([path], cfg, n_gpu_layers=0, n_threads=1) as r:
        return r.buffers


def check(path: Path, cfg: ModelConfig, *, compute_tolerance: float = 0.15) -> None:
    real = logged_buffers(path, cfg)
    est = GGUFEstimator().estimate([path], cfg, gpu_layers=0, device="cpu")
    mapped = sum(v for k, v in real.by_kind["model"].items() if k.endswith("_Mapped"))
    real_kv = real.total("KV")
    real_compute = real.total("compute", "output")
    real_total = mapped + real_kv + real_compute
    # weights and KV are exact arithmetic over the header; compute is a calibrated model.
    # llama.cpp logs MiB with two decimals: allow that rounding per buffer.
    log_rounding = 0.005 * 1024**2 * max(1, len(real.by_kind.get("KV", {})))
    assert est.weights == pytest.approx(mapped, rel=0.01)
    assert est.kv == pytest.approx(real_kv, rel=0.01, abs=log_rounding)
    assert est.compute == pytest.approx(real_compute, rel=compute_tolerance)
    assert est.total == pytest.approx(real_total, rel=0.15)
    assert est.total >= 0.97 * real_total  # erring high is safe, low is not


@pytest.fixture(scope="module")
def wide_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = Shape(n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=1024, name="wide")
    return make_gguf(tmp_path_factory.mktemp("wide") / "wide.gguf", shape, seed=7)


def cfg(context: int, parallel: int, **kw: object) -> ModelConfig:
    return ModelConfig(source="file:///m.gguf", context=context, parallel=parallel, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("context,parallel", [(256, 1), (1024, 4), (4096, 4), (2048, 8), (1000, 3)])
def test_tiny_synthetic_models(tiny_gguf: Path, wide_gguf: Path, context: int, parallel: int) -> None:
    # n_embd 64: small tensors make the compute model's constants matter more (errs high)
    check(tiny_gguf, cfg(context, parallel), compute_tolerance=0.35)
    check(wide_gguf, cfg(context, parallel))


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_quantized_kv_cache(wide_gguf: Path, kv: str) -> None:
    check(wide_gguf, cfg(1024, 4, kv_cache_type=kv))


def test_embedding_context(wide_gguf: Path) -> None:
    check(wide_gguf, cfg(512, 2, embedding=True))
    check(wide_gguf, cfg(300, 3, embedding=True))


@pytest.mark.parametrize("embedding", [False, True])
def test_the_estimate_sizes_the_context_the_runner_creates(wide_gguf: Path, embedding: bool) -> None:
    """One mapping (engine/params.py): the sizes the estimator reads are the runner's context's."""
    c = cfg(300, 3, embedding=embedding)
    shape = context_shape(c)
    with Runner([wide_gguf], c, n_gpu_layers=0, n_threads=1) as r:
        assert r.ctx is not None
        assert (ll.llama_n_batch(r.ctx), ll.llama_n_ubatch(r.ctx)) == (shape.n_batch, shape.n_ubatch)
        assert ll.llama_n_seq_max(r.ctx) == shape.n_seq_max == 3
        # per-slot streams: each slot's 300 padded to 512; a unified cache: 900 padded to 1024
        assert ll.llama_n_ctx(r.ctx) == kv_cells(c) == (1024 if embedding else 1536)
        est = GGUFEstimator().estimate([wide_gguf], c, gpu_layers=0, device="cpu")
        assert est.kv == pytest.approx(r.buffers.total("KV"), rel=0.01)


@pytest.mark.gemma
@pytest.mark.parametrize(
    "context,parallel,kv", [(4096, 4, "f16"), (1024, 4, "f16"), (2048, 8, "f16"), (256, 1, "f16"), (1024, 4, "q8_0")]
)
def test_gemma_270m(gemma_path: Path, context: int, parallel: int, kv: str) -> None:
    check(gemma_path, cfg(context, parallel, kv_cache_type=kv))


@pytest.mark.gemma
def test_gemma_sliding_window_layers_keep_full_kv(gemma_path: Path) -> None:
    info = read_gguf_info([gemma_path])
    assert info.sliding_window > 0  # Gemma 3 interleaves sliding-window layers
    est = GGUFEstimator().estimate([gemma_path], cfg(4096, 4), gpu_layers=0, device="cpu")
    assert est.kv == 288 * 1024**2  # 16384 cells x 18 layers x (256 + 256) x 2 bytes


def test_partial_offload_counts_output_layer_first(wide_gguf: Path) -> None:
    info = read_gguf_info([wide_gguf])
    e = GGUFEstimator()
    c = cfg(1024, 4)
    assert e.layer_count([wide_gguf]) == info.layers + 1
    none = e.estimate([wide_gguf], c, gpu_layers=0, device="cuda")
    out_only = e.estimate([wide_gguf], c, gpu_layers=1, device="cuda")
    two = e.estimate([wide_gguf], c, gpu_layers=2, device="cuda")
    full = e.estimate([wide_gguf], c, gpu_layers=info.layers + 1, device="cuda")
    assert none.total == 0
    # the output layer: output.weight, or a second copy of token_embd when the output is tied
    output = info.output_bytes or info.token_embd_bytes
    assert output_layer_bytes(info) == output
    assert out_only.weights == output + info.other_bytes and out_only.kv == 0
    assert two.weights == weights_on_device(info, 2) and two.kv == full.kv // info.layers
    assert full.weights == info.tensor_bytes - info.token_embd_bytes + output * info.output_tied
    assert none.total < out_only.total < two.total < full.total


def test_split_gguf_counts_every_shard(tmp_path: Path, wide_gguf: Path) -> None:
    """Tensors of shards after the first count too (metadata comes from the first)."""
    import gguf

    r = gguf.GGUFReader(wide_gguf)
    whole = read_gguf_info([wide_gguf])
    # write the same model as two files: all metadata + half the tensors, then the rest
    names = [t.name for t in r.tensors]
    half = len(names) // 2
    paths = []
    for i, part in enumerate((names[:half], names[half:])):
        w = gguf.GGUFWriter(str(tmp_path / f"m-{i}.gguf"), "llama")
        if i == 0:
            for key, f in r.fields.items():
                if key.startswith("GGUF.") or key == "general.architecture":
                    continue
                if f.types[0] == gguf.GGUFValueType.ARRAY:
                    w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1])
                else:
                    w.add_key_value(key, f.contents(), f.types[0])
        for t in r.tensors:
            if t.name in part:
                w.add_tensor(t.name, t.data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        paths.append(tmp_path / f"m-{i}.gguf")
    split = read_gguf_info(paths)
    assert split.tensor_bytes == whole.tensor_bytes and split.layer_bytes == whole.layer_bytes
    e = GGUFEstimator()
    assert e.estimate(paths, cfg(1024, 4), gpu_layers=0, device="cpu") == e.estimate([wide_gguf], cfg(1024, 4), gpu_layers=0, device="cpu")
