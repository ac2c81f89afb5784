"""RPC workers' free memory for the planner: read off the event loop, cached, never waited on.

ggml-rpc's calls are network I/O: a connect timeout on a dead worker, a query queued behind
a graph the worker is computing, and a wait without end on a connection whose worker died
(llama.cpp keeps the dead dispatcher). So the planner never makes them. `reading()` answers
from the cache when the reading is fresh, else starts a read in a thread (through the
scheduler's `run_blocking`) and answers None: the model waits, and the scheduler runs again
when the read ends (`on_done`).

A reading is fresh for `MAX_AGE_S` of the injected clock, and only while no load or unload
on that worker began or ended since it started (`begin`/`end`, called by the scheduler around
every operation whose model holds a worker's memory): each load attempt plans on a reading
taken after the last change the appliance itself made there. While such an operation runs,
nothing is read (the worker's memory is in motion). A worker that did not answer is a reading
too (its `WorkerUnreachable`): raised to the model's waiters once, then forgotten, so the
next request asks again (the worker may be back). A read that timed out may never return:
until it does, no second one starts and every plan that needs the worker gets its error.

Each worker device gets a stable charge key from `WORKER_INDEX_BASE` up (never a local GPU's
index), so charges of local devices and workers share one dict per model.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence

from ..clock import Clock
from ..errors import ApplianceError, WorkerUnreachable

WORKER_INDEX_BASE = 1 << 16
MAX_AGE_S = 5.0  # a reading older than this is read again before a plan uses it
READ_TIMEOUT_S = 15.0  # a read still running after this is a worker that does not answer

# endpoint -> (label, free, total) of each of its devices, read now; raises WorkerUnreachable.
DeviceReader = Callable[[str], "list[tuple[str, int, int]]"]

log = logging.getLogger("appliance.scheduler")


def read_devices(endpoint: str) -> list[tuple[str, int, int]]:
    """The production reader: ggml-rpc's device memory (blocking: call it in a thread)."""
    from ..hardware.rpc import remote_devices

    return [(d.label, d.free, d.total) for d in remote_devices([endpoint])]


@dataclass(frozen=True)
class WorkerDevice:
    """One worker device as the planner sees it."""

    index: int  # charge key (>= WORKER_INDEX_BASE)
    label: str  # "rpc:host:port#0"
    free: int  # bytes free when read
    ours: int  # bytes our models were charged there when read (included in what is not free)


@dataclass(frozen=True)
class _Reading:
    devices: tuple[WorkerDevice, ...]
    error: ApplianceError | None
    at: float
    epoch: int


class WorkerMemory:
    """The cache of readings per worker endpoint; all methods run on the event loop."""

    def __init__(self, clock: Clock, run_blocking: Callable[..., Awaitable[Any]],
                 reader: DeviceReader, on_done: Callable[[], None]) -> None:
        self._clock, self._run, self._reader, self._on_done = clock, run_blocking, reader, on_done
        self._readings: dict[str, _Reading] = {}
        self._epoch: dict[str, int] = {}
        self._busy: dict[str, int] = {}  # endpoint -> operations running there
        self._reading_now: set[str] = set()
        self._stuck: dict[str, str] = {}  # endpoint -> why, while a read past READ_TIMEOUT_S runs on
        self._keys: dict[str, int] = {}  # device label -> charge key
        self._endpoint: dict[int, str] = {}  # charge key -> its worker's endpoint
        self._tasks: set[asyncio.Task[None]] = set()

    # --- what the planner asks ------------------------------------------------------------

    def reading(self, endpoints: Sequence[str], ours: Callable[[int], int]) -> list[WorkerDevice] | None:
        """The devices of `endpoints` if every reading is fresh; else None, after starting the
        reads missing (`ours(key)`: bytes our models hold on a device, recorded with the
        reading). Raises the WorkerUnreachable of a worker that did not answer, once."""
        out: list[WorkerDevice] = []
        missing = False
        for ep in endpoints:
            r = self._readings.get(ep)
            if r is not None and r.error is not None:
                del self._readings[ep]  # told once: the next request asks the worker again
                raise r.error
            if r is None and ep in self._stuck:  # no read can start: it does not answer, still
                raise WorkerUnreachable(ep, self._stuck[ep])
            if r is None or not self._fresh(ep, r):
                missing = True
                self._start(ep, ours)
            elif not missing:
                out.extend(r.devices)
        return None if missing else out

    def label(self, key: int) -> str | None:
        return next((lab for lab, k in self._keys.items() if k == key), None)

    def endpoints_of(self, keys: Iterable[int]) -> set[str]:
        """The workers holding any of these charge keys (a model's charges)."""
        return {self._endpoint[k] for k in keys if k in self._endpoint}

    # --- what the scheduler reports ---------------------------------------------------------

    def begin(self, endpoints: Iterable[str]) -> None:
        """A load or unload on these workers starts: their readings are stale from now."""
        for ep in endpoints:
            self._epoch[ep] = self._epoch.get(ep, 0) + 1
            self._busy[ep] = self._busy.get(ep, 0) + 1

    def end(self, endpoints: Iterable[str]) -> None:
        for ep in endpoints:
            self._epoch[ep] = self._epoch.get(ep, 0) + 1
            self._busy[ep] = max(0, self._busy.get(ep, 0) - 1)

    async def refresh(self, endpoints: Sequence[str], ours: Callable[[int], int]) -> list[WorkerDevice]:
        """Read now and wait (start's check of pinned models); raises WorkerUnreachable."""
        for ep in endpoints:
            self._readings.pop(ep, None)
            await self._read(ep, ours)
        found = self.reading(endpoints, ours)
        if found is None:  # an operation began meanwhile: nothing can run before start() ends
            raise WorkerUnreachable(", ".join(endpoints), "its memory could not be read")
        return found

    def cancel(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    # --- internals --------------------------------------------------------------------------

    def _fresh(self, ep: str, r: _Reading) -> bool:
        return (r.epoch == self._epoch.get(ep, 0) and not self._busy.get(ep)
                and self._clock.monotonic() - r.at <= MAX_AGE_S)

    def _start(self, ep: str, ours: Callable[[int], int]) -> None:
        if ep in self._reading_now or self._busy.get(ep):
            return  # one read at a time; none while the worker's memory is in motion

        async def run() -> None:
            try:
                await self._read(ep, ours)
            finally:
                self._tasks.discard(task)
                self._on_done()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)

    def _unstuck(self, ep: str) -> None:
        """A read that timed out returned after all: the worker may be asked again."""
        self._reading_now.discard(ep)
        self._stuck.pop(ep, None)

    def _failed(self, ep: str, err: ApplianceError, epoch: int) -> None:
        """A reading that is the worker's error (raised to the next plan that needs it)."""
        self._readings[ep] = _Reading((), err, self._clock.monotonic(), epoch)

    async def _read(self, ep: str, ours: Callable[[int], int]) -> None:
        epoch = self._epoch.get(ep, 0)
        self._reading_now.add(ep)
        fut = asyncio.ensure_future(self._run(self._reader, ep))
        try:
            found = await asyncio.wait_for(asyncio.shield(fut), READ_TIMEOUT_S)
        except WorkerUnreachable as e:
            self._failed(ep, e, epoch)
            self._reading_now.discard(ep)
            return
        except asyncio.TimeoutError:
            # The thread may never return (a worker that died under llama.cpp's connection):
            # no second read is started for this worker until it does, and until then every
            # plan that needs it gets this error at once rather than waiting on that read.
            why = f"it did not answer within {READ_TIMEOUT_S:g}s"
            self._stuck[ep] = why
            fut.add_done_callback(lambda _: self._unstuck(ep))
            self._failed(ep, WorkerUnreachable(ep, why), epoch)
            return
        except Exception as e:  # no RPC backend, a malformed answer: the model cannot use it
            self._failed(ep, WorkerUnreachable(ep, str(e)), epoch)
            self._reading_now.discard(ep)
            return
        self._reading_now.discard(ep)
        if self._epoch.get(ep, 0) != epoch:
            return  # an operation on it began or ended meanwhile: read again when asked
        devices = []
        for label, free, _total in found:
            key = self._keys.setdefault(label, WORKER_INDEX_BASE + len(self._keys))
            self._endpoint[key] = ep
            devices.append(WorkerDevice(key, label, int(free), ours(key)))
        self._readings[ep] = _Reading(tuple(devices), None, self._clock.monotonic(), epoch)
