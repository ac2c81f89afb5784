"""/metrics: Prometheus text that parses, counters that move with requests, gauges read
from the scheduler's snapshot and the GPU sensors at scrape time, one registry per app."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from appliance.api.state import RequestRecord
from appliance.hardware import GpuStats
from appliance.scheduler.core import ModelStatus
from appliance.service.metrics import Metrics, add_metrics_route, route_label
from test_api_support import pull_all, serving, write_config


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def status(mid: str, state: str, queue: int = 0, busy: int = 0) -> ModelStatus:
    return ModelStatus(
        id=mid, state=state, memory_estimated=300 << 20, memory_measured=250 << 20 if state == "loaded" else None,
        device="cuda:0" if state == "loaded" else None, gpu_layers=None, slots_busy=busy, slots_total=4,
        queue_depth=queue, last_used=None, idle_seconds=None, sha256=None, source="file:///m.gguf", pinned=False,
    )


def record(path: str, status: int, key: str | None, model: str | None, p: int = 0, c: int = 0) -> RequestRecord:
    return RequestRecord(
        request_id="req_1", method="POST", path=path, key_name=key, model=model, status=status,
        prompt_tokens=p, completion_tokens=c, latency_s=0.2,
    )


def test_counters_move_and_text_parses() -> None:
    m = Metrics(gpus=False)
    before = samples(m.render().decode())
    assert ("appliance_requests_total", (("key", "alice"), ("route", "/v1/chat/completions"), ("status", "200"))) not in before

    m.on_request(record("/v1/chat/completions", 200, "alice", "tiny", p=12, c=5))
    m.on_request(record("/v1/chat/completions", 200, "alice", "tiny", p=3, c=7))
    m.on_request(record("/v1/models/tiny", 404, None, None))
    m.queue_waited("tiny", 0.5)
    m.model_loaded("tiny", 1.5)
    m.model_loaded("big", None, ok=False)
    m.model_evicted("tiny")
    s = samples(m.render().decode())
    assert s[("appliance_requests_total", (("key", "alice"), ("route", "/v1/chat/completions"), ("status", "200")))] == 2
    assert s[("appliance_requests_total", (("key", "-"), ("route", "/v1/models/{id}"), ("status", "404")))] == 1
    assert s[("appliance_prompt_tokens_total", (("key", "alice"), ("model", "tiny")))] == 15
    assert s[("appliance_generated_tokens_total", (("key", "alice"), ("model", "tiny")))] == 12
    assert s[("appliance_request_duration_seconds_count", (("route", "/v1/chat/completions"),))] == 2
    assert s[("appliance_queue_wait_seconds_count", (("model", "tiny"),))] == 1
    assert s[("appliance_model_loads_total", (("model", "tiny"), ("outcome", "ok")))] == 1
    assert s[("appliance_model_loads_total", (("model", "big"), ("outcome", "failed")))] == 1
    assert s[("appliance_model_load_seconds_sum", (("model", "tiny"),))] == 1.5
    assert s[("appliance_evictions_total", (("model", "tiny"),))] == 1


def test_ttft_and_inter_token_when_the_record_has_them() -> None:
    m = Metrics(gpus=False)
    rec = record("/v1/completions", 200, "k", "tiny", p=1, c=10)
    rec.ttft_s = 0.04  # type: ignore[attr-defined]
    rec.decode_tokens_per_s = 50.0  # type: ignore[attr-defined]
    m.on_request(rec)
    s = samples(m.render().decode())
    assert s[("appliance_time_to_first_token_seconds_sum", (("model", "tiny"),))] == 0.04
    assert s[("appliance_inter_token_seconds_sum", (("model", "tiny"),))] == 0.02


def test_registries_are_isolated() -> None:
    a, b = Metrics(gpus=False), Metrics(gpus=False)
    a.on_request(record("/v1/completions", 200, "k", "tiny"))
    sb = samples(b.render().decode())
    assert not any(name == "appliance_requests_total" for name, _ in sb)


def test_snapshot_and_gpu_gauges_are_read_at_scrape() -> None:
    rows = [status("a", "loaded", queue=3, busy=2), status("b", "unloaded")]
    gpus = [GpuStats(0, "Fake 24GB", 24 << 30, 20 << 30, 4 << 30, 61.0, 180.5, 37.0)]
    m = Metrics(lambda: rows, lambda: gpus)
    s = samples(m.render().decode())
    assert s[("appliance_models_loaded", ())] == 1
    assert s[("appliance_model_loaded", (("model", "a"),))] == 1
    assert s[("appliance_model_loaded", (("model", "b"),))] == 0
    assert s[("appliance_queue_depth", (("model", "a"),))] == 3
    assert s[("appliance_slots_busy", (("model", "a"),))] == 2
    assert s[("appliance_model_memory_bytes", (("device", "cuda:0"), ("kind", "measured"), ("model", "a")))] == 250 << 20
    g = (("gpu", "0"), ("name", "Fake 24GB"))
    assert s[("appliance_gpu_memory_used_bytes", g)] == 4 << 30
    assert s[("appliance_gpu_temperature_celsius", g)] == 61.0
    assert s[("appliance_gpu_power_watts", g)] == 180.5
    assert s[("appliance_gpu_utilisation_ratio", g)] == 0.37
    rows[0] = status("a", "loaded", queue=0)  # read again at the next scrape
    assert samples(m.render().decode())[("appliance_queue_depth", (("model", "a"),))] == 0


def test_a_failing_reading_does_not_break_the_scrape() -> None:
    def broken() -> list:
        raise RuntimeError("nvml went away")

    m = Metrics(broken, broken)
    m.on_request(record("/health", 200, None, None))
    assert samples(m.render().decode())[("appliance_requests_total", (("key", "-"), ("route", "/health"), ("status", "200")))] == 1


def test_route_labels_are_bounded() -> None:
    assert route_label("/v1/models/llama-3") == "/v1/models/{id}"
    assert route_label("/admin/models/x/load") == "/admin/models/{id}/load"
    assert route_label("/wp-login.php") == "other"


async def test_metrics_route_over_http() -> None:
    m = Metrics(gpus=False)
    app = web.Application()
    add_metrics_route(app, m)
    m.on_request(record("/v1/completions", 200, "k", "tiny", c=3))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        s = samples(await resp.text())
    assert s[("appliance_generated_tokens_total", (("key", "k"), ("model", "tiny")))] == 3


async def test_ttft_and_inter_token_from_real_requests(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The engine's Usage timings reach the record: a completion and a chat on llama.cpp
    each add one TTFT and one inter-token sample."""
    settings = write_config(tmp_path, {"tiny": {"source": f"file://{tiny_models['a']}", "context": 128}})
    store = pull_all(settings)
    m = Metrics(gpus=False)
    no_eos = {"2": -100}  # random weights: decode several tokens, so there is a decode rate
    async with serving(settings, store=store) as d:
        d.on_request(m.on_request)  # runs before a non-streamed response is sent
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0) as c:
            r = await c.completions.create(model="tiny", prompt="Hello", max_tokens=4, logit_bias=no_eos)
            assert r.usage.completion_tokens == 4
            s = samples(m.render().decode())
            assert s[("appliance_time_to_first_token_seconds_count", (("model", "tiny"),))] == 1
            assert s[("appliance_time_to_first_token_seconds_sum", (("model", "tiny"),))] > 0
            assert s[("appliance_inter_token_seconds_count", (("model", "tiny"),))] == 1
            await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=4, logit_bias=no_eos)
    s = samples(m.render().decode())
    assert s[("appliance_time_to_first_token_seconds_count", (("model", "tiny"),))] == 2
    assert s[("appliance_inter_token_seconds_count", (("model", "tiny"),))] == 2


async def test_scheduler_series_move_in_a_real_run(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The service wires its Metrics into the daemon's scheduler: on real llama.cpp, with a RAM
    budget that holds one of two tiny models, loads, load time, evictions and queue waits move."""
    from appliance.config import load_settings
    from appliance.daemon import Daemon
    from appliance.scheduler import GGUFEstimator
    from appliance.service.runtime import Service

    models = {m: {"source": f"file://{tiny_models[m]}", "context": 128, "parallel": 1} for m in ("a", "b")}
    settings = write_config(tmp_path, models)
    need = max(GGUFEstimator().estimate([tiny_models[m]], cfg, gpu_layers=0, device="cpu").total
               for m, cfg in settings.catalog.models.items())
    with (tmp_path / "appliance.toml").open("a") as f:
        f.write(f"[memory]\nbudget = {int(need * 1.2)}\n")  # one fits, two do not
    settings = load_settings(tmp_path / "appliance.toml", tmp_path / "models.toml")
    store = pull_all(settings)
    d = Daemon(settings, host="127.0.0.1", port=0, store=store)
    svc = Service(d, env={})
    svc.prepare()
    await d.start()
    try:
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0) as c:
            for mid in ("a", "b", "a"):  # each request swaps the other model out
                r = await c.completions.create(model=mid, prompt="Hello", max_tokens=2)
                assert r.model == mid
            assert set(d.backend.runners()) == {"a"}
        async with aiohttp.ClientSession() as http, http.get(d.url + "/metrics") as resp:
            assert resp.status == 200
            s = samples(await resp.text())
    finally:
        await d.stop()
    assert s[("appliance_model_loads_total", (("model", "a"), ("outcome", "ok")))] == 2
    assert s[("appliance_model_loads_total", (("model", "b"), ("outcome", "ok")))] == 1
    assert s[("appliance_model_load_seconds_count", (("model", "a"),))] == 2
    assert s[("appliance_model_load_seconds_sum", (("model", "a"),))] > 0
    assert s[("appliance_evictions_total", (("model", "a"),))] == 1
    assert s[("appliance_evictions_total", (("model", "b"),))] == 1
    assert s[("appliance_queue_wait_seconds_count", (("model", "a"),))] == 2
    assert s[("appliance_queue_wait_seconds_count", (("model", "b"),))] == 1
    assert s[("appliance_queue_wait_seconds_sum", (("model", "b"),))] > 0  # it waited for its load
