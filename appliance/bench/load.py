"""Closed-loop load over HTTP: C clients, each streaming one request after another.

Why over HTTP and not in process (appliance/engine/bench.py does that): what a user feels is
the whole path — auth, admission queue, scheduler, SSE framing — and the only fair comparison
with another server (llama-server, llama-cpp-python's server, a second appliance) is the same
requests on the same wire.

Per request: TTFT (first non-empty content chunk), the arrival time of every content chunk
(inter-token latency), generated tokens (the server's streamed `usage` when it sends one, else
the number of content chunks), end-to-end latency, the HTTP status. Per level: aggregate
generated tokens / wall time, requests/s, TTFT and inter-token latency p50/p95, errors split
into 429s, 5xx and the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import aiohttp

from ..errors import BenchError, UsageError

Endpoint = Literal["completions", "chat"]

# A schema whose answers are long enough to keep a stream busy (a name and a list of strings).
DEFAULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "items": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "items"],
}


@dataclass(frozen=True)
class Target:
    """One server under test. `model` None: the only model its /v1/models lists."""

    name: str  # "ours", "peer", "llama-server", ...
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
    """What every request asks for; identical for every server."""

    endpoint: Endpoint = "completions"
    max_tokens: int = 128
    prompt: str | None = None  # None: a short distinct prompt per request
    prompt_tokens: int | None = None  # approximate prompt length (one word ≈ one token)
    banned: tuple[int, ...] = ()  # token ids given a logit_bias of -100
    temperature: float = 0.0  # the only sampling field sent, as OpenAI clients send it
    long_every: int = 0  # mixed prompts: every long_every-th request's prompt is long
    long_tokens: int = 0  # its approximate length
    seed: int = 0  # in every prompt: a fresh one per run leaves no server a cached prefix

    def is_long(self, i: int) -> bool:
        return self.long_every > 0 and i % self.long_every == self.long_every - 1

    def prompt_for(self, i: int) -> str:
        """Request i's prompt. A distinct head per request and run, so prefix caches cannot
        skip reading a prompt on one server and not the other (unless --prompt fixes the text)."""
        if self.prompt is not None:
            return self.prompt
        head = f"Request {i} of run {self.seed}: write a short story about the number {i * 7 + 3}."
        size = self.long_tokens if self.is_long(i) else self.prompt_tokens
        if size is None:
            return head
        return head + " the" * max(0, size - 20)

    def body(self, model: str, i: int, max_tokens: int | None = None,
             schema: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request body; `schema` makes it a chat request with a json_schema response format
        (no banned tokens then: the grammar decides where the answer ends)."""
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": self.temperature,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if self.banned and schema is None:
            body["logit_bias"] = {str(t): -100 for t in self.banned}
        if self.endpoint == "chat" or schema is not None:
            body["messages"] = [{"role": "user", "content": self.prompt_for(i)}]
        else:
            body["prompt"] = self.prompt_for(i)
        if schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": schema}}
        return body

    def path(self, schema: bool = False) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" or schema else "/v1/completions"

    def settings(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "max_tokens": self.max_tokens, "prompt": self.prompt,
                "prompt_tokens": self.prompt_tokens, "banned_tokens": list(self.banned),
                "temperature": self.temperature, "long_every": self.long_every,
                "long_tokens": self.long_tokens, "prompt_seed": self.seed}


@dataclass
class RequestResult:
    ttft_s: float | None = None
    latency_s: float = 0.0
    tokens: int = 0
    usage_reported: bool = False  # tokens came from the server's usage, not chunk counting
    status: int | None = None  # HTTP status; None when no response arrived
    error: str | None = None
    retry_after_s: float | None = None  # a 429's or 503's Retry-After
    schema: bool = False  # a json_schema request (the mixed scenario)
    long: bool = False  # a long prompt of the mixed-prompt workload
    finish_reason: str | None = None  # "stop", "length" (max_tokens), ...; None when none was streamed
    chunk_times: list[float] = field(default_factory=list)  # seconds since the request was sent
    text: str = ""  # kept for json_schema requests only (checked to parse)

    @property
    def valid_json(self) -> bool:
        try:
            json.loads(self.text)
        except ValueError:
            return False
        return True

    @property
    def gaps(self) -> list[float]:
        """Inter-token latencies: the time between consecutive content chunks."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def decode_tokens_per_s(self) -> float | None:
        """This stream's rate after its first token: (tokens - 1) / (latency - TTFT)."""
        if self.error or self.ttft_s is None or self.tokens < 2 or self.latency_s <= self.ttft_s:
            return None
        return (self.tokens - 1) / (self.latency_s - self.ttft_s)

    def to_dict(self) -> dict[str, Any]:
        return {"ttft_s": self.ttft_s, "latency_s": self.latency_s, "tokens": self.tokens,
                "usage_reported": self.usage_reported, "status": self.status, "error": self.error,
                "finish_reason": self.finish_reason, "schema": self.schema, "long": self.long}


def ratio(a: float, b: float) -> float | None:
    """a ÷ b; None where b is no figure (a server that produced no tokens)."""
    return a / b if b > 0 else None


def ratio_text(a: float, b: float) -> str:
    """`ratio` as the tables print it."""
    r = ratio(a, b)
    return "-" if r is None else f"{r:.2f}"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (statistics.quantiles' 'inclusive')."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@dataclass
class LevelResult:
    """One server at one concurrency; repeated runs add their requests and wall time."""

    concurrency: int
    wall_s: float = 0.0
    requests: list[RequestResult] = field(default_factory=list)
    runs: int = 0

    def add(self, other: "LevelResult") -> None:
        self.wall_s += other.wall_s
        self.requests.extend(other.requests)
        self.runs += other.runs

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.requests if not r.error]

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.ok)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return sum(1 for r in self.requests if r.error)

    @property
    def rejected(self) -> int:
        """429s: the server refused to queue (the expected answer to overload)."""
        return sum(1 for r in self.requests if r.status == 429)

    @property
    def server_errors(self) -> int:
        return sum(1 for r in self.requests if r.status is not None and r.status >= 500)

    def _ttfts(self, short_only: bool = False) -> list[float]:
        return [r.ttft_s for r in self.ok if r.ttft_s is not None and not (short_only and r.long)]

    def _gaps(self) -> list[float]:
        return [g for r in self.ok for g in r.gaps]

    @property
    def ttft_p50_s(self) -> float | None:
        return percentile(self._ttfts(), 0.50)

    @property
    def ttft_p95_s(self) -> float | None:
        return percentile(self._ttfts(), 0.95)

    @property
    def short_ttft_p50_s(self) -> float | None:
        """With mixed prompts: the short prompts' TTFT (do they wait behind the long ones?)."""
        return percentile(self._ttfts(short_only=True), 0.50) if self.mixed else None

    @property
    def short_ttft_p95_s(self) -> float | None:
        return percentile(self._ttfts(short_only=True), 0.95) if self.mixed else None

    @property
    def mixed(self) -> bool:
        return any(r.long for r in self.requests)

    @property
    def itl_p50_s(self) -> float | None:
        return percentile(self._gaps(), 0.50)

    @property
    def itl_p95_s(self) -> float | None:
        return percentile(self._gaps(), 0.95)

    @property
    def latency_p50_s(self) -> float | None:
        return percentile([r.latency_s for r in self.ok], 0.50)

    @property
    def latency_p95_s(self) -> float | None:
        return percentile([r.latency_s for r in self.ok], 0.95)

    @property
    def decode_tokens_per_s_mean(self) -> float | None:
        rates = [r for r in (x.decode_tokens_per_s for x in self.requests) if r is not None]
        return statistics.fmean(rates) if rates else None

    @property
    def first_error(self) -> str | None:
        return next((r.error for r in self.requests if r.error), None)

    def summary(self) -> dict[str, Any]:
        """The figures without the per-request list."""
        return {
            "concurrency": self.concurrency, "runs": self.runs, "requests": len(self.requests),
            "errors": self.errors, "rejected_429": self.rejected, "server_errors_5xx": self.server_errors,
            "wall_s": self.wall_s, "tokens": self.tokens, "tokens_per_s": self.tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "ttft_p50_s": self.ttft_p50_s, "ttft_p95_s": self.ttft_p95_s,
            "short_ttft_p50_s": self.short_ttft_p50_s, "short_ttft_p95_s": self.short_ttft_p95_s,
            "itl_p50_s": self.itl_p50_s, "itl_p95_s": self.itl_p95_s,
            "latency_p50_s": self.latency_p50_s, "latency_p95_s": self.latency_p95_s,
            "decode_tokens_per_s_mean": self.decode_tokens_per_s_mean,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_request": [r.to_dict() for r in self.requests]}


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


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    try:
        return float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _content(choice: dict[str, Any]) -> str:
    """A chunk's generated text: `delta.content` (chat) or `text` (completions)."""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


async def run_request(
    session: aiohttp.ClientSession, target: Target, model: str, workload: Workload, i: int,
    max_tokens: int | None = None, schema: dict[str, Any] | None = None,
) -> RequestResult:
    """One streaming request; failures are returned in `error`, never raised."""
    res = RequestResult(schema=schema is not None, long=schema is None and workload.is_long(i))
    chunks = 0
    t0 = time.perf_counter()
    try:
        async with session.post(target.base + workload.path(schema is not None),
                                json=workload.body(model, i, max_tokens, schema),
                                headers=target.headers()) as resp:
            res.status = resp.status
            if resp.status != 200:
                res.retry_after_s = _retry_after(resp)
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
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
                    piece = _content(choice)
                    if piece:
                        chunks += 1
                        if res.schema:
                            res.text += piece
                        res.chunk_times.append(time.perf_counter() - t0)
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    res.tokens, res.usage_reported = int(usage["completion_tokens"]), True
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
        res.error = _describe(e)
        return res
    finally:
        res.latency_s = time.perf_counter() - t0
        if res.chunk_times:
            res.ttft_s = res.chunk_times[0]
    if not res.usage_reported:
        res.tokens = chunks
    return res


async def run_level(
    session: aiohttp.ClientSession, target: Target, model: str, workload: Workload,
    concurrency: int, per_client: int, first_index: int = 0, schema_clients: int = 0,
    schema: dict[str, Any] | None = None, honour_retry_after: float = 0.0,
) -> LevelResult:
    """`concurrency` clients, each sending `per_client` streams one after another (closed loop).

    With `schema_clients`, that many clients send json_schema chat requests instead, and keep
    sending them until every plain client is done (so they load the whole level); the level's
    wall time then ends with the last plain request. `honour_retry_after` > 0: a client that got
    a 429/503 waits its Retry-After (at most that many seconds) before its next request, as the
    official clients do.
    """
    plain_done = asyncio.Event()
    results: list[RequestResult] = []

    async def client(j: int) -> None:
        is_schema = j < schema_clients
        k = 0
        while (not plain_done.is_set()) if is_schema else k < per_client:
            r = await run_request(session, target, model, workload, first_index + j + k * concurrency,
                                  schema=(schema or DEFAULT_SCHEMA) if is_schema else None)
            results.append(r)
            k += 1
            if r.retry_after_s and honour_retry_after > 0 and k < per_client:
                await asyncio.sleep(min(r.retry_after_s, honour_retry_after))

    t0 = time.perf_counter()
    schema_tasks = [asyncio.ensure_future(client(j)) for j in range(schema_clients)]
    await asyncio.gather(*(client(j) for j in range(schema_clients, concurrency)))
    wall = time.perf_counter() - t0
    plain_done.set()
    await asyncio.gather(*schema_tasks)
    return LevelResult(concurrency, wall, results, runs=1)


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
    order: list[list[list[str]]]  # per level, per repeat: target names in the order they ran
    extra: dict[str, Any] = field(default_factory=dict)  # scenarios, ceiling, machine, settings

    @property
    def first_error(self) -> tuple[str, str] | None:
        for level in self.levels:
            for name, res in level.items():
                if res.first_error:
                    return name, res.first_error
        return None

    def to_dict(self, per_request: bool = True) -> dict[str, Any]:
        """`ratios` per level: the first server's tok/s over each other one's."""
        base = self.targets[0].name
        levels = []
        for level, order in zip(self.levels, self.order):
            entry: dict[str, Any] = {"concurrency": level[base].concurrency, "order": order}
            for name, res in level.items():
                entry[name] = res.to_dict() if per_request else res.summary()
            entry["ratios"] = {n: ratio(level[base].tokens_per_s, r.tokens_per_s) for n, r in level.items() if n != base}
            levels.append(entry)
        return {
            "settings": self.workload.settings(),
            "servers": {t.name: {"url": t.base, "model": self.models[t.name]} for t in self.targets},
            "levels": levels,
            **self.extra,
        }


async def warm_up(session: aiohttp.ClientSession, targets: Sequence[Target], models: dict[str, str],
                  workload: Workload) -> None:
    """One short request per server: model load and first-use costs stay out of the numbers."""
    for t in targets:
        warm = await run_request(session, t, models[t.name], workload, -1, max_tokens=min(8, workload.max_tokens))
        if warm.error:
            raise BenchError(f"{t.base}: {warm.error}")


def client_session(read_timeout_s: float = 600.0) -> aiohttp.ClientSession:
    """A session without connection limits; a fresh connection per request (no stale keep-alive)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout_s)
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=True))


async def run_bench(
    targets: Sequence[Target], workload: Workload, levels: Sequence[int],
    per_client: int = 2, repeat: int = 1,
    on_level: Callable[[dict[str, LevelResult], dict[str, str]], None] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> BenchResult:
    """Warm each target up, then run every level on every target, `repeat` times.

    Order: the servers take turns, and the first one rotates with every run (level k, repeat r
    starts with target (k·repeat + r) mod n), so slow drift of the machine (thermals, other
    load) does not always fall on the same side. Runs never overlap. A warm-up failure raises
    BenchError; failures while measuring are recorded. `on_level(level, models)` sees each
    level's results as soon as it is done (progressive output).
    """
    own = session is None
    s = session or client_session()
    try:
        models = {t.name: await resolve_model(s, t) for t in targets}
        await warm_up(s, targets, models, workload)
        out: list[dict[str, LevelResult]] = []
        order: list[list[list[str]]] = []
        index = 0
        turn_no = 0
        for c in levels:
            level = {t.name: LevelResult(c) for t in targets}
            level_order: list[list[str]] = []
            for _ in range(repeat):
                turn = [targets[(turn_no + j) % len(targets)] for j in range(len(targets))]
                turn_no += 1
                for t in turn:
                    level[t.name].add(await run_level(s, t, models[t.name], workload, c, per_client, index))
                level_order.append([t.name for t in turn])
                index += c * per_client
            out.append(level)
            order.append(level_order)
            if on_level is not None:
                on_level(level, models)
        return BenchResult(workload, models, list(targets), out, order)
    finally:
        if own:
            await s.close()


def eog_token_ids(path: str | Path) -> list[int]:
    """Every token llama.cpp treats as end of generation for this GGUF.

    Asked of llama.cpp itself (vocabulary only, no weights): the header's eos/eot/eom ids are
    not the whole set — llama.cpp also marks tokens such as Gemma's <end_of_turn> by their
    text — and both our engine and llama-server stop on exactly this set.
    """
    import llama_cpp

    from ..engine import llamalog
    from ..engine.vocab import Vocab

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
