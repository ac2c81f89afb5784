"""The PNG: aggregate tok/s and TTFT p50 against concurrency, one line per server.

matplotlib is an optional dependency (`pip install 'appliance[bench]'`): a daemon never needs
it, and it is imported only when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from .load import BenchResult


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a usage error saying how to install it (the CLI
    calls this before a run, so a missing matplotlib is not found after minutes of load)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install 'appliance[bench]'") from None
    return plt


def write_png(result: BenchResult, path: Path, title: str = "") -> Path:
    plt = pyplot()
    conc = [next(iter(level.values())).concurrency for level in result.levels]
    fig, (ax_tps, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    for t in result.targets:
        tps = [level[t.name].tokens_per_s for level in result.levels]
        ttft = [(level[t.name].ttft_p50_s or float("nan")) * 1000 for level in result.levels]
        style = {"linewidth": 2.4} if t.name in ("ours", "appliance") else {"linewidth": 1.4}
        ax_tps.plot(conc, tps, marker="o", label=t.name, **style)
        ax_ttft.plot(conc, ttft, marker="o", label=t.name, **style)
    for ax, ylabel in ((ax_tps, "aggregate generated tok/s"), (ax_ttft, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_ttft.set_yscale("log")
    ax_tps.legend(loc="upper left", fontsize=8)
    w = result.workload
    fig.suptitle(title or f"streaming {w.endpoint}, max_tokens {w.max_tokens}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
