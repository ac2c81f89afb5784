"""Randomized request bodies (hypothesis) against a real daemon: never a 5xx, every error in
OpenAI's shape, and /health answering after each one. Bounded: a fixed number of examples,
a tiny model with a small context (any generation ends quickly)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from test_api_support import pull_all, serving, write_config

EXAMPLES = 120
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]

# every code point, lone surrogates included ("\ud800" once gave a 500)
text = st.text(alphabet=st.characters(exclude_categories=()), max_size=20)
scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | text
anything = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                           "content": text | anything}), max_size=3)
schemas = st.sampled_from([
    {"type": "object"}, {"type": "string", "pattern": "^(a|a?a|a*){0,50}b$"}, {"type": "string", "minLength": 10**9},
    {"type": "integer", "minimum": 5, "maximum": 1}, {"type": "string", "pattern": "^[z-a]$"}, {"enum": []},
]) | anything
fields = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["tiny", "tiny", "emb", "nope"]),
    "messages": messages | anything,
    "prompt": text | st.lists(st.integers(-5, 40000), max_size=5) | anything,
    "input": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=3) | anything,
    "max_tokens": st.integers(-2, 40) | anything,
    "n": st.integers(-1, 5),
    "temperature": st.floats(allow_nan=False) | anything,
    "top_p": st.floats(allow_nan=False),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=5) | anything,
    "stream": st.booleans(),
    "logprobs": st.booleans() | st.integers(-1, 8),
    "top_logprobs": st.integers(-1, 30),
    "logit_bias": st.dictionaries(st.text(max_size=6), st.floats(allow_nan=False), max_size=3) | anything,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "x"]),
                                              "json_schema": st.fixed_dictionaries({"name": st.just("s"),
                                                                                    "schema": schemas})}) | anything,
    "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.sampled_from(["f", "g", "bad name"])}, optional={"parameters": schemas})}), max_size=2) | anything,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | anything,
    "seed": st.integers(-2**70, 2**70),
    "encoding_format": st.sampled_from(["float", "base64", "x"]),
})
bodies = fields.map(lambda d: {"max_tokens": 4, **d}) | anything


@contextlib.contextmanager
def live_daemon(settings_: Any) -> Iterator[str]:
    """The daemon on its own event loop in a thread, so the test drives it with blocking HTTP."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    stop = asyncio.Event()
    ready = threading.Event()

    async def main() -> None:
        try:
            async with serving(settings_) as d:
                started["url"] = d.url
                ready.set()
                await stop.wait()
        finally:
            ready.set()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    ready.wait(120)
    try:
        assert "url" in started, "the daemon did not start"
        yield started["url"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(60)


def send(url: str, path: str, data: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_random_bodies_never_break_the_daemon(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    s = write_config(tmp_path, {
        "tiny": {"source": f"file://{tiny_models['a']}", "context": 128, "parallel": 2, "keep_alive": "forever"},
        "emb": {"source": f"file://{tiny_models['b']}", "context": 64, "parallel": 2, "embedding": True},
    })
    pull_all(s)
    with live_daemon(s) as url:

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(path=st.sampled_from(PATHS), body=bodies)
        @example(path="/v1/completions", body={"model": "tiny", "prompt": "\ud800", "max_tokens": 2})
        @example(path="/v1/chat/completions", body={"model": "tiny", "messages": [{"role": "user", "content": "\udfff"}]})
        @example(path="/v1/embeddings", body={"model": "emb", "input": ["\ud800"]})
        def check(path: str, body: Any) -> None:
            data = json.dumps(body).encode()
            status, raw = send(url, path, data)
            assert status < 500, (status, raw[:500])
            if status >= 400:
                err = json.loads(raw)["error"]
                assert set(err) == {"message", "type", "param", "code"}, raw[:500]
            with urllib.request.urlopen(url + "/health", timeout=30) as r:
                assert r.status == 200

        check()
