"""`appliance bench`: closed-loop load against running servers, or a side-by-side run that
starts the appliance and its peers itself (`--compare`).

The measuring is in appliance/bench/; this module parses flags, wires the pieces together and
prints. Exit 1 when any measured request failed (first error printed), 2 for bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from yarl import URL

from ..errors import BenchError, UsageError

SCENARIOS = ("schema", "overload", "swap")
GPU_MODES = ("per-model", "split")  # bench.servers.Settings.gpus


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench", help="load-test servers over HTTP; --compare starts the appliance and its peers side by side",
        description="Closed-loop streaming clients at each concurrency level: aggregate tok/s, requests/s, "
                    "TTFT and inter-token latency p50/p95, errors.",
    )
    where = p.add_argument_group("servers (either --url, or --compare with --model-file)")
    where.add_argument("--url", help="a running server under test, e.g. http://127.0.0.1:8000")
    where.add_argument("--api-key", default=os.environ.get("APPLIANCE_API_KEY"), metavar="KEY",
                       help="bearer token for --url (default: $APPLIANCE_API_KEY)")
    where.add_argument("--model", metavar="ID", help="model id at --url (default: the only one it lists)")
    where.add_argument("--peer", metavar="URL", help="a running server to compare with, same requests")
    where.add_argument("--peer-api-key", metavar="KEY", help="bearer token for --peer")
    where.add_argument("--peer-model", metavar="ID", help="model id at --peer (default: the only one it lists)")
    where.add_argument("--compare", metavar="KIND,...",
                       help="start the appliance and these peers on --model-file: llama-server, "
                            "llama-server-np1, llama-server-bs (--backend-sampling), llama-cpp-python "
                            "(comma-separated; may be empty: '')")
    pinned = p.add_argument_group("settings every started server is pinned to (--compare)")
    pinned.add_argument("--context", type=int, default=2048, help="tokens per slot (default: 2048)")
    pinned.add_argument("--parallel", type=int, default=16, help="slots (default: 16)")
    pinned.add_argument("--gpu-layers", default="all", help='"all" or a number (default: all)')
    pinned.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    pinned.add_argument("--max-waiting", type=int, default=16, help="the appliance's queue.max_waiting (default: 16)")
    pinned.add_argument("--gpus", choices=GPU_MODES,
                        help="two GPUs: per-model (the model twice, gpu = 0 and gpu = 1, clients on both at once; "
                             "llama-server peers as one process per GPU, -dev CUDAn) or split (gpu = \"split\"; "
                             "llama-server -sm layer). Default: one GPU")
    pinned.add_argument("--gpus-on-cpu", action="store_true",
                        help="rehearse --gpus without GPUs: no device flags for the peers (the appliance "
                             "ignores gpu on a RAM-only machine)")
    pinned.add_argument("--llama-server", metavar="PATH", help="llama-server binary (default: on PATH)")
    pinned.add_argument("--llama-bench", metavar="PATH", help="llama-bench binary: adds its single-stream decode as the ceiling")
    pinned.add_argument("--workdir", metavar="DIR", help="configs, store and server logs (default: a new temporary directory)")
    load = p.add_argument_group("load")
    load.add_argument("--concurrency", default="1,4,16", metavar="C,C,...", help="clients per level (default: 1,4,16)")
    load.add_argument("--requests-per-client", type=int, default=2, metavar="N",
                      help="requests each client sends per run, one after another (default: 2)")
    load.add_argument("--repeat", type=int, default=1, metavar="R",
                      help="runs per level and server, the servers taking turns (default: 1)")
    load.add_argument("--max-tokens", type=int, default=128, metavar="N", help="tokens per request (default: 128)")
    g = load.add_mutually_exclusive_group()
    g.add_argument("--prompt", metavar="TEXT", help="the same prompt for every request")
    g.add_argument("--prompt-tokens", type=int, metavar="N",
                   help="prompts of about N tokens (default: a short distinct prompt per request)")
    load.add_argument("--temperature", type=float, default=0.0, metavar="T",
                      help="the requests' temperature, their only sampling field, as OpenAI clients send "
                           "it (default: 0, greedy)")
    load.add_argument("--mixed-prompts", type=int, metavar="N",
                      help="every 4th request's prompt is about N tokens long (do short prompts wait behind "
                           "long ones?); adds the short prompts' TTFT to the table")
    load.add_argument("--prompt-seed", type=int, metavar="S",
                      help="written into every prompt (default: a fresh random one per invocation, so no "
                           "server finds a prompt of an earlier run in its cache)")
    load.add_argument("--ban-tokens", default="", metavar="ID,ID,...",
                      help="token ids given a logit_bias of -100 on every server")
    load.add_argument("--model-file", metavar="PATH.gguf",
                      help="the model; its end-of-generation tokens are banned (fixed lengths on random-weight models)")
    load.add_argument("--endpoint", choices=["completions", "chat"], default="completions",
                      help="/v1/completions or /v1/chat/completions (default: completions)")
    extra = p.add_argument_group("scenarios, against the first server")
    extra.add_argument("--scenarios", default="", metavar="NAME,...",
                       help="schema (one json_schema stream among plain ones), overload (clients against "
                            "max_waiting), swap (unload, then first token; needs an admin key)")
    extra.add_argument("--schema-concurrency", type=int, default=16, metavar="C", help="streams in the schema mix (default: 16)")
    extra.add_argument("--schema-file", metavar="FILE.json",
                       help="the JSON schema of the schema mix's stream (default: a title and a list of strings)")
    extra.add_argument("--overload-clients", type=int, default=64, metavar="C", help="clients in the overload run (default: 64)")
    extra.add_argument("--swap-trials", type=int, default=3, metavar="N", help="unload/request rounds (default: 3)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    out.add_argument("--json-out", metavar="FILE", help="also write the JSON (per request) to FILE")
    out.add_argument("--plot", metavar="FILE.png", help="write tok/s and TTFT vs concurrency per server (needs matplotlib)")
    p.set_defaults(func=bench)


def _int_list(flag: str, text: str, minimum: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers") from None
    if any(v < minimum for v in values):
        raise UsageError(f"{flag} {text!r}: values must be at least {minimum}")
    return values


def _names(flag: str, text: str | None, allowed: tuple[str, ...]) -> list[str]:
    names = [x.strip() for x in (text or "").split(",") if x.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise UsageError(f"{flag} {bad[0]!r}: expected one of {', '.join(allowed)}")
    return names


def _url(flag: str, text: str) -> str:
    """An absolute http(s) URL, else a usage error (aiohttp's own message for 'host:port' is cryptic)."""
    u = URL(text)
    if u.scheme not in ("http", "https") or not u.host:
        raise UsageError(f"{flag} {text!r}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8000")
    return text


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")


def _workload(args: argparse.Namespace) -> Any:
    from ..bench.load import Workload, eog_token_ids

    if args.prompt is not None and not args.prompt:
        raise UsageError("--prompt must not be empty")
    if not 0 <= args.temperature <= 2:
        raise UsageError("--temperature must be in [0, 2]")
    if args.mixed_prompts is not None and args.prompt is not None:
        raise UsageError("--mixed-prompts and --prompt exclude each other")
    banned = set(_int_list("--ban-tokens", args.ban_tokens, 0))
    if args.model_file:
        banned.update(eog_token_ids(args.model_file))
    seed = args.prompt_seed if args.prompt_seed is not None else secrets.randbelow(10**6)
    return Workload(endpoint=args.endpoint, max_tokens=args.max_tokens, prompt=args.prompt,
                    prompt_tokens=args.prompt_tokens, banned=tuple(sorted(banned)), temperature=args.temperature,
                    long_every=4 if args.mixed_prompts else 0, long_tokens=args.mixed_prompts or 0, seed=seed)


def _settings(args: argparse.Namespace) -> Any:
    from ..bench.servers import Settings

    if not args.model_file:
        raise UsageError("--compare needs --model-file (the GGUF every server loads)")
    if args.gpu_layers == "all":
        layers = None
    else:
        try:
            layers = int(args.gpu_layers)
        except ValueError:
            raise UsageError(f'--gpu-layers {args.gpu_layers!r}: expected "all" or a number') from None
    return Settings(model=Path(args.model_file).resolve(), context=args.context, parallel=args.parallel,
                    gpu_layers=layers, threads=args.threads, max_waiting=args.max_waiting, gpus=args.gpus,
                    pin_devices=not args.gpus_on_cpu)


def _schema(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--schema-file {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--schema-file {path}: not JSON ({e})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--schema-file {path}: expected a JSON object (a JSON schema)")
    return schema


def _specs(args: argparse.Namespace, settings: Any, kinds: list[str]) -> tuple[Path, list[Any]]:
    """The work directory and every server's spec, the appliance first. The peers are checked
    first (a missing llama-server or server extra is a usage error), so a bad flag writes
    nothing; a temporary work directory is removed again when one is refused."""
    from ..bench import servers

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="appliance-bench-"))
    try:
        peers = [p for k in kinds for p in servers.specs_for(k, settings, workdir, args.llama_server)]
        return workdir, [servers.spec_for("appliance", settings, workdir, None), *peers]
    except BaseException:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def bench(args: argparse.Namespace) -> int:
    """Every flag is checked before anything is printed or started (a usage error is one line
    on stderr and nothing on stdout)."""
    levels = _int_list("--concurrency", args.concurrency, 1)
    if not levels:
        raise UsageError("--concurrency: give at least one level")
    _positive(args, "requests_per_client", "repeat", "max_tokens", "prompt_tokens", "mixed_prompts", "context", "parallel",
              "threads", "max_waiting", "schema_concurrency", "overload_clients", "swap_trials")
    scenarios = _names("--scenarios", args.scenarios, SCENARIOS)
    if args.compare is None and not args.url:
        raise UsageError("give --url (a running server) or --compare (start the servers; with --model-file)")
    if args.compare is not None and (args.url or args.peer):
        raise UsageError("--compare starts its own servers: drop --url/--peer")
    if args.url:
        _url("--url", args.url)
    if args.peer:
        _url("--peer", args.peer)
    kinds = _names("--compare", args.compare, ("llama-server", "llama-server-np1", "llama-server-bs",
                                                "llama-cpp-python"))
    settings = _settings(args) if args.compare is not None else None
    if (args.gpus or args.gpus_on_cpu) and settings is None:
        raise UsageError("--gpus and --gpus-on-cpu need --compare")
    if args.gpus_on_cpu and not args.gpus:
        raise UsageError("--gpus-on-cpu rehearses --gpus: give --gpus too")
    if args.gpus == "per-model" and (scenarios or args.plot):
        raise UsageError("--gpus per-model measures levels only: drop --scenarios/--plot")
    if args.llama_bench and settings is None:
        raise UsageError("--llama-bench needs --compare and --model-file")
    if args.llama_bench and not Path(args.llama_bench).is_file():
        raise UsageError(f"--llama-bench {args.llama_bench}: no such file")
    schema = _schema(args.schema_file)
    if args.plot:
        from ..bench.plot import pyplot

        pyplot()  # matplotlib is optional: say so now, not after the run
    workload = _workload(args)
    workdir, specs = _specs(args, settings, kinds) if settings is not None else (None, [])
    try:
        return asyncio.run(_main(args, levels, workload, settings, specs, workdir, scenarios, schema))
    except asyncio.CancelledError:  # SIGTERM or SIGHUP: the servers were stopped on the way out
        raise KeyboardInterrupt from None


class _Printer:
    """Rows as each level finishes (a long run shows progress); nothing with --json."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started = False

    def __call__(self, level: dict[str, Any], models: dict[str, str]) -> None:
        from ..bench import report

        if self.quiet:
            return
        if not self.started:
            print("models: " + "; ".join(f"{k} {v}" for k, v in models.items()), flush=True)
            print(report.header(level), flush=True)
            self.started = True
        for line in report.rows(level):
            print(line, flush=True)

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


async def _main(args: argparse.Namespace, levels: list[int], workload: Any, settings: Any, specs: list[Any],
                workdir: Path | None, scenarios: list[str], schema: dict[str, Any] | None) -> int:
    from ..bench import load, report, servers

    # SIGTERM (a CI timeout, `kill`) or SIGHUP cancels the run like Ctrl-C does, so the servers
    # started below are stopped: they run in their own sessions and would outlive this process.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    printer = _Printer(args.json)
    printer.line(_preamble(workload, levels, args))
    if settings is None:
        targets = [load.Target("ours", args.url, args.api_key, args.model)]
        if args.peer:
            targets.append(load.Target("peer", args.peer, args.peer_api_key, args.peer_model))
        result = await load.run_bench(targets, workload, levels, args.requests_per_client, args.repeat, on_level=printer)
        result.extra.update(await _scenarios(args, result, scenarios, schema, printer))
    else:
        assert workdir is not None
        printer.line(f"work directory (configs, store, logs): {workdir}")
        async with servers.running(specs, workdir / "logs"):
            if settings.gpus == "per-model":
                result = await _per_model(args, levels, workload, settings, specs, printer)
            else:
                result = await load.run_bench([s.target() for s in specs], workload, levels,
                                              args.requests_per_client, args.repeat, on_level=printer)
                result.extra.update(await _scenarios(args, result, scenarios, schema, printer))
        if args.llama_bench:
            from ..bench import ceiling

            result.extra["ceiling"] = await ceiling.run(args.llama_bench, settings, workload.max_tokens,
                                                        workdir / "logs" / "llama-bench.log")
        if "swap" in scenarios:
            from ..bench.scenarios import bare_load, swap_verdict

            swap = result.extra["hot_swap"]
            swap["bare"] = await bare_load(settings)
            swap["verdict"] = swap_verdict(swap, swap["bare"])
        result.extra["settings_pinned"] = settings.describe()
    result.extra["machine"] = _machine()
    for line in report.scenarios(result.extra):
        printer.line(line)
    doc = result.to_dict()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(result.to_dict(per_request=False), indent=2))
    if args.plot:
        from ..bench.plot import write_png

        printer.line(f"plot: {write_png(result, Path(args.plot))}")
    return _verdict(result)


async def _per_model(args: argparse.Namespace, levels: list[int], workload: Any, settings: Any, specs: list[Any],
                     printer: _Printer) -> Any:
    """--gpus per-model: every server's copies driven at once, against its first copy alone."""
    from ..bench import pergpu

    def on_level(level: dict[str, Any], models: dict[str, str]) -> None:
        printer({k: v for name, gl in level.items() for k, v in gl.rows(name).items()}, models)
        printer.line(pergpu.summary_line(level))

    return await pergpu.run(pergpu.groups_of(specs, settings.model_ids()), workload, levels,
                            args.requests_per_client, args.repeat, on_level=on_level)


async def _scenarios(args: argparse.Namespace, result: Any, names: list[str], schema: dict[str, Any] | None,
                     printer: _Printer) -> dict[str, Any]:
    from ..bench import scenarios
    from ..bench.load import client_session

    first = result.targets[0]
    model = result.models[first.name]
    out: dict[str, Any] = {}
    async with client_session() as session:
        if "schema" in names:
            printer.line(f"scenario: json_schema mix at {args.schema_concurrency} streams ...")
            out["schema_mix"] = await scenarios.schema_mix(session, first, model, result.workload,
                                                           args.schema_concurrency, args.requests_per_client,
                                                           schema=schema)
        if "overload" in names:
            printer.line(f"scenario: overload, {args.overload_clients} clients ...")
            out["overload"] = await scenarios.overload(session, first, model, result.workload,
                                                       args.overload_clients, args.requests_per_client)
        if "swap" in names:
            printer.line(f"scenario: hot swap, {args.swap_trials} unload/request rounds ...")
            out["hot_swap"] = await scenarios.hot_swap(session, first, model, result.workload, args.swap_trials)
    return out


def _machine() -> dict[str, Any]:
    """Where the figures came from: CPU, cores, GPU (when NVML sees one), llama-cpp-python."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        from importlib.metadata import version

        info["llama_cpp_python"] = version("llama-cpp-python")
    except Exception:  # noqa: BLE001  (informational only)
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        info["gpus"] = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                        for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001  (no NVIDIA driver: a CPU or Metal machine)
        info["gpus"] = []
    return info


def _preamble(w: Any, levels: list[int], args: argparse.Namespace) -> str:
    banned = ",".join(map(str, w.banned)) if w.banned else "none"
    prompt = "fixed" if w.prompt is not None else (f"~{w.prompt_tokens} tokens" if w.prompt_tokens else "short")
    if w.long_every:
        prompt += f", every {w.long_every}th ~{w.long_tokens} tokens"
    prompt += f" (seed {w.seed})"
    return (f"/v1/{'chat/completions' if w.endpoint == 'chat' else 'completions'}, stream, temperature {w.temperature:g}, "
            f"max_tokens {w.max_tokens}, prompt {prompt}, banned tokens {banned}, levels "
            f"{','.join(map(str, levels))}, {args.requests_per_client} requests per client, {args.repeat} run(s) per level")


def _verdict(result: Any) -> int:
    first = result.first_error
    if first is not None:
        name, message = first
        url = next(t.base for t in result.targets if t.name == name)
        raise BenchError(f"{name} {url}: {message}")
    over = result.extra.get("overload")
    if over and over["server_errors_5xx"]:
        raise BenchError(f"overload: {over['server_errors_5xx']} requests got a 5xx: {over['first_other_error']}")
    return 0
