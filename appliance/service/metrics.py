"""Prometheus metrics for /metrics (prometheus-client), one registry per app.

Why a registry per `Metrics` and not the library's global one: tests build many apps in
one process and each must start from zero. Three kinds of input:
- per request, from the API's on_request hook (`on_request`): counts, latency, tokens,
  time to first token and inter-token time when the record carries them;
- events the scheduler reports (`model_loaded`, `model_evicted`, `queue_waited`);
- readings taken at scrape time by custom collectors: the scheduler's snapshot (state,
  memory, slots, queue depth) and GPU sensors through the hardware module (pynvml).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("appliance.service")

PREFIX = "appliance"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# /v1/models/{id} and /admin/models/{id}/... would make one series per model name: collapse.
_KNOWN_ROUTES = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
    "/health", "/ready", "/metrics", "/admin/models",
)


def route_label(path: str) -> str:
    """A bounded label for a request path (unknown paths would explode cardinality)."""
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    if path.startswith("/admin/models/"):
        parts = path.split("/")
        return "/admin/models/{id}" + (f"/{parts[4]}" if len(parts) > 4 and parts[4] in ("load", "unload", "pull") else "")
    return "other"


class SnapshotCollector(Collector):
    """Per-model gauges read from the scheduler's snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], Iterable[Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rows = list(self.snapshot())
        except Exception:  # a scrape must not fail because a reading did
            log.exception("metrics: scheduler snapshot failed")
            rows = []
        loaded = GaugeMetricFamily(f"{PREFIX}_model_loaded", "1 while the model is resident", labels=["model"])
        state = GaugeMetricFamily(f"{PREFIX}_model_state", "1 for the model's current state", labels=["model", "state"])
        mem = GaugeMetricFamily(
            f"{PREFIX}_model_memory_bytes", "memory of a resident model (measured, else estimated)",
            labels=["model", "device", "kind"],
        )
        busy = GaugeMetricFamily(f"{PREFIX}_slots_busy", "slots decoding now", labels=["model"])
        total = GaugeMetricFamily(f"{PREFIX}_slots_total", "slots (parallel) of the model", labels=["model"])
        queue = GaugeMetricFamily(f"{PREFIX}_queue_depth", "requests waiting for the model", labels=["model"])
        count = GaugeMetricFamily(f"{PREFIX}_models_loaded", "models resident now")
        n = 0
        for r in rows:
            mid = str(r.id)
            resident = r.state in ("loading", "loaded", "unloading")
            n += r.state == "loaded"
            loaded.add_metric([mid], 1.0 if r.state == "loaded" else 0.0)
            state.add_metric([mid, str(r.state)], 1.0)
            if resident:
                dev = str(r.device or "")
                if r.memory_measured is not None:
                    mem.add_metric([mid, dev, "measured"], float(r.memory_measured))
                if r.memory_estimated is not None:
                    mem.add_metric([mid, dev, "estimated"], float(r.memory_estimated))
            busy.add_metric([mid], float(r.slots_busy))
            total.add_metric([mid], float(r.slots_total))
            queue.add_metric([mid], float(r.queue_depth))
        count.add_metric([], float(n))
        yield from (count, loaded, state, mem, busy, total, queue)


class GpuCollector(Collector):
    """GPU sensors at scrape time (pynvml through appliance.hardware); nothing without a GPU."""

    def __init__(self, stats: Callable[[], Iterable[Any]] | None = None) -> None:
        if stats is None:
            from ..hardware import gpu_stats

            stats = gpu_stats
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            gpus = list(self.stats())
        except Exception:
            log.exception("metrics: GPU readings failed")
            gpus = []
        labels = ["gpu", "name"]
        used = GaugeMetricFamily(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use (all processes)", labels=labels)
        total = GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory", labels=labels)
        util = GaugeMetricFamily(f"{PREFIX}_gpu_utilisation_ratio", "GPU busy fraction (0-1)", labels=labels)
        temp = GaugeMetricFamily(f"{PREFIX}_gpu_temperature_celsius", "GPU temperature", labels=labels)
        power = GaugeMetricFamily(f"{PREFIX}_gpu_power_watts", "GPU power draw", labels=labels)
        for g in gpus:
            lv = [str(g.index), str(g.name)]
            used.add_metric(lv, float(g.used))
            total.add_metric(lv, float(g.total))
            if g.utilisation_pct is not None:
                util.add_metric(lv, g.utilisation_pct / 100.0)
            if g.temperature_c is not None:
                temp.add_metric(lv, g.temperature_c)
            if g.power_w is not None:
                power.add_metric(lv, g.power_w)
        yield from (used, total, util, temp, power)


class Metrics:
    """The appliance's metrics: counters fed by hooks and events, gauges read on scrape."""

    def __init__(
        self,
        snapshot: Callable[[], Iterable[Any]] | None = None,
        gpu_stats: Callable[[], Iterable[Any]] | None = None,
        *,
        gpus: bool = True,
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by route, status and API key name",
            ["route", "status", "key"], registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "HTTP request latency (streams: until the last byte)",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "prompt tokens processed", ["model", "key"], registry=r
        )
        self.generated_tokens = Counter(
            f"{PREFIX}_generated_tokens", "completion tokens generated", ["model", "key"], registry=r
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "time from request to first token",
            ["model"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_seconds", "mean time between tokens, one sample per request",
            ["model"], buckets=ITL_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds", "time a request waited for a slot", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.loads = Counter(f"{PREFIX}_model_loads", "model loads by outcome", ["model", "outcome"], registry=r)
        self.load_time = Histogram(
            f"{PREFIX}_model_load_seconds", "time to load and warm up a model", ["model"],
            buckets=LOAD_BUCKETS, registry=r,
        )
        self.evictions = Counter(f"{PREFIX}_evictions", "models unloaded to make room", ["model"], registry=r)
        if snapshot is not None:
            r.register(SnapshotCollector(snapshot))
        if gpus:
            r.register(GpuCollector(gpu_stats))

    # --- per request (the API's on_request hook) ------------------------------------------

    def on_request(self, record: Any) -> None:
        """Count one finished request (an api.state.RequestRecord; its `ttft_s` and
        `decode_tokens_per_s`, set for generation requests, feed the latency histograms)."""
        route = route_label(record.path)
        key = record.key_name or "-"
        self.requests.labels(route, str(record.status), key).inc()
        self.latency.labels(route).observe(record.latency_s)
        if record.model:
            if record.prompt_tokens:
                self.prompt_tokens.labels(record.model, key).inc(record.prompt_tokens)
            if record.completion_tokens:
                self.generated_tokens.labels(record.model, key).inc(record.completion_tokens)
            if record.ttft_s is not None:
                self.ttft.labels(record.model).observe(record.ttft_s)
            tps = record.decode_tokens_per_s
            if tps:
                self.itl.labels(record.model).observe(1.0 / tps)

    # --- scheduler events ------------------------------------------------------------------

    def model_loaded(self, model: str, seconds: float | None, ok: bool = True) -> None:
        self.loads.labels(model, "ok" if ok else "failed").inc()
        if ok and seconds is not None:
            self.load_time.labels(model).observe(seconds)

    def model_evicted(self, model: str) -> None:
        self.evictions.labels(model).inc()

    def queue_waited(self, model: str, seconds: float) -> None:
        self.queue_wait.labels(model).observe(seconds)

    # --- exposition ------------------------------------------------------------------------

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY_NAME = "appliance_metrics"


def add_metrics_route(app: Any, metrics: Metrics) -> None:
    """Mount GET /metrics on an aiohttp app (its auth middleware applies admin scope
    unless server.metrics_public)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": metrics.content_type})

    app.router.add_get("/metrics", handler)
