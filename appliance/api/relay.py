"""The one streaming relay chat and completions share: engine Generations -> one HTTP response.

- The first delta is pulled before any header is sent, so a request that fails early (bad
  prompt, context too long, engine failure) gets a real HTTP status instead of a 200 stream.
- A failure after streaming began becomes one error event, and the stream ends.
- The deltas already queued when the relay wakes up go out in one write (`Generation.ready`):
  at 16 streams the event loop, not the decode thread, was the busy one, and a write per token
  was half of its time.
- Every Generation is closed whatever happens (finished, failed, client gone), so the engine
  frees its slots.

An endpoint supplies `Choices`: what it keeps of each choice for the whole response, and the
chunks (api/chunks.py) it streams for each delta.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from aiohttp import web

from ..engine.generation import Generation
from ..engine.types import Delta, Usage
from ..errors import ApplianceError, EngineError
from .chunks import Chunk
from .sse import SSEStream
from .state import request_facts


class StreamHead(Protocol):
    """What ends a stream: chunks.Head for OpenAI's shapes; other APIs' Choices are their own head."""

    @property
    def include_usage(self) -> bool: ...

    def usage_chunk(self, usage: Usage) -> Chunk: ...


class Choices(Protocol):
    def add(self, generation: int, d: Delta) -> list[Chunk]:
        """Take one delta of the `generation`-th Generation; return the chunks to stream
        (nothing when not streaming)."""
        ...

    def response(self, usage: Usage) -> dict[str, Any]:
        """The whole (non-streamed) response body."""
        ...


async def next_delta(gen: AsyncIterator[Delta]) -> Delta | None:
    """The next delta or None at the end. The engine reports failures by raising; anything
    that is not already an ApplianceError becomes an EngineError (a 500 with a message)."""
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None
    except ApplianceError:
        raise
    except Exception as e:
        raise EngineError(f"generation failed: {e}") from e


def add_usage(total: Usage, u: Usage) -> None:
    """Sum the counts; the timings are the first generation's (Ollama's durations, the ones
    its clients divide by, are made from them)."""
    total.prompt_tokens += u.prompt_tokens
    total.completion_tokens += u.completion_tokens
    total.cached_tokens += u.cached_tokens
    total.prompt_eval_tokens += u.prompt_eval_tokens
    if total.ttft_s is None:
        total.ttft_s, total.decode_tokens_per_s = u.ttft_s, u.decode_tokens_per_s


async def relay(request: web.Request, head: StreamHead, stream: bool, choices: Choices,
                generations: Sequence[Callable[[], Generation]],
                stream_type: Callable[[web.Request], SSEStream] = SSEStream) -> web.StreamResponse:
    """Run `generations` (each starts one engine Generation) one after another into one
    response: a stream when `stream` (OpenAI's SSE unless `stream_type` frames it otherwise:
    Ollama's NDJSON, llama-server's SSE without [DONE]), else `choices.response(...)` as JSON."""
    facts = request_facts(request)
    facts.stream = stream
    total = Usage()
    sse: SSEStream | None = None
    for k, start in enumerate(generations):
        gen = start()
        try:
            try:
                d = await next_delta(gen)  # before any header: early failures are real HTTP errors
                if stream and sse is None:
                    sse = stream_type(request)
                    await sse.open()
                while d is not None:
                    chunks = choices.add(k, d)
                    for more in gen.ready():  # everything already here goes out in one write
                        chunks += choices.add(k, more)
                    if chunks:
                        assert sse is not None
                        await sse.send_many(chunks)
                    d = await next_delta(gen)
            except ApplianceError as e:
                if sse is None:
                    raise
                return await sse.error(e)
        finally:
            if not gen.finished:  # cut short (client gone, error): count what it cost so far
                facts.add_usage(gen.delivered)
            await gen.aclose()
        facts.add_usage(gen.usage)
        add_usage(total, gen.usage)
    if sse is None:
        return web.json_response(choices.response(total))
    await sse.done([head.usage_chunk(total)] if head.include_usage else [])
    return sse.response
