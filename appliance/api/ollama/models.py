"""GET /api/version, GET /api/tags (models in the store), POST /api/show (one model's
details, template, capabilities), GET /api/ps (models in memory). Each lists only what the
caller's key may use, as /v1/models does."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ... import __version__ as appliance_version
from ...config import ModelConfig
from ...engine.modelfacts import ModelFacts
from ..admin import SCHEDULER_KEY
from ..capabilities import derive, model_facts
from ..context import CTX_KEY, api_key
from ..directory import ModelDirectory
from ..schemas import parse_body, read_json
from .convert import catalog_name, iso
from .schemas import ModelRequest

# Ollama clients gate features on the server's version; this API follows Ollama 0.12's.
OLLAMA_VERSION = "0.12.0"
NEVER = 4102444800.0  # 2100-01-01, Ollama's way of saying "not scheduled"


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION, "appliance": appliance_version})


def parameter_size(n: int) -> str:
    """A parameter count as Ollama prints it (its format.HumanNumber): "8B", "8.0B", "268.10M"."""
    for unit, size, decimals in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 0)):
        if n >= size:
            x = n / size
            return f"{x:.0f}{unit}" if x == int(x) else f"{x:.{decimals}f}{unit}"
    return str(n)


def _details(facts: ModelFacts | None) -> dict[str, Any]:
    arch = facts.architecture if facts else ""
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else None,
            "parameter_size": parameter_size(facts.parameters) if facts and facts.parameters else "",
            "quantization_level": (facts.quantization or "") if facts else ""}


def _entry(d: ModelDirectory, mid: str, cfg: ModelConfig, facts: ModelFacts | None) -> dict[str, Any]:
    card = d.card(mid, cfg)
    rec = d.record(mid)
    sha = card["sha256"] if isinstance(card["sha256"], str) else (card["sha256"] or [None])[0]
    return {"name": mid, "model": mid, "modified_at": iso(card["created"]),
            "size": sum(b.size for b in rec.blobs) if rec is not None else 0,
            "digest": sha or "", "details": _details(facts)}


async def tags(request: web.Request) -> web.Response:
    """The models this key may use that are in the store (pulled), as `ollama list` shows them."""
    d = request.app[CTX_KEY].directory
    models = []
    for mid, cfg in d.visible(api_key(request)):
        if d.model_file(mid) is None:
            continue
        models.append(_entry(d, mid, cfg, await model_facts(d, mid)))
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    body = parse_body(ModelRequest, await read_json(request))
    d = request.app[CTX_KEY].directory
    mid, cfg = d.resolve(catalog_name(d.catalog, body.model_name), api_key(request))
    facts = await model_facts(d, mid)
    caps = derive(cfg, facts)
    info: dict[str, Any] = {"general.architecture": facts.architecture if facts else None}
    if facts is not None:
        info[f"{facts.architecture}.context_length"] = facts.context_train
        info["tokenizer.ggml.vocab_size"] = facts.vocab_size
        info["general.parameter_count"] = facts.parameters
    entry = _entry(d, mid, cfg, facts)
    return web.json_response({
        "modelfile": f"# appliance catalog entry {mid!r}\nFROM {cfg.source}\n",
        "parameters": f"num_ctx {cfg.context}",
        "template": cfg.chat_template or (facts.chat_template if facts else None) or "",
        "details": entry["details"], "model_info": info, "capabilities": caps.ollama(),
        "modified_at": entry["modified_at"],
    })


async def ps(request: web.Request) -> web.Response:
    """Loaded models this key may use; `expires_at`: when keep_alive unloads it (far ahead
    while it is busy, pinned or kept forever)."""
    d = request.app[CTX_KEY].directory
    sched = request.app[SCHEDULER_KEY]
    visible = dict(d.visible(api_key(request)))
    models = []
    for st in sched.snapshot():
        cfg = visible.get(st.id)
        if cfg is None or st.state != "loaded":
            continue
        size = st.memory_measured or st.memory_estimated or 0
        expires = st.unload_at or NEVER  # busy, pinned or kept forever: not due
        entry = _entry(d, st.id, cfg, await model_facts(d, st.id))
        entry.update({"expires_at": iso(expires), "size": size,
                      "size_vram": size if st.device and not str(st.device).startswith("cpu") else 0,
                      "context_length": cfg.context})
        models.append(entry)
    return web.json_response({"models": models})
