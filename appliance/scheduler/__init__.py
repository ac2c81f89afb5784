"""Which models are in memory, and who may use them when (see docs/memory.md)."""

from .core import ModelStatus, NoEvents, Scheduler, SchedulerEvents
from .lifecycle import RunnerLike
from .estimate import Estimate, Estimator, GGUFEstimator
from .footprints import Footprints
from .placement import Placement

__all__ = [
    "Estimate", "Estimator", "Footprints", "GGUFEstimator", "ModelStatus", "Placement",
    "NoEvents", "RunnerLike", "Scheduler", "SchedulerEvents",
]
