"""store.verify_on_load: a blob is re-hashed before every load, so a file changed on disk
after it was verified is refused (and deleted), never loaded; without the setting the same
request would load it."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from appliance.config import load_settings
from test_api_support import pull_all, serving, write_config


def _flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    os.chmod(path, 0o444)


async def _complete(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions",
                          json={"model": "m", "prompt": "hello", "max_tokens": 2}) as r:
            return r.status, await r.json()


async def test_a_changed_blob_is_refused_and_deleted_before_load(tmp_path: Path, tiny_gguf: Path) -> None:
    write_config(tmp_path, {"m": {"source": f"file://{tiny_gguf}"}})
    with (tmp_path / "appliance.toml").open("a") as f:
        f.write("verify_on_load = true\n")  # the file ends inside [store]
    settings = load_settings(tmp_path / "appliance.toml", tmp_path / "models.toml")
    assert settings.config.store.verify_on_load
    store = pull_all(settings)
    (blob,) = store.model_paths("m", settings.catalog.models["m"])
    _flip_a_byte(blob)

    async with serving(settings, store=store) as d:
        status, body = await _complete(d.url)
        assert status == 502 and body["error"]["code"] == "checksum_mismatch", body
        assert "checksum mismatch" in body["error"]["message"]
        assert not blob.exists()
        status, body = await _complete(d.url)  # nothing unverified left to load
        assert status == 404 and body["error"]["code"] == "model_not_found"


async def test_without_the_setting_the_intact_blob_loads(tmp_path: Path, tiny_gguf: Path) -> None:
    settings = write_config(tmp_path, {"m": {"source": f"file://{tiny_gguf}"}})
    assert not settings.config.store.verify_on_load
    store = pull_all(settings)
    async with serving(settings, store=store) as d:
        status, body = await _complete(d.url)
        assert status == 200, body
