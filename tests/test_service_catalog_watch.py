"""A models.toml that did not exist when the daemon started is picked up once created
(`appliance import` writes it): by the file watcher and by a SIGHUP/admin re-read."""

from __future__ import annotations

from pathlib import Path

from appliance.clock import FakeClock
from appliance.config import load_settings
from appliance.daemon import Daemon
from appliance.service.runtime import Service, reload_files


def _daemon(tmp_path: Path) -> Daemon:
    (tmp_path / "appliance.toml").write_text(f'[store]\npath = "{tmp_path / "store"}"\n')
    settings = load_settings(tmp_path / "appliance.toml")
    assert settings.catalog.exists is False and not settings.catalog.path.exists()
    return Daemon(settings, host="127.0.0.1", port=0, clock=FakeClock())


def _create_catalog(path: Path, gguf: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'["late"]\nsource = "file://{gguf}"\ncontext = 128\n')


async def test_watcher_reads_a_catalog_created_after_start(tmp_path: Path, tiny_gguf: Path) -> None:
    d = _daemon(tmp_path)
    svc = Service(d, env={})
    watcher = svc.catalog_watcher()
    assert await watcher.check() is False  # still absent: nothing to do
    _create_catalog(d.settings.catalog.path, tiny_gguf)
    assert await watcher.check() is True
    assert set(d.settings.catalog.models) == {"late"}
    assert d.settings.catalog.exists is True


async def test_sighup_reload_reads_a_catalog_created_after_start(tmp_path: Path, tiny_gguf: Path) -> None:
    d = _daemon(tmp_path)
    assert "models" not in reload_files(d)
    _create_catalog(d.settings.catalog.path, tiny_gguf)
    assert reload_files(d)["models"] == ["late"]
    assert set(d.settings.catalog.models) == {"late"}
