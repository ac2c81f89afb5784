"""Constrained decoding on llguidance: grammars in, token masks out.

llama.cpp's GBNF engine explodes on hostile input (a backtracking pattern walked the whole
vocabulary for tens of seconds per token; `minLength: 1e9` wrote gigabytes of grammar).
llguidance compiles the same schemas in milliseconds, under resource limits (lexer fuel,
Earley items per step, grammar size), and computes a token mask in well under a
millisecond. So every constraint the API accepts (json_object, json_schema, tool calls,
Lark or GBNF grammars) becomes an llguidance grammar here.

Life of a constraint: `*_grammar()` turn the request's schema into grammar text (cheap, no
tokenizer); `compile_constraint()` builds the matcher off the event loop with a deadline
and refuses (400) a grammar that does not compile or admits no output at all; the runner
forks one matcher per choice, computes the masks of a step's constrained streams on a
worker while `llama_decode` runs (`StepMasks`; llguidance releases the GIL), applies them
to the logits rows, and feeds each picked token back (`consume_token`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import llama_cpp as ll
import numpy as np
from llguidance import LLExecutor, LLMatcher, LLParserLimits, LLTokenizer
from llguidance.gbnf_to_lark import any_to_lark
from llguidance.llamacpp import lltokenizer_from_vocab
from llguidance.numpy import fill_next_token_bitmask_par

from ..errors import InvalidRequest

MAX_SCHEMA_BYTES = 64 * 1024  # a schema is a request field: bounded like the others
COMPILE_DEADLINE_S = 5.0  # a grammar still compiling after this is refused (400)
COMPILE_WORKERS = 2

# llguidance's own limits, tighter than its defaults: a request's grammar is untrusted input.
# Each bounds one cost (docs/security.md lists them): regex analysis at compile time, lexer
# and parser work per token, lexer memory, grammar size.
LIMITS: dict[str, int] = {
    "initial_lexer_fuel": 1_000_000,  # ~20 ms of regex analysis
    "step_lexer_fuel": 200_000,  # ~15 ms per mask, worst case
    "step_max_items": 50_000,  # Earley items per mask
    "max_lexer_states": 50_000,  # ~100 MB at worst
    "max_grammar_size": 200_000,  # symbols
    "max_items_in_row": 2_000,
}

# Whitespace a JSON value may hold between tokens: bounded, as llama.cpp's converter does
# (`" " | "\n" [ \t]{0,20}`), so a model that likes spaces still has to finish its JSON.
JSON_WHITESPACE = r"(?: |\n[ \t]{0,20})?"
_JSON_OPTIONS = {"whitespace_pattern": JSON_WHITESPACE}


def limits() -> LLParserLimits:
    return LLParserLimits(verbose_errors=False, **LIMITS)  # type: ignore[arg-type]


# --- grammar text (cheap, no tokenizer) --------------------------------------------------------


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever an object lists its properties
    and says nothing about others: what llama.cpp's converter did (clients and small models
    rely on it: without it a model pads the object with made-up keys until max_tokens)."""
    if isinstance(schema, list):
        return [closed(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k != "const" and k != "enum" and k != "default" else v for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _schema_text(schema: Any, param: str) -> str:
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    text = json.dumps(closed(schema))
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", param=param)
    return text


def schema_grammar(schema: Any, param: str = "response_format") -> str:
    """One JSON schema -> an llguidance grammar (compiled and checked later, with the tokenizer)."""
    text = _schema_text(schema, param)
    try:
        return LLMatcher.grammar_from_json_schema(text, defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as e:
        raise InvalidRequest(f"unsupported JSON schema: {e}", param=param) from None


def json_object_grammar() -> str:
    return schema_grammar({"type": "object"})


def response_format_schema(rf: dict[str, Any] | None) -> tuple[bool, Any]:
    """OpenAI response_format -> (constrained, schema): (False, None) for plain text, (True,
    None) for any JSON object, else the schema. json_object may carry a "schema" (as
    llama-cpp-python accepts); json_schema needs json_schema.schema."""
    if rf is None:
        return False, None
    if not isinstance(rf, dict):
        raise InvalidRequest("response_format must be an object", param="response_format")
    kind = rf.get("type", "text")
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, rf.get("schema")
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise InvalidRequest("response_format.json_schema.schema is required", param="response_format")
        return True, js["schema"]
    raise InvalidRequest(f"unsupported response_format type {kind!r}", param="response_format")


def response_format_grammar(rf: dict[str, Any] | None) -> str | None:
    """OpenAI response_format -> llguidance grammar; None for plain text."""
    constrained, schema = response_format_schema(rf)
    if not constrained:
        return None
    return schema_grammar(schema) if schema is not None else json_object_grammar()


def lark_grammar(lark: str, param: str = "grammar") -> str:
    """Lark text -> llguidance's grammar (compiled and checked later, with the tokenizer)."""
    try:
        return LLMatcher.grammar_from_lark(lark)
    except Exception as e:  # the reader raises bare errors on what it can't read
        raise InvalidRequest(f"the grammar could not be read: {e}", param=param) from None


def gbnf_grammar(text: str, param: str = "grammar") -> str:
    """A GBNF (or Lark) grammar -> llguidance's, through its own converter."""
    try:
        lark = any_to_lark(text)
    except Exception as e:  # the converter raises bare errors on what it can't read
        raise InvalidRequest(f"the grammar could not be read: {e}", param=param) from None
    return lark_grammar(lark, param)


def schema_lark(schema: Any, param: str = "tools") -> str:
    """A Lark rule body holding a value to one JSON schema (llguidance's `%json`, with the
    bounded whitespace and closed objects of `schema_grammar`)."""
    if isinstance(schema, dict):
        schema = {**schema, "x-guidance": _JSON_OPTIONS}
    return f"%json {_schema_text(schema, param)}"


def _lit(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def lazy_grammar(lark: str, trigger: str, param: str = "tools", specials: Mapping[str, int] | None = None) -> str:
    """tool_choice "auto": free text that never contains `trigger`, or free text up to the
    trigger and then what `lark` (a grammar with a `start` rule: what follows the trigger)
    writes. Text and trigger are one lexeme, so the lexer never has to back off; a trigger
    that is a special token of the model (`specials`) may also come as that token."""
    body = "\n".join("calls:" + line[len("start:"):] if line.startswith("start:") else line
                     for line in with_specials(lark, specials or {}).splitlines())
    esc = _re_escape(trigger)
    token = (specials or {}).get(trigger)
    return lark_grammar("\n".join([
        "start: TEXT | TEXT_TRIGGER calls" + (f" | TEXT <[{token}]> calls" if token is not None else ""),
        f"TEXT: /(?s:.*)/ & ~/(?s:.*{esc}.*)/",  # text that never calls
        f"TEXT_TRIGGER: /(?s:.*)/ & ~/(?s:.*{esc}.*)/ {_lit(trigger)}",
        body,
    ]) + "\n", param)


_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')


def with_specials(lark: str, specials: Mapping[str, int]) -> str:
    """`lark` with each marker that is one special token of the model (`specials`: text ->
    id) written as the text or that token. llguidance keeps special tokens out of quoted
    text (they can't be spelled), so without this a model could only spell `<tool_call>`
    or `[TOOL_CALLS]` letter by letter, never emit the token it was trained to write.
    Parser rules only: terminals (upper-case names) and `%json` rules are left alone."""
    if not specials:
        return lark
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))

    def literal(m: re.Match[str]) -> str:
        text = json.loads(m.group(0))
        if not pattern.search(text):
            return m.group(0)
        parts, pos = [], 0
        for sm in pattern.finditer(text):
            if sm.start() > pos:
                parts.append(_lit(text[pos:sm.start()]))
            parts.append(f"({_lit(sm.group(0))} | <[{specials[sm.group(0)]}]>)")
            pos = sm.end()
        if pos < len(text):
            parts.append(_lit(text[pos:]))
        return "(" + " ".join(parts) + ")"

    out = []
    for line in lark.splitlines():
        name, sep, body = line.partition(":")
        if sep and name.strip().islower() and not body.lstrip().startswith("%json"):
            line = name + sep + _LITERAL.sub(literal, body)
        out.append(line)
    return "\n".join(out) + "\n"


_SPECIALS: "weakref.WeakKeyDictionary[Any, dict[str, int]]" = weakref.WeakKeyDictionary()


def specials_of(vocab: Any) -> dict[str, int]:
    """The model's special tokens as llguidance sees them (control tokens, and user-defined
    ones that look like `<...>`), text -> id; read once per load."""
    with _TOKENIZER_LOCK:
        found = _SPECIALS.get(vocab)
        if found is None:
            found = {}
            for t in range(vocab.n_vocab):
                attr = ll.llama_vocab_get_attr(vocab.vocab, t)
                if not attr & (ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_USER_DEFINED):
                    continue
                text = vocab.special_piece(t).decode("utf-8", errors="replace")
                if text and (attr & ll.LLAMA_TOKEN_ATTR_CONTROL or (text.startswith("<") and text.endswith(">"))):
                    found.setdefault(text, t)
            _SPECIALS[vocab] = found
        return found


_REGEX_META = set("\\.+*?()|[]{}^$#&-~/")


def _re_escape(s: str) -> str:
    """Escape for a regex inside Lark's /.../ (Rust syntax: `\\<` would be a word boundary)."""
    return "".join("\\" + c if c in _REGEX_META else c for c in s)


# --- the tokenizer and the compiler (blocking: off the event loop) ------------------------------

_TOKENIZERS: "weakref.WeakKeyDictionary[Any, LLTokenizer]" = weakref.WeakKeyDictionary()
_TOKENIZER_LOCK = threading.Lock()


def tokenizer_for(vocab: Any) -> LLTokenizer:
    """llguidance's tokenizer of a loaded model (`engine.vocab.Vocab`), built once per load
    (it reads every token: about a second on a 262k vocabulary)."""
    with _TOKENIZER_LOCK:
        tok = _TOKENIZERS.get(vocab)
        if tok is None:
            with warnings.catch_warnings():  # it calls a deprecated llama-cpp-python alias per token
                warnings.simplefilter("ignore", DeprecationWarning)
                tok = lltokenizer_from_vocab(vocab.vocab, n_vocab=vocab.n_vocab,
                                             eos_token=list(vocab.eog_ids) or None)
            _TOKENIZERS[vocab] = tok
        return tok


class Constraint:
    """A compiled grammar for one model; `fork(n)` gives each choice its own matcher."""

    def __init__(self, matcher: LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self.n_vocab = n_vocab

    def fork(self, n: int) -> list[LLMatcher]:
        return [self._matcher.deep_copy() for _ in range(n)]


def compile_constraint(grammar: str, vocab: Any, param: str = "response_format") -> Constraint:
    """Build and check a matcher: InvalidRequest when the grammar does not compile, hits a
    resource limit, or admits no output at all. Blocking (up to a few hundred ms)."""
    tok = tokenizer_for(vocab)
    m = LLMatcher(tok, grammar, log_level=0, limits=limits())
    if m.is_error():
        raise InvalidRequest(f"the grammar cannot be used: {_short(m.get_error())}", param=param)
    mask = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
    if m.is_error():
        raise InvalidRequest(f"the grammar cannot be used: {_short(m.get_error())}", param=param)
    if not mask.any():
        raise InvalidRequest("the grammar allows no output at all (no token can start it)", param=param)
    return Constraint(m, vocab.n_vocab)


def _short(msg: str, limit: int = 300) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[:limit] + "..."


_compile_pool = ThreadPoolExecutor(max_workers=COMPILE_WORKERS, thread_name_prefix="grammar-compile")


async def compile_async(grammar: str, vocab: Any, *, param: str = "response_format",
                        deadline_s: float = COMPILE_DEADLINE_S) -> Constraint:
    """`compile_constraint` on a small pool of its own (hostile grammars can't take the
    default executor), refused with 400 when it takes longer than `deadline_s`."""
    loop = asyncio.get_running_loop()
    # The model's tokenizer first, outside the deadline: built once per load (seconds on a
    # large vocabulary, bounded by its size), it is no cost a request controls.
    await loop.run_in_executor(_compile_pool, tokenizer_for, vocab)
    fut = loop.run_in_executor(_compile_pool, compile_constraint, grammar, vocab, param)
    try:
        return await asyncio.wait_for(fut, deadline_s)
    except asyncio.TimeoutError:
        raise InvalidRequest(f"the grammar took longer than {deadline_s:g}s to compile", param=param) from None


# --- per-step masks (the runner's side) ------------------------------------------------------------


class StepMasks:
    """One bitmask row per slot, filled on a worker while the batch decodes."""

    def __init__(self, n_slots: int, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.bits = np.full((n_slots, (n_vocab + 31) // 32), -1, dtype=np.int32)
        self._executor = LLExecutor(num_threads=min(4, max(1, n_slots)))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
        self._pending: Future[None] | None = None

    def start(self, items: list[tuple[LLMatcher, int]]) -> None:
        """Compute the next-token mask of each (matcher, slot row); returns at once."""
        self.wait()
        if items:
            self._pending = self._pool.submit(fill_next_token_bitmask_par, self._executor, items, self.bits)

    def wait(self) -> None:
        if self._pending is not None:
            fut, self._pending = self._pending, None
            fut.result()

    def apply(self, slot: int, row: np.ndarray) -> bool:
        """Forbid in `row` (logits, in place) what slot `slot`'s mask forbids; False when it
        allows nothing at all."""
        allowed = np.unpackbits(self.bits[slot].view(np.uint8), bitorder="little")[: self.n_vocab]
        row[allowed == 0] = -np.inf
        return bool(allowed.any())

    def close(self) -> None:
        self.wait()
        self._pool.shutdown(wait=True)


def logits_row(ctx: Any, idx: int, n_vocab: int) -> np.ndarray:
    """The context's logits row `idx`, writable in place (the sampler reads it next)."""
    return np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(n_vocab,))
