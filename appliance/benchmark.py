"""Load-test an OpenAI-compatible server over HTTP: streaming requests at fixed concurrency.

Why over HTTP and not in process (appliance/engine/bench.py does that): what a user feels is
the whole path — auth, admission queue, scheduler, SSE framing — and the only fair comparison
with another server (llama-server, vLLM, a second appliance) is the same requests on the same
wire. The CLI (`appliance bench`, cli/bench.py) prints and serialises what this returns.

Per request: TTFT (first non-empty content chunk), generated tokens (the server's streamed
`usage` when it sends one, else the number of content chunks), end-to-end latency. Per level:
aggregate generated tokens / wall time, TTFT p50/p95, mean per-stream decode rate, errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import aiohttp

from .errors import BenchError, UsageError

Endpoint = Literal["completions", "chat"]


@dataclass(frozen=True)
class Target:
    """One server under test. `model` None: the only model its /v1/models lists."""

    name: str  # "ours" / "peer"
    url: str  # base URL, with or without a trailing /v1
    api_key: str | None = None
    model: str | None = None

    @property
    def base(self) -> str:
        u = self.url.rstrip("/")
        return u[:-3] if u.endswith("/v1") else u

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Workload:
    """What every request asks for; identical for both servers."""

    endpoint: Endpoint = "completions"
    max_tokens: int = 128
    prompt: str | None = None  # None: a short distinct prompt per request
    prompt_tokens: int | None = None  # approximate prompt length (one word ≈ one token)
    banned: tuple[int, ...] = ()  # token ids given a logit_bias of -100

    def prompt_for(self, i: int) -> str:
        """Request i's prompt. A distinct head per request, so prefix caches cannot skip
        reading a prompt on one server and not the other (unless --prompt fixes the text)."""
        if self.prompt is not None:
            return self.prompt
        head = f"Request {i}: write a short story about the number {i * 7 + 3}."
        if self.prompt_tokens is None:
            return head
        return head + " the" * max(0, self.prompt_tokens - 16)

    def body(self, model: str, i: int, max_tokens: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if self.banned:
            body["logit_bias"] = {str(t): -100 for t in self.banned}
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt_for(i)}]
        else:
            body["prompt"] = self.prompt_for(i)
        return body


@dataclass
class RequestResult:
    ttft_s: float | None = None
    latency_s: float = 0.0
    tokens: int = 0
    usage_reported: bool = False  # tokens came from the server's usage, not chunk counting
    error: str | None = None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """This stream's rate after its first token: (tokens - 1) / (latency - TTFT)."""
        if self.error or self.ttft_s is None or self.tokens < 2 or self.latency_s <= self.ttft_s:
            return None
        return (self.tokens - 1) / (self.latency_s - self.ttft_s)


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (statistics.quantiles' 'inclusive')."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@dataclass
class LevelResult:
    concurrency: int
    wall_s: float
    requests: list[RequestResult] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.requests if not r.error)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return sum(1 for r in self.requests if r.error)

    def _ttfts(self) -> list[float]:
        return [r.ttft_s for r in self.requests if not r.error and r.ttft_s is not None]

    @property
    def ttft_p50_s(self) -> float | None:
        return _percentile(self._ttfts(), 0.50)

    @property
    def ttft_p95_s(self) -> float | None:
        return _percentile(self._ttfts(), 0.95)

    @property
    def decode_tokens_per_s_mean(self) -> float | None:
        rates = [r for r in (x.decode_tokens_per_s for x in self.requests) if r is not None]
        return statistics.fmean(rates) if rates else None

    @property
    def first_error(self) -> str | None:
        return next((r.error for r in self.requests if r.error), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": len(self.requests),
            "errors": self.errors,
            "wall_s": self.wall_s,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "ttft_p50_s": self.ttft_p50_s,
            "ttft_p95_s": self.ttft_p95_s,
            "decode_tokens_per_s_mean": self.decode_tokens_per_s_mean,
            "per_request": [asdict(r) for r in self.requests],
        }


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        errno = e.os_error.errno
        return f"cannot connect: {os.strerror(errno).lower() if errno else e.os_error}"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """OpenAI's error shape when the server sends one, else the start of the body."""
    raw = await resp.text(errors="replace")
    try:
        msg = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = raw.strip()[:200]
    return f"HTTP {resp.status}: {msg}"


def _content(endpoint: Endpoint, choice: dict[str, Any]) -> str:
    if endpoint == "chat":
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


async def run_request(
    session: aiohttp.ClientSession, target: Target, model: str, workload: Workload, i: int,
    max_tokens: int | None = None,
) -> RequestResult:
    """One streaming request; failures are returned in `error`, never raised."""
    path = "/v1/chat/completions" if workload.endpoint == "chat" else "/v1/completions"
    res = RequestResult()
    chunks = 0
    t0 = time.perf_counter()
    try:
        async with session.post(target.base + path, json=workload.body(model, i, max_tokens),
                                headers=target.headers()) as resp:
            if resp.status != 200:
                res.error = await _error_text(resp)
                return res
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    err = event["error"]
                    res.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                    return res
                for choice in event.get("choices") or []:
                    if _content(workload.endpoint, choice):
                        chunks += 1
                        if res.ttft_s is None:
                            res.ttft_s = time.perf_counter() - t0
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    res.tokens, res.usage_reported = int(usage["completion_tokens"]), True
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
        res.error = _describe(e)
        return res
    finally:
        res.latency_s = time.perf_counter() - t0
    if not res.usage_reported:
        res.tokens = chunks
    return res


async def run_level(
    session: aiohttp.ClientSession, target: Target, model: str, workload: Workload,
    concurrency: int, requests: int, first_index: int = 0,
) -> LevelResult:
    """`requests` streams with at most `concurrency` in flight; wall time from the first
    start to the last end."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> RequestResult:
        async with gate:
            return await run_request(session, target, model, workload, first_index + i)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(requests)))
    return LevelResult(concurrency, time.perf_counter() - t0, list(results))


async def resolve_model(session: aiohttp.ClientSession, target: Target) -> str:
    """The target's model id: as given, else the only one its /v1/models lists."""
    if target.model:
        return target.model
    try:
        async with session.get(target.base + "/v1/models", headers=target.headers()) as resp:
            if resp.status != 200:
                raise BenchError(f"{target.base}: {await _error_text(resp)}")
            ids = [m["id"] for m in (await resp.json())["data"]]
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise BenchError(f"{target.base}: {_describe(e)}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"{target.base}: /v1/models did not answer like an OpenAI server") from e
    if len(ids) != 1:
        listed = ", ".join(ids) or "none"
        flag = "--model" if target.name == "ours" else "--peer-model"
        raise UsageError(f"{target.base} serves {len(ids)} models ({listed}): choose one with {flag}")
    return ids[0]


@dataclass
class BenchResult:
    workload: Workload
    models: dict[str, str]  # target name -> model id
    targets: list[Target]
    levels: list[dict[str, LevelResult]]  # per concurrency: target name -> result
    order: list[list[str]]  # per level: target names in the order they ran

    @property
    def first_error(self) -> tuple[str, str] | None:
        for level in self.levels:
            for name, res in level.items():
                if res.first_error:
                    return name, res.first_error
        return None

    def to_dict(self) -> dict[str, Any]:
        levels = []
        for level, order in zip(self.levels, self.order):
            entry: dict[str, Any] = {"concurrency": next(iter(level.values())).concurrency, "order": order}
            for name, res in level.items():
                entry[name] = res.to_dict()
            if "ours" in level and "peer" in level and level["peer"].tokens_per_s > 0:
                entry["ratio"] = level["ours"].tokens_per_s / level["peer"].tokens_per_s
            levels.append(entry)
        w = self.workload
        return {
            "settings": {
                "endpoint": w.endpoint, "max_tokens": w.max_tokens, "prompt": w.prompt,
                "prompt_tokens": w.prompt_tokens, "banned_tokens": list(w.banned),
            },
            "servers": {t.name: {"url": t.base, "model": self.models[t.name]} for t in self.targets},
            "levels": levels,
        }


async def run_bench(
    targets: Sequence[Target], workload: Workload, levels: Sequence[int],
    requests_per_level: int | None = None, read_timeout_s: float = 600.0,
    on_level: Callable[[dict[str, LevelResult], dict[str, str]], None] | None = None,
) -> BenchResult:
    """Warm each target up with one request, then run every level on every target.

    Order: at level k, the targets run in turn, starting with target k mod n (ours first at
    the first level, the peer first at the second, ...), so slow drift of the machine
    (thermals, other load) does not always fall on the same side. Levels never overlap.
    A warm-up failure raises BenchError; failures while measuring are recorded.
    `on_level(level, models)` sees each level's results as soon as it is done (progressive output).
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout_s)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # a fresh connection per request: no stale keep-alive reuse
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        models = {t.name: await resolve_model(session, t) for t in targets}
        for t in targets:  # model load time and first-use costs stay out of the numbers
            warm = await run_request(session, t, models[t.name], workload, -1, max_tokens=min(8, workload.max_tokens))
            if warm.error:
                raise BenchError(f"{t.base}: {warm.error}")
        out: list[dict[str, LevelResult]] = []
        order: list[list[str]] = []
        index = 0
        for k, c in enumerate(levels):
            n = requests_per_level or max(4, 2 * c)
            turn = [targets[(k + j) % len(targets)] for j in range(len(targets))]
            level: dict[str, LevelResult] = {}
            for t in turn:
                level[t.name] = await run_level(session, t, models[t.name], workload, c, n, index)
            out.append({t.name: level[t.name] for t in targets})
            if on_level is not None:
                on_level(out[-1], models)
            order.append([t.name for t in turn])
            index += n
        return BenchResult(workload, models, list(targets), out, order)


def eog_token_ids(path: str | Path) -> list[int]:
    """Every token llama.cpp treats as end of generation for this GGUF.

    Asked of llama.cpp itself (vocabulary only, no weights): the header's eos/eot/eom ids are
    not the whole set — llama.cpp also marks tokens such as Gemma's <end_of_turn> by their
    text — and both our engine and llama-server stop on exactly this set.
    """
    import llama_cpp

    from .engine import llamalog
    from .engine.vocab import Vocab

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--model-file {p}: no such file")
    llamalog.install()  # keep llama.cpp's load chatter off the terminal
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(p).encode(), params)
    if not model:
        raise UsageError(f"--model-file {p}: llama.cpp cannot read it as a GGUF model")
    try:
        return list(Vocab(model).eog_ids)
    finally:
        llama_cpp.llama_model_free(model)
