"""A daemon inside the CLI process, for `appliance run` when none is running: the same HTTP
path as against a real daemon, on a loopback port, with a key only this process knows (kept in
a temporary directory, gone with the session)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from ..config import Settings
from .daemonlink import Link


def _loopback_settings(settings: Settings, keys: Path) -> Settings:
    """Our own keys file; no TLS (loopback only, and our client would not trust its cert)."""
    server = settings.config.server.model_copy(update={"tls_cert": None, "tls_key": None})
    config = settings.config.model_copy(update={"server": server})
    return dataclasses.replace(settings, config=config, keys_path=keys)


@contextlib.contextmanager
def local_daemon(settings: Settings, store: Any) -> Iterator[Link]:
    """Serve the catalog from this process (its own event loop thread) for the block's length."""
    from ..auth import create_key
    from ..daemon import Daemon

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="appliance-run", daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory(prefix="appliance-run-") as tmp:
            keys = Path(tmp) / "keys.toml"
            token, _ = create_key(keys, "run", scope="inference")
            daemon = Daemon(_loopback_settings(settings, keys), host="127.0.0.1", port=0, store=store)
            asyncio.run_coroutine_threadsafe(daemon.start(), loop).result()
            try:
                yield Link(daemon.url, token)
            finally:
                asyncio.run_coroutine_threadsafe(daemon.stop(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
