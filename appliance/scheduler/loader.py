"""The production loader: the engine's Runner, placed where the scheduler decided."""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..engine.protocol import EngineRunner
from .placement import Placement


def engine_loader(model_id: str, cfg: ModelConfig, paths: list[Path], placement: Placement,
                  mmproj: Path | None = None) -> EngineRunner:
    """Build a Runner (blocking, seconds): the scheduler calls this in a worker thread.
    `mmproj`: the model's image projector, when it has one."""
    from ..engine.runner import Runner  # imported late: loads llama.cpp

    return Runner(
        paths,
        cfg,
        n_gpu_layers=-1 if placement.all_layers else placement.n_gpu_layers,
        main_gpu=placement.main_gpu,
        split_mode=placement.split_mode,
        model_id=model_id,
        mmproj=mmproj,
    )
