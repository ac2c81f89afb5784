"""One model per GPU: each server serves the same GGUF twice, once per GPU, and C clients
drive each copy at once; against the same server with C clients on its first copy alone.

A "server" here is a group of targets: the appliance is one process with two model ids
(`gpu = 0`, `gpu = 1`), a llama-server peer two processes (`-dev CUDA0`, `-dev CUDA1`). Per
level and server: the one-GPU run, the two-GPU run (aggregate and per copy) and the scaling
(two-GPU aggregate tok/s over one-GPU tok/s; 2.0 is perfect). The servers take turns and the
first one rotates with every run, as in load.run_bench.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import aiohttp

from .load import (LevelResult, Target, Workload, client_session, ratio, ratio_text, resolve_model, run_level,
                   warm_up)


@dataclass(frozen=True)
class Group:
    """One server under test: its first target is the one-GPU baseline."""

    name: str
    targets: tuple[Target, ...]


@dataclass
class GroupLevel:
    """One server at one concurrency (clients per copy)."""

    one: LevelResult  # C clients on the first copy alone
    both: LevelResult  # 2·C clients, C on each copy, wall time of the pair
    each: list[LevelResult]  # the two-GPU run per copy

    @property
    def scaling(self) -> float | None:
        return ratio(self.both.tokens_per_s, self.one.tokens_per_s)

    def rows(self, name: str) -> dict[str, LevelResult]:
        """Named results for report.rows, the two-GPU aggregate first (so that its `vs first`
        column holds the first server's two-GPU aggregate over each row)."""
        return {f"{name} 2 GPUs": self.both, **{f"{name} gpu{i}": r for i, r in enumerate(self.each)},
                f"{name} 1 GPU": self.one}

    def to_dict(self, per_request: bool) -> dict[str, Any]:
        def out(r: LevelResult) -> dict[str, Any]:
            return r.to_dict() if per_request else r.summary()

        return {"one_gpu": out(self.one), "two_gpus": out(self.both),
                "per_model": [out(r) for r in self.each], "scaling": self.scaling}


@dataclass
class PerModelResult:
    workload: Workload
    groups: list[Group]
    models: dict[str, str]  # member target name -> model id
    levels: list[dict[str, GroupLevel]]  # per concurrency: server name -> its figures
    order: list[list[list[str]]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def targets(self) -> list[Target]:
        return [t for g in self.groups for t in g.targets]

    @property
    def first_error(self) -> tuple[str, str] | None:
        for level in self.levels:
            for g in self.groups:
                gl = level[g.name]
                for t, r in [(g.targets[0], gl.one), *zip(g.targets, gl.each)]:
                    if r.first_error:
                        return t.name, r.first_error
        return None

    def to_dict(self, per_request: bool = True) -> dict[str, Any]:
        """`ratios` per level: the first server's two-GPU aggregate tok/s over each other one's."""
        base = self.groups[0].name
        levels = []
        for level, order in zip(self.levels, self.order):
            entry: dict[str, Any] = {"concurrency_per_model": level[base].one.concurrency, "order": order}
            for name, gl in level.items():
                entry[name] = gl.to_dict(per_request)
            mine = level[base].both.tokens_per_s
            entry["ratios"] = {n: ratio(mine, gl.both.tokens_per_s) for n, gl in level.items() if n != base}
            levels.append(entry)
        return {
            "settings": self.workload.settings(),
            "gpus": "per-model",
            "servers": {g.name: {"urls": [t.base for t in g.targets],
                                 "models": [self.models[t.name] for t in g.targets]} for g in self.groups},
            "levels": levels,
            **self.extra,
        }


async def _both(session: aiohttp.ClientSession, g: Group, models: dict[str, str], w: Workload,
                c: int, per_client: int, index: int) -> tuple[LevelResult, list[LevelResult]]:
    """C clients on every copy at once; the aggregate's wall time spans them all."""
    t0 = time.perf_counter()
    each = await asyncio.gather(*(run_level(session, t, models[t.name], w, c, per_client, index + j * c * per_client)
                                  for j, t in enumerate(g.targets)))
    wall = time.perf_counter() - t0
    both = LevelResult(c * len(g.targets), wall, [r for e in each for r in e.requests], runs=1)
    return both, list(each)


async def run(groups: Sequence[Group], workload: Workload, levels: Sequence[int], per_client: int = 2,
              repeat: int = 1, on_level: Callable[[dict[str, GroupLevel], dict[str, str]], None] | None = None,
              ) -> PerModelResult:
    """Warm every copy up, then per level and repeat each server's one-GPU and two-GPU runs,
    the servers taking turns. Runs of different servers never overlap."""
    async with client_session() as s:
        members = [t for g in groups for t in g.targets]
        models = {t.name: await resolve_model(s, t) for t in members}
        await warm_up(s, members, models, workload)
        out: list[dict[str, GroupLevel]] = []
        order: list[list[list[str]]] = []
        index = turn_no = 0
        for c in levels:
            level = {g.name: GroupLevel(LevelResult(c), LevelResult(2 * c), [LevelResult(c) for _ in g.targets])
                     for g in groups}
            level_order: list[list[str]] = []
            for _ in range(repeat):
                turn = [groups[(turn_no + j) % len(groups)] for j in range(len(groups))]
                turn_no += 1
                for g in turn:
                    gl = level[g.name]
                    first = g.targets[0]
                    gl.one.add(await run_level(s, first, models[first.name], workload, c, per_client, index))
                    index += c * per_client
                    both, each = await _both(s, g, models, workload, c, per_client, index)
                    gl.both.add(both)
                    for into, r in zip(gl.each, each):
                        into.add(r)
                    index += len(g.targets) * c * per_client
                level_order.append([g.name for g in turn])
            out.append(level)
            order.append(level_order)
            if on_level is not None:
                on_level(level, models)
        return PerModelResult(workload, list(groups), models, out, order)


def groups_of(specs: Sequence[Any], model_ids: Sequence[str]) -> list[Group]:
    """The run's servers as groups (servers.Spec in, appliance first): the appliance's one
    process once per model id, a peer's processes (one per GPU) under their kind."""
    groups: dict[str, list[Target]] = {}
    for spec in specs:
        if spec.kind == "appliance":
            groups["appliance"] = [Target(f"appliance-gpu{i}", spec.url, spec.api_key, m)
                                   for i, m in enumerate(model_ids)]
        else:
            groups.setdefault(spec.kind, []).append(spec.target())
    return [Group(name, tuple(ts)) for name, ts in groups.items()]


def summary_line(level: dict[str, GroupLevel]) -> str:
    """The level's verdict: the first server's two-GPU aggregate over each other one's, and
    every server's scaling from one GPU to two."""
    names = list(level)
    base = level[names[0]]
    c = base.one.concurrency
    vs = "; ".join(f"{names[0]} ÷ {n} (2 GPUs) {ratio_text(base.both.tokens_per_s, level[n].both.tokens_per_s)}"
                   for n in names[1:])
    scaling = ", ".join(f"{n} {ratio_text(gl.both.tokens_per_s, gl.one.tokens_per_s)}" for n, gl in level.items())
    return f"per-model at {c} clients per model: {vs + '; ' if vs else ''}2 GPUs ÷ 1 GPU: {scaling}"
