"""Thinking out loud, split from the answer: `<think>…</think>` and its kin.

The tag pair is the first whose closing tag the template writes (a fact of the template, not
of the model's name). Whether the output starts inside the thinking is read from the
rendered prompt: DeepSeek R1 and others end the generation prompt with the opening tag.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tools.scan import held_back

TAG_PAIRS: tuple[tuple[str, str], ...] = (
    ("<|START_THINKING|>", "<|END_THINKING|>"),  # Command R7B
    ("<seed:think>", "</seed:think>"),  # Seed-OSS
    ("<mm:think>", "</mm:think>"),  # MiniMax M3
    ("<think:opensource>", "</think:opensource>"),  # Hunyuan 3
    ("[THINK]", "[/THINK]"),  # Magistral, Ministral reasoning
    ("<|inner_prefix|>", "<|inner_suffix|>"),  # Apertus
    ("<|channel>thought", "<channel|>"),  # Gemma 4
    ("<|open|>think<|sep|>", "<|close|>think<|sep|>"),  # Kimi K3
    ("<think>", "</think>"),  # DeepSeek R1, Qwen3, QwQ, GLM, Kimi thinking, MiniMax M2, Granite, Nemotron …
)


@dataclass(frozen=True)
class Thinking:
    open: str
    close: str
    starts_inside: bool  # the prompt opened the thinking already

    @property
    def preserved(self) -> tuple[str, str]:
        return (self.open, self.close)

    def split(self, text: str, final: bool = True) -> tuple[str, str]:
        """(reasoning, the rest) of an output; a stream's prefix holds back partial tags."""
        body = text
        if not self.starts_inside:
            lead = len(text) - len(text.lstrip())
            if text.startswith(self.open, lead):
                body = text[lead + len(self.open):]
            elif not final and self.open.startswith(text.lstrip()):
                return "", ""  # may be the opening tag, still arriving
            else:
                return "", text
        end = body.find(self.close)
        if end < 0:
            keep = len(body) if final else len(body) - held_back(body, (self.close,))
            return body[:keep].strip(), ""
        return body[:end].strip(), body[end + len(self.close):].lstrip()


def thinking_for(template_source: str, prompt: str) -> Thinking | None:
    """The thinking tags this template uses, and whether `prompt` leaves the output inside them."""
    for open_, close in TAG_PAIRS:
        if close in template_source:
            tail = prompt.rstrip()
            inside = tail.endswith(open_) or (tail.endswith(open_.strip()) and open_.strip() != "")
            return Thinking(open_, close, inside)
    return None
