"""What one model can do (chat, tools, reasoning, embeddings, vision, FIM), from its catalog
entry and its GGUF (engine/modelfacts.py), for /v1/models/{id} and Ollama's /api/show."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import Any

from ..config import ModelConfig
from ..engine.modelfacts import ModelFacts, read_model_facts
from .directory import ModelDirectory

log = logging.getLogger(__name__)

# Markers of templates that render tools / a reasoning block (llama.cpp's templates/ spell them so).
_TOOL_MARKERS = ("tools", "tool_call")
_REASONING_MARKERS = ("<think>", "reasoning_content", "enable_thinking", "thinking")


@dataclass(frozen=True)
class Capabilities:
    chat: bool
    completion: bool
    tools: bool
    reasoning: bool
    embeddings: bool
    vision: bool
    fim: bool

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    def ollama(self) -> list[str]:
        """Ollama's names, in its order."""
        names = [("completion", self.completion), ("tools", self.tools), ("insert", self.fim),
                 ("vision", self.vision), ("thinking", self.reasoning), ("embedding", self.embeddings)]
        return [n for n, on in names if on]


def derive(cfg: ModelConfig, facts: ModelFacts | None) -> Capabilities:
    """Without the file (not pulled yet), only what the catalog says."""
    template = (cfg.chat_template or (facts.chat_template if facts else None)) or ""
    gen = not cfg.embedding
    return Capabilities(
        chat=gen, completion=gen,
        tools=gen and any(m in template for m in _TOOL_MARKERS),
        reasoning=gen and any(m in template for m in _REASONING_MARKERS),
        embeddings=cfg.embedding,
        vision=gen and cfg.mmproj is not None,
        fim=gen and bool(facts and facts.fim),
    )


async def model_facts(directory: ModelDirectory, mid: str) -> ModelFacts | None:
    """The GGUF's facts when the model is in the store, else None (read in a thread)."""
    path = directory.model_file(mid)
    if path is None:
        return None
    try:
        return await asyncio.to_thread(read_model_facts, path)
    except Exception as e:  # a damaged file must not break listing; verify/load report it
        log.warning("could not read %s for its capabilities: %s", path, e)
        return None


async def capabilities(directory: ModelDirectory, mid: str, cfg: ModelConfig) -> tuple[Capabilities, ModelFacts | None]:
    facts = await model_facts(directory, mid)
    return derive(cfg, facts), facts


def card_extras(caps: Capabilities, facts: ModelFacts | None) -> dict[str, Any]:
    """What /v1/models/{id} adds to the listing's card."""
    return {"capabilities": caps.as_dict(),
            "architecture": facts.architecture if facts else None,
            "context_train": facts.context_train if facts else None}
