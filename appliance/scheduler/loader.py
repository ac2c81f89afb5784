"""The production loader: the engine's Runner, placed where the scheduler decided."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import ModelConfig
from ..engine.protocol import EngineRunner
from .placement import Placement


def engine_loader(model_id: str, cfg: ModelConfig, paths: list[Path], placement: Placement,
                  mmproj: Path | None = None, cluster: Sequence[str] = ()) -> EngineRunner:
    """Build a Runner (blocking, seconds): the scheduler calls this in a worker thread.
    `mmproj`: the model's image projector, when it has one.

    `cluster`: appliance.toml's `[cluster] rpc` workers, used unless the entry names its own.
    With workers, an integer `gpu_layers` is the number of layers offloaded (to the workers
    and local GPUs together); otherwise the placement's count (all layers when it says so).
    """
    from ..engine.runner import Runner  # imported late: loads llama.cpp

    workers = cluster if cfg.rpc is None else cfg.rpc
    n_gpu_layers = -1 if placement.all_layers else placement.n_gpu_layers
    if workers and isinstance(cfg.gpu_layers, int):
        n_gpu_layers = cfg.gpu_layers
    return Runner(
        paths,
        cfg,
        n_gpu_layers=n_gpu_layers,
        main_gpu=placement.main_gpu,
        split_mode=placement.split_mode,
        model_id=model_id,
        mmproj=mmproj,
        workers=workers,
    )
