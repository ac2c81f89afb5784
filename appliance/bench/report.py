"""The readable table: one row per server per level, printed as each level finishes."""

from __future__ import annotations

from typing import Any, Iterable

from .load import LevelResult, ratio_text

COLUMNS = [("conc", 4), ("server", 16), ("tok/s", 8), ("vs first", 8), ("req/s", 6),
           ("TTFT p50 ms", 11), ("TTFT p95 ms", 11), ("ITL p50 ms", 10), ("ITL p95 ms", 10), ("errors", 6)]


def _ms(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v * 1000:.{digits}f}"


def _columns(names: Iterable[str]) -> list[tuple[str, int]]:
    """COLUMNS with the server column as wide as the longest name (`--gpus per-model` rows)."""
    width = max([COLUMNS[1][1], *map(len, names)])
    return [(n, width if i == 1 else w) for i, (n, w) in enumerate(COLUMNS)]


def header(names: Iterable[str] = ()) -> str:
    """The header line for rows of these server names."""
    return " | ".join(name.rjust(w) if i != 1 else name.ljust(w) for i, (name, w) in enumerate(_columns(names)))


def rows(level: dict[str, LevelResult]) -> list[str]:
    """`vs first`: the first server's tok/s over this one's (above 1: the first is faster)."""
    names = list(level)
    first = level[names[0]]
    columns = _columns(names)
    out = []
    for name in names:
        r = level[name]
        ratio = "-" if name == names[0] else ratio_text(first.tokens_per_s, r.tokens_per_s)
        cells = [str(r.concurrency), name, f"{r.tokens_per_s:.1f}", ratio, f"{r.requests_per_s:.2f}",
                 _ms(r.ttft_p50_s), _ms(r.ttft_p95_s), _ms(r.itl_p50_s, 1), _ms(r.itl_p95_s, 1), str(r.errors)]
        line = " | ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, (_, w)) in enumerate(zip(cells, columns)))
        if r.mixed:
            line += f" | short prompts' TTFT p50/p95 {_ms(r.short_ttft_p50_s)}/{_ms(r.short_ttft_p95_s)} ms"
        out.append(line)
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def scenarios(extra: dict[str, Any]) -> list[str]:
    """One or two lines per scenario that ran."""
    lines: list[str] = []
    if "ceiling" in extra:
        c = extra["ceiling"]
        lines.append(f"llama-bench single-stream decode (ceiling): {c['tokens_per_s']:.1f} tok/s")
    if "schema_mix" in extra:
        m = extra["schema_mix"]
        lines.append(
            f"json_schema mix at {m['concurrency']}: plain streams {m['plain_tokens_per_s_in_mixed']:.1f} tok/s "
            f"beside 1 schema stream vs {m['expected_plain_tokens_per_s']:.1f} expected from all-plain "
            f"({m['all_plain']['tokens_per_s']:.1f} x {m['concurrency'] - 1}/{m['concurrency']}): cost {_pct(m['cost'])}; "
            f"schema requests {m['schema_requests']}, valid JSON {m['schema_valid_json']}, "
            f"cut at max_tokens {m['schema_truncated']}, errors {m['schema_errors']}")
    if "hot_swap" in extra:
        h = extra["hot_swap"]
        v = h.get("verdict")
        if not v:
            from statistics import median

            lines.append(f"hot swap: first token {median(h['swap_ttft_s']):.2f}s after unload, "
                         f"{median(h['loaded_ttft_s']) * 1000:.0f}ms on the loaded model (medians of {h['trials']})")
        else:
            lines.append(
                f"hot swap: first token {v['swap_ttft_s_median']:.2f}s after unload vs bare llama.cpp load "
                f"{v['bare_load_s_median']:.2f}s + loaded TTFT {v['loaded_ttft_s_median'] * 1000:.0f}ms = "
                f"{v['reference_s']:.2f}s: ratio {v['ratio']:.2f}")
    if "overload" in extra:
        o = extra["overload"]
        lines.append(
            f"overload: {o['clients']} clients, {o['attempts']} attempts: {o['admitted']} admitted, "
            f"{o['rejected_429']} got 429 ({_pct(o['rejected_share'])}), 5xx {o['server_errors_5xx']}, "
            f"other errors {o['other_errors']}; admitted TTFT p50 {_ms(o['admitted_ttft_p50_s'])} ms, "
            f"latency p50/p95 {_ms(o['admitted_latency_p50_s'])}/{_ms(o['admitted_latency_p95_s'])} ms")
    return lines
