"""`appliance bench`: load-test a running server and compare it with a peer.

Streams the same greedy requests at each concurrency level to `--url` and, if given,
`--peer` (e.g. llama-server with flags pinned to ours, see docs/bench.md), then prints
aggregate tokens/s, the ratio, and TTFT per level. The measuring is in appliance/benchmark.py;
this module parses flags and formats. Exit 1 when any request failed (first error printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from yarl import URL

from ..benchmark import BenchResult, LevelResult, Target, Workload, eog_token_ids, run_bench
from ..errors import BenchError, UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench", help="load-test a running appliance (or any OpenAI-compatible URL), optionally against a peer",
        description="Streams greedy requests at each concurrency level and reports generated tokens/s and TTFT.",
    )
    p.add_argument("--url", required=True, help="server under test, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", default=os.environ.get("APPLIANCE_API_KEY"), metavar="KEY",
                   help="bearer token for --url (default: $APPLIANCE_API_KEY)")
    p.add_argument("--model", metavar="ID", help="model id at --url (default: the only one it lists)")
    p.add_argument("--peer", metavar="URL", help="server to compare with, same requests")
    p.add_argument("--peer-api-key", metavar="KEY", help="bearer token for --peer")
    p.add_argument("--peer-model", metavar="ID", help="model id at --peer (default: the only one it lists)")
    p.add_argument("--concurrency", default="1,4,16", metavar="C,C,...", help="streams in flight per level (default: 1,4,16)")
    p.add_argument("--requests-per-level", type=int, metavar="N",
                   help="requests per level (default: 2 x concurrency, at least 4)")
    p.add_argument("--max-tokens", type=int, default=128, metavar="N", help="tokens per request (default: 128)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", metavar="TEXT", help="the same prompt for every request")
    g.add_argument("--prompt-tokens", type=int, metavar="N",
                   help="prompts of about N tokens (default: a short distinct prompt per request)")
    p.add_argument("--ban-tokens", default="", metavar="ID,ID,...",
                   help="token ids given a logit_bias of -100 on both servers")
    p.add_argument("--model-file", metavar="PATH.gguf",
                   help="ban this GGUF's end-of-generation tokens (fixed lengths on random-weight models)")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions",
                   help="/v1/completions or /v1/chat/completions (default: completions)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(func=bench)


def _int_list(flag: str, text: str, minimum: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers") from None
    if any(v < minimum for v in values):
        raise UsageError(f"{flag} {text!r}: values must be at least {minimum}")
    return values


def _url(flag: str, text: str) -> str:
    """An absolute http(s) URL, else a usage error (aiohttp's own message for 'host:port' is cryptic)."""
    u = URL(text)
    if u.scheme not in ("http", "https") or not u.host:
        raise UsageError(f"{flag} {text!r}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8000")
    return text


def _workload(args: argparse.Namespace) -> Workload:
    if args.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    if args.prompt_tokens is not None and args.prompt_tokens < 1:
        raise UsageError("--prompt-tokens must be at least 1")
    if args.prompt is not None and not args.prompt:
        raise UsageError("--prompt must not be empty")
    banned = set(_int_list("--ban-tokens", args.ban_tokens, 0))
    if args.model_file:
        banned.update(eog_token_ids(args.model_file))
    return Workload(endpoint=args.endpoint, max_tokens=args.max_tokens, prompt=args.prompt,
                    prompt_tokens=args.prompt_tokens, banned=tuple(sorted(banned)))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


class _Table:
    """Rows printed as each level finishes (a long run shows progress)."""

    def __init__(self, peer: bool) -> None:
        self.peer = peer
        if peer:
            self.cols = [("conc", 4), ("ours tok/s", 10), ("peer tok/s", 10), ("ratio", 5),
                         ("TTFT p50 ms ours/peer", 21), ("TTFT p95 ms ours/peer", 21),
                         ("stream tok/s ours/peer", 22), ("errors", 6)]
        else:
            self.cols = [("conc", 4), ("tok/s", 10), ("TTFT p50 ms", 11), ("TTFT p95 ms", 11),
                         ("stream tok/s", 12), ("errors", 6)]

    def header(self) -> str:
        return " | ".join(name.rjust(w) for name, w in self.cols)

    def row(self, level: dict[str, LevelResult]) -> str:
        o = level["ours"]
        if self.peer:
            q = level["peer"]
            ratio = f"{o.tokens_per_s / q.tokens_per_s:.2f}" if q.tokens_per_s > 0 else "-"
            cells = [str(o.concurrency), _rate(o.tokens_per_s), _rate(q.tokens_per_s), ratio,
                     f"{_ms(o.ttft_p50_s)}/{_ms(q.ttft_p50_s)}", f"{_ms(o.ttft_p95_s)}/{_ms(q.ttft_p95_s)}",
                     f"{_rate(o.decode_tokens_per_s_mean)}/{_rate(q.decode_tokens_per_s_mean)}",
                     f"{o.errors}/{q.errors}"]
        else:
            cells = [str(o.concurrency), _rate(o.tokens_per_s), _ms(o.ttft_p50_s), _ms(o.ttft_p95_s),
                     _rate(o.decode_tokens_per_s_mean), str(o.errors)]
        return " | ".join(c.rjust(w) for c, (_, w) in zip(cells, self.cols))


def bench(args: argparse.Namespace) -> int:
    levels = _int_list("--concurrency", args.concurrency, 1)
    if not levels:
        raise UsageError("--concurrency: give at least one level")
    if args.requests_per_level is not None and args.requests_per_level < 1:
        raise UsageError("--requests-per-level must be at least 1")
    workload = _workload(args)
    targets = [Target("ours", _url("--url", args.url), args.api_key, args.model)]
    if args.peer:
        targets.append(Target("peer", _url("--peer", args.peer), args.peer_api_key, args.peer_model))

    table = _Table(peer=bool(args.peer))
    printed_header = False

    def on_level(level: dict[str, LevelResult], models: dict[str, str]) -> None:
        nonlocal printed_header
        if args.json:
            return
        if not printed_header:
            print("models: " + "; ".join(f"{k} {v}" for k, v in models.items()), flush=True)
            print(table.header(), flush=True)
            printed_header = True
        print(table.row(level), flush=True)

    if not args.json:
        print(_preamble(targets, workload, levels, args.requests_per_level), flush=True)
    result = asyncio.run(run_bench(targets, workload, levels, args.requests_per_level, on_level=on_level))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return _verdict(result)


def _preamble(targets: list[Target], w: Workload, levels: list[int], n: int | None) -> str:
    per = str(n) if n else "2 x concurrency (at least 4)"
    banned = ",".join(map(str, w.banned)) if w.banned else "none"
    prompt = "fixed" if w.prompt is not None else (f"~{w.prompt_tokens} tokens" if w.prompt_tokens else "short")
    servers = "; ".join(f"{t.name} {t.base}" for t in targets)
    return (f"{servers}\n/v1/{'chat/completions' if w.endpoint == 'chat' else 'completions'}, stream, "
            f"temperature 0, max_tokens {w.max_tokens}, prompt {prompt}, banned tokens {banned}, "
            f"levels {','.join(map(str, levels))}, requests per level {per}")


def _verdict(result: BenchResult) -> int:
    first = result.first_error
    if first is not None:
        name, message = first
        url = next(t.base for t in result.targets if t.name == name)
        raise BenchError(f"{name} {url}: {message}")
    return 0
