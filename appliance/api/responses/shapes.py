"""The Responses API's response object and stream events, built from one chat choice.

Streamed: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, (`response.content_part.added`, `response.output_text.delta`…,
`response.output_text.done`, `response.content_part.done`) or
(`response.function_call_arguments.delta`, `…done`), `response.output_item.done`, and last
`response.completed` with the whole response; every event has a `sequence_number`. With
tools or separate reasoning the text is held back to the end and read whole (the model
family's call syntax, a `reasoning` item first).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Callable

from ...engine.types import Delta, Usage
from ..chat_render import ChatPrompt
from ..chunks import Chunk
from .schemas import ResponsesRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage(u: Usage) -> dict[str, Any]:
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def reasoning_item(text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": new_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": "completed"}


def call_item(name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": new_id("fc"), "call_id": new_id("call"), "name": name,
            "arguments": arguments, "status": status}


class ResponseChoices:
    """One response's output (n = 1); also the relay's `head`: its usage chunk is `response.completed`."""

    include_usage = True

    def __init__(self, body: ResponsesRequest, model: str, prompt: ChatPrompt, stream: bool,
                 on_done: Callable[[str, list[dict[str, Any]]], None]) -> None:
        self.body, self.model, self.prompt, self.stream, self.on_done = body, model, prompt, stream, on_done
        self.id = new_id("resp")
        self.created = int(time.time())
        self.msg_id = new_id("msg")
        self.text, self.finish = "", "stop"
        self.seq = 0
        self.started = self.msg_open = False
        self._items: list[dict[str, Any]] | None = None

    def _event(self, kind: str, **fields: Any) -> Chunk:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def _shell(self, status: str, output: list[dict[str, Any]], u: Usage | None) -> dict[str, Any]:
        b = self.body
        incomplete = status == "incomplete"
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "model": self.model,
            "output": output, "usage": usage(u) if u is not None else None, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": b.instructions, "metadata": b.metadata or {}, "temperature": b.temperature,
            "top_p": b.top_p, "max_output_tokens": b.max_output_tokens, "tools": b.tools,
            "tool_choice": b.tool_choice, "parallel_tool_calls": b.parallel_tool_calls,
            "previous_response_id": b.previous_response_id, "text": b.text.model_dump(by_alias=True, exclude_none=True),
            "truncation": "disabled", "store": b.store, "reasoning": None,
        }

    @property
    def _plain(self) -> bool:
        """No tools and no separate reasoning: text streams as it comes."""
        return self.prompt.reader.plain

    def items(self) -> list[dict[str, Any]]:
        """The output items (made once: their ids must not change between events and the end)."""
        if self._items is None:
            if self._plain:
                self._items = [message_item(self.msg_id, self.text)]
            else:
                p = self.prompt.reader.read(self.text, final=True)
                self._items = ([reasoning_item(p.reasoning)] if p.reasoning else []) + \
                    ([message_item(self.msg_id, p.content)] if p.content or not p.calls else []) + \
                    [call_item(c.name, c.arguments) for c in p.calls]
        return self._items

    def add(self, generation: int, d: Delta) -> list[Chunk]:
        self.text += d.text
        if d.finish_reason:
            self.finish = d.finish_reason
        if not self.stream:
            return []
        out: list[Chunk] = []
        if not self.started:
            self.started = True
            shell = self._shell("in_progress", [], None)
            out += [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]
        if self._plain:
            if not self.msg_open:
                self.msg_open = True
                out += self._open_message(0)
            if d.text:
                out.append(self._event("response.output_text.delta", item_id=self.msg_id, output_index=0,
                                       content_index=0, delta=d.text, logprobs=[]))
            if d.finish_reason:
                out += self._close_message(0, self.items()[0])
        elif d.finish_reason:
            for k, item in enumerate(self.items()):
                if item["type"] == "reasoning":
                    out += [self._event("response.output_item.added", output_index=k, item=item),
                            self._event("response.output_item.done", output_index=k, item=item)]
                elif item["type"] == "message":
                    out += self._open_message(k)
                    if item["content"][0]["text"]:
                        out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=k,
                                               content_index=0, delta=item["content"][0]["text"], logprobs=[]))
                    out += self._close_message(k, item)
                else:
                    out += self._call_events(k, item)
        return out

    def _open_message(self, k: int) -> list[Chunk]:
        return [self._event("response.output_item.added", output_index=k,
                            item=message_item(self.msg_id, "", "in_progress")),
                self._event("response.content_part.added", item_id=self.msg_id, output_index=k, content_index=0,
                            part={"type": "output_text", "text": "", "annotations": []})]

    def _close_message(self, k: int, item: dict[str, Any]) -> list[Chunk]:
        part = item["content"][0]
        return [self._event("response.output_text.done", item_id=item["id"], output_index=k, content_index=0,
                            text=part["text"], logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=k, content_index=0, part=part),
                self._event("response.output_item.done", output_index=k, item=item)]

    def _call_events(self, k: int, item: dict[str, Any]) -> list[Chunk]:
        return [self._event("response.output_item.added", output_index=k, item={**item, "arguments": "",
                                                                              "status": "in_progress"}),
                self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=k,
                            delta=item["arguments"]),
                self._event("response.function_call_arguments.done", item_id=item["id"], output_index=k,
                            name=item["name"], arguments=item["arguments"]),
                self._event("response.output_item.done", output_index=k, item=item)]

    def response(self, u: Usage) -> dict[str, Any]:
        status = "incomplete" if self.finish == "length" else "completed"
        out = self._shell(status, self.items(), u)
        self.on_done(self.id, self.items())
        return out

    def usage_chunk(self, u: Usage) -> Chunk:
        whole = self.response(u)
        return self._event("response.incomplete" if whole["status"] == "incomplete" else "response.completed",
                           response=whole)


def as_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as chat messages, for the next turn's history."""
    out: list[dict[str, Any]] = []
    for item in items:
        if item["type"] == "reasoning":
            continue  # not fed back, as a client's reasoning input items are not
        if item["type"] == "message":
            out.append({"role": "assistant", "content": item["content"][0]["text"]})
        else:
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1].get("tool_calls") is not None:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return out
