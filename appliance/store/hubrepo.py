"""From a repo reference (`owner/repo:Q4_K_M`, `hf://owner/repo/file.gguf@rev`) to a pinned
catalog entry: the hub's file listing (huggingface_hub's `HfApi.model_info`), the GGUF picked
by quantization tag, every shard of a split model, the repo's `mmproj` projector, and the
revision resolved to a commit, so what was pulled is what the entry names forever.

Parsing and picking are pure (`parse_ref`, `pick`); only `resolve` talks to the hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import SHARD_RE
from ..errors import DownloadError, UsageError

DEFAULT_QUANT = "Q4_K_M"
# Best first; "nearest" to a wanted tag is the closest in this order, the better one on a tie.
QUANTS = [
    "F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
    "IQ4_NL", "IQ4_XS", "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_S", "IQ3_XS",
    "IQ3_XXS", "Q2_K_L", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
]
_TAG_RE = re.compile(
    r"(?:^|[-_.])(" + "|".join(sorted(QUANTS, key=len, reverse=True)) + r")(?=[-_.]|$)", re.IGNORECASE
)
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class RepoRef:
    """What the user typed, split: `owner/repo`, a file in it or a quantization tag, a revision."""

    repo: str
    file: str | None = None
    quant: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int | None = None
    sha256: str | None = None  # the LFS sha256 from the listing


@dataclass(frozen=True)
class Picked:
    shards: list[str]  # repo paths in shard order
    quant: str | None  # the tag of the chosen file(s), None when the name has none
    mmproj: str | None = None


@dataclass(frozen=True)
class Resolved:
    repo: str
    commit: str
    shards: list[HubFile]
    quant: str | None
    mmproj: HubFile | None = None
    license: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "Q4_K_M not in the repo: took Q5_K_M"

    def entry(self) -> dict[str, Any]:
        """The catalog entry: first shard as source, pinned commit and checksums."""
        e: dict[str, Any] = {"source": f"hf://{self.repo}/{self.shards[0].path}", "revision": self.commit}
        shas = [s.sha256 for s in self.shards]
        if all(shas):
            e["sha256"] = shas[0] if len(shas) == 1 else shas
        if self.mmproj:
            e["mmproj"] = f"hf://{self.repo}/{self.mmproj.path}"
            if self.mmproj.sha256:
                e["mmproj_sha256"] = self.mmproj.sha256
        return e

    def default_id(self) -> str:
        """`gemma-3-270m-q4_k_m` from `owner/gemma-3-270m-GGUF` and Q4_K_M."""
        name = re.sub(r"[-_.]gguf$", "", self.repo.split("/")[1], flags=re.IGNORECASE).lower()
        return f"{name}-{self.quant.lower()}" if self.quant and self.quant.lower() not in name else name


def looks_like_repo(text: str) -> bool:
    """A pull argument that is a repo reference (`owner/repo…`) rather than a catalog id."""
    if text.startswith("hf://"):
        return True
    parts = text.split("@")[0].split(":")[0].split("/")
    return bool(_REPO_RE.match("/".join(parts[:2]))) and (len(parts) == 2 or parts[-1].endswith(".gguf"))


def parse_ref(text: str) -> RepoRef:
    """`[hf://]owner/repo[/path.gguf][:QUANT][@revision]` (the quant or a file, not both)."""
    rest = text.removeprefix("hf://")
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not revision:
            raise UsageError(f"{text!r}: empty revision after '@'")
    quant = None
    if ":" in rest:
        rest, quant = rest.rsplit(":", 1)
        if not quant:
            raise UsageError(f"{text!r}: empty quantization tag after ':'")
    parts = rest.split("/")
    if len(parts) < 2 or not all(parts):
        raise UsageError(f"{text!r}: expected owner/repo, hf://owner/repo or hf://owner/repo/file.gguf")
    file = "/".join(parts[2:]) or None
    if file and not file.endswith(".gguf"):
        raise UsageError(f"{text!r}: {file} is not a .gguf file")
    if file and quant:
        raise UsageError(f"{text!r}: give a file or a quantization tag, not both")
    return RepoRef("/".join(parts[:2]), file, quant.upper() if quant else None, revision)


def quant_of(path: str) -> str | None:
    hits = _TAG_RE.findall(path.rsplit("/", 1)[-1])
    return hits[-1].upper() if hits else None


def _is_mmproj(path: str) -> bool:
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


def _groups(paths: Sequence[str]) -> dict[str, list[str]]:
    """Model files keyed by their first file; a split model's shards in order under shard 1."""
    out: dict[str, list[str]] = {}
    for p in sorted(paths):
        if not p.endswith(".gguf") or _is_mmproj(p):
            continue
        m = SHARD_RE.search(p)
        if not m:
            out[p] = [p]
            continue
        first = f"{p[: m.start()]}-00001-of-{m.group(2)}.gguf"
        out.setdefault(first, []).append(p)
    complete = {}
    for k, v in out.items():  # a split model missing a shard cannot be loaded: not offered
        m = SHARD_RE.search(k)
        if m is None or len(v) == int(m.group(2)):
            complete[k] = v
    return complete


def _rank(tag: str | None) -> int:
    return QUANTS.index(tag) if tag in QUANTS else len(QUANTS)


def pick(paths: Sequence[str], quant: str | None = None, file: str | None = None) -> Picked:
    """The file(s) to pull from a repo's listing. A named file must exist; else the wanted tag
    (default Q4_K_M), else the nearest tag; a repo with one model file needs no tag."""
    groups = _groups(paths)
    mmprojs = sorted(p for p in paths if p.endswith(".gguf") and _is_mmproj(p))
    mmproj = next((p for p in mmprojs if quant_of(p) == "F16"), mmprojs[0] if mmprojs else None)
    if file:
        key = file
        if (m := SHARD_RE.search(file)) is not None:
            key = f"{file[: m.start()]}-00001-of-{m.group(2)}.gguf"
        if key not in groups:
            raise UsageError(f"{file} is not a GGUF model file in the repo (has: {', '.join(groups) or 'none'})")
        return Picked(groups[key], quant_of(key), mmproj)
    if not groups:
        raise UsageError("the repo has no GGUF model files")
    tagged = {k: quant_of(k) for k in groups}
    want = (quant or DEFAULT_QUANT).upper()
    exact = [k for k, t in tagged.items() if t == want]
    if exact:
        return Picked(groups[exact[0]], want, mmproj)
    if quant and want not in QUANTS:
        have = sorted({t for t in tagged.values() if t}, key=_rank)
        raise UsageError(f"unknown quantization {quant!r} (the repo has: {', '.join(have) or 'untagged files'})")
    if len(groups) == 1 and not quant:
        (k, v), = groups.items()
        return Picked(v, tagged[k], mmproj)
    target = _rank(want)
    candidates = [k for k, t in tagged.items() if t in QUANTS]
    if not candidates:
        raise UsageError(f"cannot tell the repo's files apart by quantization; name one: {', '.join(groups)}")
    best = min(candidates, key=lambda k: (abs(_rank(tagged[k]) - target), _rank(tagged[k])))
    return Picked(groups[best], tagged[best], mmproj)


def resolve(ref: RepoRef, endpoint: str | None, token: str | None = None) -> Resolved:
    """List the repo at `ref.revision` on the hub and pick; the revision becomes a commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    where = f"{ref.repo}@{ref.revision or 'main'}"
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(ref.repo, revision=ref.revision, files_metadata=True)
    except HfHubHTTPError as e:
        raise DownloadError(f"{where}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # refused, DNS, timeout
        raise DownloadError(f"{where}: cannot list the repo: {e}") from None
    if not info.sha:
        raise DownloadError(f"{where}: the hub did not say which commit the revision is")
    files = {s.rfilename: HubFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}
    picked = pick(list(files), ref.quant, ref.file)
    notes = []
    wanted = ref.quant or (None if ref.file else DEFAULT_QUANT)
    if wanted and picked.quant != wanted and len(_groups(list(files))) > 1:
        notes.append(f"{wanted} is not in {ref.repo}: took the nearest, {picked.quant}")
    card = info.card_data
    license = (card.get("license") if card is not None else None) or None
    return Resolved(
        ref.repo, info.sha, [files[p] for p in picked.shards], picked.quant,
        files[picked.mmproj] if picked.mmproj else None, str(license) if license else None, notes,
    )
