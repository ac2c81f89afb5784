"""A local HTTP server that answers like the Hugging Face hub's resolve and listing endpoints.

`HEAD`/`GET /{owner}/{repo}/resolve/{revision}/{path}` with the headers huggingface_hub reads
(ETag = the LFS sha256, X-Linked-Etag/X-Linked-Size, X-Repo-Commit), honouring `Range`.
`GET /api/models/{owner}/{repo}[/revision/{revision}][?blobs=true]`: what `HfApi.model_info`
reads: the commit a revision resolves to (`sha`), the files (`siblings`, with size and LFS
sha256 when `blobs=true`) and the card's license. Branches map to commits through `refs`.
It records every request, and can corrupt a body, cut the connection after N bytes, or send N
bytes and then hold the connection until the test releases it (to kill a client mid-download
without sleeping).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_PATH = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_INFO = re.compile(r"^/api/models/([^/]+/[^/?]+)(?:/revision/([^/?]+))?(?:\?(.*))?$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class HubFile:
    data: bytes
    commit: str = "c0ffee" + "0" * 34
    sha256: str = ""
    lfs: bool = True  # False: a plain git file (the ETag is its git blob id, the listing has no sha256)

    def __post_init__(self) -> None:
        self.sha256 = self.sha256 or hashlib.sha256(self.data).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Behaviour:
    corrupt: bool = False
    cut_after: int | None = None  # close the connection after this many body bytes
    cut_every: int | None = None  # every response, ranged ones too: at most this many bytes
    hold_after: int | None = None  # send this many bytes, set `held`, wait for `release`, then...
    close_after_hold: bool = True  # ...close the connection (False: send the rest)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    get_started: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], HubFile] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.requests: list[Seen] = []
        self.refs: dict[tuple[str, str], str] = {}  # (repo, branch) -> commit; default: the files' commit
        self.licenses: dict[str, str] = {}  # repo -> the model card's license
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # shutdown() waits up to one poll interval (0.5 s by default) on every test's exit
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def add(self, repo: str, path: str, data: bytes, **kw: Any) -> HubFile:
        f = self.files[(repo, path)] = HubFile(data, **kw)
        return f

    def behave(self, path: str, **kw: object) -> Behaviour:
        b = self.behaviour[path] = Behaviour(**kw)  # type: ignore[arg-type]
        return b

    def info_requests(self) -> list[Seen]:
        return [r for r in self.requests if r.path.startswith("/api/models/")]

    def gets(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path)]

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for b in self.behaviour.values():
            b.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        with self._lock:
            self.requests.append(Seen(h.command, h.path, dict(h.headers.items())))
        if (info := _INFO.match(h.path)) and h.command == "GET":
            self._model_info(h, info.group(1), info.group(2) or "main", "blobs=true" in (info.group(3) or ""))
            return
        m = _PATH.match(h.path)
        f = self.files.get((m.group(1), m.group(3))) if m else None
        if f is None:
            h.send_response(404)
            h.send_header("X-Error-Code", "EntryNotFound")
            h.send_header("X-Error-Message", "Entry not found")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        b = self.behaviour.get(m.group(3), Behaviour()) if m else Behaviour()
        start = 0
        rng = h.headers.get("Range")
        if body and rng and (rm := _RANGE.match(rng)):
            start = int(rm.group(1))
        data = f.data[start:]
        h.send_response(206 if start else 200)
        etag = f.sha256 if f.lfs else hashlib.sha1(f.data).hexdigest()
        h.send_header("ETag", f'"{etag}"')
        h.send_header("X-Linked-Etag", f'"{etag}"')
        h.send_header("X-Linked-Size", str(len(f.data)))
        h.send_header("X-Repo-Commit", f.commit)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
        h.end_headers()
        if not body:
            return
        b.get_started.set()
        if b.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        try:
            if b.hold_after is not None and not start:
                h.wfile.write(data[: b.hold_after])
                h.wfile.flush()
                b.held.set()
                b.release.wait(60)
                if b.close_after_hold:
                    h.close_connection = True
                    return
                h.wfile.write(data[b.hold_after :])
                return
            if b.cut_every is not None:
                h.wfile.write(data[: b.cut_every])
                h.wfile.flush()
                h.close_connection = True
                return
            if b.cut_after is not None and not start:
                h.wfile.write(data[: b.cut_after])
                h.wfile.flush()
                h.close_connection = True
                return
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _model_info(self, h: BaseHTTPRequestHandler, repo: str, revision: str, blobs: bool) -> None:
        files = {path: f for (r, path), f in self.files.items() if r == repo}
        commits = {f.commit for f in files.values()}
        commit = self.refs.get((repo, revision)) or (revision if revision in commits else None)
        if commit is None and revision == "main" and commits:
            commit = sorted(commits)[0]
        if not files or commit is None:
            what = "Repository" if not files else "Revision"
            body = json.dumps({"error": f"{what} not found"}).encode()
            h.send_response(404)
            h.send_header("X-Error-Code", "RepoNotFound" if not files else "RevisionNotFound")
            h.send_header("X-Error-Message", f"{what} not found")
        else:
            siblings = []
            for path, f in sorted(files.items()):
                s: dict[str, object] = {"rfilename": path}
                if blobs:
                    s.update(size=len(f.data), blobId=hashlib.sha1(f.data).hexdigest())
                    if f.lfs:
                        s["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
                siblings.append(s)
            card = {"license": self.licenses[repo]} if repo in self.licenses else {}
            body = json.dumps({"id": repo, "sha": commit, "siblings": siblings, "cardData": card,
                               "tags": ["gguf"]}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
