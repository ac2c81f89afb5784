"""Pulls started from the console: run in a worker thread, progress visible while they run.

`POST /admin/models/{id}/pull` answers only when the download is over; the console instead
starts a pull here and shows its progress through the status stream. One pull per model at
a time (asking again while it runs returns the running one); the last outcome of each model
stays visible until the next pull, so a failure is read, not missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

from ..errors import ApplianceError
from ..store.download import ProgressFn

log = logging.getLogger("appliance.console")

PullFn = Callable[[str, ProgressFn], Any]  # (model id, progress) -> anything; blocking


@dataclass
class PullProgress:
    model: str
    state: Literal["running", "done", "failed"] = "running"
    file: str | None = None
    done: int = 0  # bytes of the current file
    total: int | None = None
    error: str | None = None
    started: float = 0.0  # Unix time

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Pulls:
    def __init__(self, pull: PullFn, on_change: Callable[[], None] = lambda: None) -> None:
        self._pull = pull
        self._on_change = on_change
        self._rows: dict[str, PullProgress] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, model_id: str) -> PullProgress:
        """Begin pulling `model_id` (a canonical id) unless a pull of it is running."""
        row = self._rows.get(model_id)
        if row is not None and row.state == "running":
            return row
        row = self._rows[model_id] = PullProgress(model_id, started=time.time())
        task = asyncio.get_running_loop().create_task(self._run(row))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._on_change()
        return row

    async def _run(self, row: PullProgress) -> None:
        loop = asyncio.get_running_loop()

        def progress(name: str, done: int, total: int | None) -> None:  # in the worker thread
            loop.call_soon_threadsafe(self._progress, row, name, done, total)

        try:
            await asyncio.to_thread(self._pull, row.model, progress)
        except ApplianceError as e:
            row.state, row.error = "failed", e.message
        except Exception as e:  # shown on the page; the traceback goes to the log
            log.exception("console pull of %s failed", row.model)
            row.state, row.error = "failed", f"internal error: {e}"
        else:
            row.state = "done"
        self._on_change()

    def _progress(self, row: PullProgress, name: str, done: int, total: int | None) -> None:
        row.file, row.done, row.total = name, done, total
        self._on_change()

    def snapshot(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self._rows.values()]

    async def close(self) -> None:
        """Wait for running pulls (a thread cannot be cancelled mid-copy; the store's
        partial files make an interrupted download resumable anyway)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
