"""`appliance show MODEL`: what a catalog model is, read from its GGUF header and the store:
architecture, parameters, quantization, trained context, chat template, the tool-call format
and reasoning markup the template speaks, license, files and checksums. Reads headers only
(milliseconds), no daemon needed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import ModelConfig, load_settings
from ..units import format_size
from .models import _resolve, _store, _when

TEMPLATE_LINES = 12  # shown unless --template asks for all of it


def _params(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


def template_facts(template: str, own: bool) -> tuple[str, str | None]:
    """(tool-call format, reasoning tags) as the daemon reads them from this template
    (engine/tools/families.py, engine/reasoning.py). `own`: the model brought the template
    (the built-in default speaks no native syntax)."""
    from ..engine.reasoning import thinking_for
    from ..engine.template import compiled
    from ..engine.tools.families import detect

    try:
        family = detect(template, compiled(template).caps.call_text) if own else None
    except Exception as e:  # a template that does not compile: the daemon would refuse chats too
        return f"? (the template does not compile: {e})", None
    tools = f"{family.name} (native)" if family else "generic (a JSON object in <tool_call> tags; the template names no syntax)"
    if family is not None and family.kind == "harmony":  # gpt-oss: reasoning on its own channel
        return tools, "harmony analysis channel"
    thinking = thinking_for(template, "")
    return tools, f"{thinking.open}…{thinking.close}" if thinking else None


def _license(in_gguf: object, rec: Any) -> str | None:
    """The GGUF's `general.license`, else the model card's that `pull REPO` recorded."""
    if isinstance(in_gguf, str) and in_gguf:
        return in_gguf
    card = rec.extra.get("license") if rec is not None else None
    return f"{card} (model card)" if isinstance(card, str) else None


def describe(mid: str, cfg: ModelConfig, store: Any) -> dict[str, Any]:
    """Everything `show` prints, as data (also its --json)."""
    from ..engine.chat import default_template
    from ..store import read_gguf_info
    from ..store.ggufmeta import read_meta

    st = store.state(mid, cfg)
    out: dict[str, Any] = {"id": mid, "source": cfg.source, "revision": cfg.revision, "state": st.state,
                           "verified_at": _when(st.verified_at) or None, "aliases": list(cfg.aliases)}
    rec = st.record
    out["files"] = [{"source": b.source, "size": b.size, "sha256": b.sha256} for b in rec.blobs] if rec else [
        {"source": s, "size": None, "sha256": p} for s, p in zip(cfg.shard_sources, cfg.pinned_sha256)]
    mm = rec.mmproj if rec else None
    if cfg.mmproj:
        out["files"].append({"source": cfg.mmproj, "size": mm.size if mm else None,
                             "sha256": mm.sha256 if mm else cfg.mmproj_sha256})
    if rec and rec.commit:
        out["commit"] = rec.commit
    defaults = {k: getattr(cfg, k) for k in ("system", "max_tokens", "stop") if getattr(cfg, k)}
    out["defaults"] = defaults
    out["context"], out["parallel"] = cfg.context, cfg.parallel
    if not st.paths:
        return out
    info = read_gguf_info(st.paths)
    meta = read_meta(st.paths[0])
    # The daemon's order (engine/chat.py): models.toml's, the GGUF's, else a built-in default.
    in_gguf = meta.get("tokenizer.chat_template")
    template, origin = (cfg.chat_template, "models.toml") if cfg.chat_template else (
        (in_gguf, "gguf") if isinstance(in_gguf, str) and in_gguf else
        (default_template(info.architecture), f"built-in default for {info.architecture}; the GGUF has none"))
    tools, thinking = template_facts(template, own=origin in ("models.toml", "gguf"))
    out.update(
        architecture=info.architecture, name=info.name, parameters=info.parameters,
        quantization=info.quantization, context_train=info.context_train, layers=info.layers,
        embedding_length=info.embedding, vocab_size=info.vocab_size,
        license=_license(meta.get("general.license"), rec),
        chat_template=template, chat_template_from=origin,
        tool_format=tools, reasoning=thinking, reasoning_mode=cfg.reasoning,
    )
    return out


def _print(d: dict[str, Any], full_template: bool) -> None:
    def line(label: str, value: object) -> None:
        if value not in (None, "", [], {}):
            print(f"  {label:<16}{value}")

    print(d["id"])
    line("state", d["state"] + (f" {d['verified_at']}" if d.get("verified_at") else ""))
    line("source", d["source"])
    line("revision", d.get("commit") or d["revision"])
    line("aliases", ", ".join(d["aliases"]))
    if "architecture" in d:
        line("architecture", d["architecture"] + (f" ({d['name']})" if d.get("name") else ""))
        line("parameters", _params(d["parameters"]))
        line("quantization", d["quantization"])
        line("context", f"{d['context']} per slot x {d['parallel']} slots (trained: {d['context_train']})")
        line("layers", d["layers"])
        line("embedding", d["embedding_length"])
        line("vocabulary", d["vocab_size"])
        line("license", d.get("license"))
        line("tool calls", d["tool_format"])
        line("reasoning", f"{d['reasoning']} (reasoning = {d['reasoning_mode']!r})" if d.get("reasoning")
             else "not marked in the template")
    else:
        line("header", f"not pulled: run `appliance pull {d['id']}`")
    for k, v in d["defaults"].items():
        line(f"default {k}", json.dumps(v))
    print("  files")
    for f in d["files"]:
        size = format_size(f["size"]) if f.get("size") else "?"
        print(f"    {f['source']}  {size}  sha256 {f.get('sha256') or '(not pinned)'}")
    if d.get("chat_template"):
        lines = d["chat_template"].splitlines()
        shown = lines if full_template else lines[:TEMPLATE_LINES]
        print(f"  chat template (from {d['chat_template_from']})")
        for ln in shown:
            print(f"    {ln}")
        if len(shown) < len(lines):
            print(f"    … {len(lines) - len(shown)} more lines (--template shows all)")


def cmd_show(args: argparse.Namespace) -> int:
    settings = load_settings(config=args.config, models=args.models)
    (mid, cfg), = _resolve(settings.catalog, [args.model])
    d = describe(mid, cfg, _store(settings))
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print(d, args.template)
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("show", parents=[common], help="a model's metadata, template, files and checksums",
                       description="Architecture, parameters, quantization, trained context, chat template, "
                       "tool-call format, reasoning markup, license, files and checksums of a catalog model.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--template", action="store_true", help="print the whole chat template")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)
