"""A request's own keep_alive (Ollama's `keep_alive`): it replaces the catalog's until the
model next unloads, and /admin's rows say when the idle model is due (`unload_at`)."""

from __future__ import annotations

import math
from pathlib import Path

from schedharness import GB, make, settle, use


async def test_request_keep_alive_until_the_next_unload(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"keep_alive": "5m"}})
    await use(h, "a")
    h.sched.set_keep_alive("a", 30)
    await settle()
    row = h.sched.status("a")
    assert row.unload_at is not None
    h.clock.advance(29)
    await settle()
    assert h.state("a") == "loaded"
    h.clock.advance(1)
    await settle()
    assert h.state("a") == "unloaded"
    await use(h, "a")  # loaded again: the catalog's 5m applies
    h.clock.advance(60)
    await settle()
    assert h.state("a") == "loaded"
    h.sched.set_keep_alive("a", math.inf)  # forever (until evicted): not due
    h.clock.advance(10**6)
    await settle()
    assert h.state("a") == "loaded" and h.sched.status("a").unload_at is None
    h.sched.set_keep_alive("a", 0)
    await settle()
    assert h.state("a") == "unloaded"
