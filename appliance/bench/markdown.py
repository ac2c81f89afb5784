"""A `--json-out` result as the markdown table of docs/benchmarks.md, so a run's figures go
into the docs as measured: `python -m appliance.bench.markdown RESULT.json`.

Two shapes: levels (one row per server per level, as `--compare` and `--gpus split` write)
and `--gpus per-model` (per server: the two-GPU aggregate, each copy, one copy alone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .load import ratio_text


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---:" if i == 0 or i > 1 else "---" for i in range(len(head))]
    return ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def levels_table(doc: dict[str, Any]) -> list[str]:
    """clients | server | tok/s | first ÷ this | TTFT p50/p95 | ITL p50 | errors."""
    names = list(doc["servers"])
    rows = []
    for lv in doc["levels"]:
        first = lv[names[0]]["tokens_per_s"]
        for i, n in enumerate(names):
            s = lv[n]
            rows.append([str(lv["concurrency"]), f"**{n}**" if i == 0 else n, f"{s['tokens_per_s']:.1f}",
                         "" if i == 0 else ratio_text(first, s["tokens_per_s"]), _ms(s["ttft_p50_s"]),
                         _ms(s["ttft_p95_s"]), f"{s['itl_p50_s'] * 1000:.1f}" if s["itl_p50_s"] is not None else "-",
                         str(s["errors"])])
    return _table(["clients", "server", "tok/s", f"{names[0]} ÷ peer", "TTFT p50 ms", "TTFT p95 ms",
                   "ITL p50 ms", "errors"], rows)


def per_model_table(doc: dict[str, Any]) -> list[str]:
    """Per level and server: two-GPU aggregate, its ratio, each copy, one copy alone, scaling, TTFTs."""
    names = list(doc["servers"])
    rows = []
    for lv in doc["levels"]:
        first = lv[names[0]]["two_gpus"]["tokens_per_s"]
        for i, n in enumerate(names):
            s = lv[n]
            both, one = s["two_gpus"], s["one_gpu"]
            rows.append([
                str(lv["concurrency_per_model"]), f"**{n}**" if i == 0 else n, f"{both['tokens_per_s']:.1f}",
                "" if i == 0 else ratio_text(first, both["tokens_per_s"]),
                " / ".join(f"{m['tokens_per_s']:.1f}" for m in s["per_model"]), f"{one['tokens_per_s']:.1f}",
                "-" if s["scaling"] is None else f"{s['scaling']:.2f}",
                f"{_ms(both['ttft_p50_s'])} / {_ms(both['ttft_p95_s'])}",
                f"{_ms(one['ttft_p50_s'])} / {_ms(one['ttft_p95_s'])}", str(both["errors"] + one["errors"]),
            ])
    return _table(["clients per model", "server", "2 GPUs tok/s", f"{names[0]} ÷ peer", "per model tok/s (GPU 0 / 1)",
                   "1 GPU tok/s", "2 GPUs ÷ 1 GPU", "TTFT p50 / p95 ms, 2 GPUs", "TTFT p50 / p95 ms, 1 GPU",
                   "errors"], rows)


def render(doc: dict[str, Any]) -> str:
    table = per_model_table(doc) if doc.get("gpus") == "per-model" else levels_table(doc)
    return "\n".join(table) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m appliance.bench.markdown RESULT.json", file=sys.stderr)
        return 2
    try:
        doc = json.loads(Path(argv[0]).read_text())
        sys.stdout.write(render(doc))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{argv[0]}: not an `appliance bench --json-out` result ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
