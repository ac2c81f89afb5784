"""Helpers for the API tests (no tests here): config files, a store with models pulled,
and the real daemon listening on a free loopback port."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

from appliance.config import Settings, load_settings
from appliance.daemon import Daemon


def write_config(tmp: Path, models: dict[str, dict[str, Any]], server: dict[str, Any] | None = None) -> Settings:
    """appliance.toml + models.toml in `tmp`; a store under tmp/store; keys in tmp/keys.toml."""
    lines = ["[server]"]
    for k, v in (server or {}).items():
        lines.append(f"{k} = {_toml(v)}")
    lines += ["[store]", f"path = {_toml(str(tmp / 'store'))}"]
    (tmp / "appliance.toml").write_text("\n".join(lines) + "\n")
    mlines: list[str] = []
    for mid, body in models.items():
        mlines.append(f'["{mid}"]')
        for k, v in body.items():
            mlines.append(f"{k} = {_toml(v)}")
    (tmp / "models.toml").write_text("\n".join(mlines) + "\n")
    return load_settings(tmp / "appliance.toml", tmp / "models.toml")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def pull_all(settings: Settings) -> Any:
    """Copy every catalog model (file:// sources) into a fresh store."""
    from appliance.store import Store, pull_model

    store = Store.open(settings.config.store.path)
    for mid, cfg in settings.catalog.models.items():
        pull_model(store, mid, cfg, progress=False)
    return store


@contextlib.asynccontextmanager
async def serving(settings: Settings, **kw: Any) -> AsyncIterator[Daemon]:
    kw.setdefault("host", "127.0.0.1")
    kw.setdefault("port", 0)
    d = Daemon(settings, **kw)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@contextlib.asynccontextmanager
async def openai_client(env: tuple[Settings, Any, str]) -> AsyncIterator[Any]:
    """A daemon serving `env` (settings, store, token) and a strict openai client on it."""
    import openai

    settings, store, token = env
    async with serving(settings, store=store) as d:
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=token, _strict_response_validation=True,
                                      max_retries=0) as c:
            yield c
