"""How many requests an idle runner should wait for before its first step (a pure policy).

Closed-loop clients that a step released together (their requests ended in it) send their
next requests together, but the event loop parses them one after another over a few
milliseconds. A runner that starts a prompt step on the first of them makes the others wait
for that whole step, and then for theirs: measured on the CPU with 16 clients and a
2,048-token budget, a round's 16 prompts went out in two or three steps (3 + 13, 4 + 12, 1 +
5 + 10) instead of one (docs/engine.md, "Time to first token"). So when the step that left
the runner idle released `k` requests, the next idle wake-up waits until `k` requests are
queued: the clients that step set free are expected back, unless the prompts already queued
fill the first step's token budget (then the step starts at once: the others could not join
it). The wait is bounded by `window_s` (the runner's `arrival_wait_s`), and expected only
within `window_s` of going idle: a client that comes back later (a person reading the
answer) is not waited for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Arrivals:
    """Counts the requests each step finishes; says how many to expect at an idle wake-up."""

    window_s: float
    _finished: int = 0  # requests finished in the step now running
    _expect: int = 0  # requests the step that left the runner idle finished
    _idle_since: float = float("-inf")

    def finished(self) -> None:
        """A request ended normally in this step (not cancelled, not failed): its client may
        send the next one at once."""
        self._finished += 1

    def step_done(self, idle: bool, now: float) -> None:
        """The step is over (called before its deltas go out); `idle`: it left no slot held."""
        if idle:
            self._expect, self._idle_since = self._finished, now
        else:
            self._expect = 0
        self._finished = 0

    def expected(self, now: float) -> int:
        """Requests to have queued before an idle runner's first step: those the last step
        released, while they may still be on their way back (within `window_s` of it)."""
        return self._expect if now - self._idle_since <= self.window_s else 0

    def should_wait(self, queued: int, queued_tokens: int, budget: int, now: float) -> bool:
        """Whether an idle runner with `queued` requests (`queued_tokens` prompt tokens in
        all) should wait for more before its first step: fewer than expected are here and
        their prompts leave room in the step's `budget` (once it is full, waiting only
        delays the ones already here)."""
        return queued < self.expected(now) and queued_tokens < budget
