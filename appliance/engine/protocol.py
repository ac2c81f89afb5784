"""What the rest of the appliance may rely on of a loaded model's runner.

`engine.runner.Runner` implements `EngineRunner`. The scheduler loads runners, warms them up,
measures and closes them (`DrivenRunner`); the service's watchdog reads their progress; the
HTTP layer renders prompts and generates through them (`ServingRunner`). Typed here, a rename
on either side fails mypy instead of quietly returning None from a `getattr` probe.
Importing this module loads no llama.cpp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, Sequence

from .generation import Generation
from .types import EmbeddingResult, GenerationRequest, TokenLogprob

if TYPE_CHECKING:
    from .llamalog import BufferSizes
    from .vision import VisionPrompt
    from .vocab import Vocab


class DrivenRunner(Protocol):
    """What the scheduler and the watchdog use."""

    @property
    def n_slots(self) -> int: ...

    @property
    def busy_slots(self) -> int: ...

    @property
    def buffers(self) -> BufferSizes | None:
        """llama.cpp's own buffer sizes for this load (measuring RAM), if known."""
        ...

    @property
    def in_call_since(self) -> float | None:
        """Monotonic time a llama.cpp call started and has not returned; None when idle."""
        ...

    @property
    def last_progress(self) -> float | None:
        """Monotonic time of the last finished step."""
        ...

    @property
    def lost(self) -> bool:
        """It can serve nothing more (an RPC worker died mid-call): unload it."""
        ...

    def warmup(self) -> None:
        """One decode at full batch before memory is measured (blocks)."""
        ...

    def close(self) -> None:
        """Fail what runs, free llama.cpp's objects (blocks); idempotent."""
        ...


class ServingRunner(Protocol):
    """What the HTTP layer uses while it holds a lease."""

    @property
    def chat_template(self) -> str | None: ...

    @property
    def bos_text(self) -> str: ...

    @property
    def eos_text(self) -> str: ...

    @property
    def arch(self) -> str: ...

    @property
    def vocab(self) -> Vocab: ...  # read-only tokenizer side: llguidance builds its tokenizer from it

    @property
    def tool_use_template(self) -> str | None:
        """The GGUF's tool_use template variant, if any (used when tools are offered)."""
        ...

    @property
    def reasoning(self) -> Literal["separate", "inline"]:
        """The catalog's `reasoning`: thinking into reasoning_content, or kept in the content."""
        ...

    def generate(self, req: GenerationRequest) -> Generation: ...

    def tokenize_images(self, text: str, images: list[bytes], add_special: bool) -> VisionPrompt:
        """A prompt with images, tokenized by the model's projector (CPU work: call it off
        the event loop and pass the result as GenerationRequest.vision)."""
        ...

    async def embed(self, inputs: list[str | list[int]]) -> EmbeddingResult: ...

    def detokenize(self, tokens: list[int], special: bool = False) -> str: ...

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]: ...

    def piece(self, token: int) -> bytes: ...

    def fim_prompt(self, prefix: str, suffix: str, middle: str = "",
                   extra: Sequence[tuple[str, str]] = (), param: str = "suffix") -> list[int]: ...

    async def prompt_logprobs(self, prompt: str | list[int], top_n: int = 0,
                              add_special: bool = True) -> list[TokenLogprob]: ...


class EngineRunner(DrivenRunner, ServingRunner, Protocol):
    """A runner as the scheduler loads it and hands it to requests."""
