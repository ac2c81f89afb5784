"""Bundle import by a user who may not write the catalog: refused up front with one line and
nothing changed; records a root-run import writes are readable by the service user; any
unforeseen OSError in the CLI is one line, not a traceback."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from appliance.cli import build_parser
from appliance.store.core import Store
from appliance.store.records import BlobRef, ModelRecord, write_record
from test_bundle_kit import cli, make_site, source, tree_digest  # noqa: F401
from test_bundle_kit import DEST_MODELS, Source


def _cli_as(uid: int, gid: int, *argv: str) -> tuple[int, str]:
    """Run `appliance ARGV` in a forked child that dropped to uid/gid; (exit code, stderr).

    A fork, not a subprocess: this Python lives where another uid may not read it, so
    everything the command imports is imported here first."""
    build_parser()  # imports every command module
    import appliance.bundle.importer  # noqa: F401  (imported lazily by the command)

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        rc = 99
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            rc, _, err = cli(*argv)
            os.write(w, json.dumps([rc, err]).encode())
        finally:
            os._exit(0 if rc != 99 else 99)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    rc, err = json.loads(data)
    return rc, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the import as another uid")
def test_import_by_a_user_who_cannot_write_the_catalog_is_refused_before_anything(source: Source) -> None:
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)  # like /etc/appliance for a user outside its group: no writing
        site = make_site(Path(d) / "etc", DEST_MODELS)
        os.chmod(site.dir, 0o755)
        Store.open(site.store)
        for p in [site.store, *site.store.rglob("*")]:  # the store belongs to the importing user
            os.chown(p, nobody.pw_uid, nobody.pw_gid)
        bundle = Path(d) / "models.bundle"
        shutil.copyfile(source.bundle, bundle)
        before = tree_digest(site.store)
        catalog_before = site.models.read_bytes()

        rc, err = _cli_as(nobody.pw_uid, nobody.pw_gid, "bundle", "import", str(bundle), *site.args())

        assert rc == 1, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "run the import as root" in err and str(site.models) in err
        assert tree_digest(site.store) == before  # no blob adopted, no record written
        assert not any((site.store / "blobs").iterdir())
        assert site.models.read_bytes() == catalog_before
        assert not (site.dir / "models.toml.lock").exists()


def test_records_are_readable_by_everyone(tmp_path: Path) -> None:
    """A root-run import must leave records the service user can read (mkstemp makes 0600)."""
    rec = ModelRecord("m", "hf://o/r/m.gguf", "main", [BlobRef("0" * 64, 1, "hf://o/r/m.gguf")])
    write_record(tmp_path / "manifests", rec)
    (path,) = (tmp_path / "manifests").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_unforeseen_os_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("")
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[auth]\nkeys_file = "{blocker}/keys.toml"\n')  # a directory that is a file
    rc, out, err = cli("keys", "create", "x", "--config", str(cfg))
    assert rc == 1
    assert err == f"appliance: error: File exists: {blocker}\n"
    assert out == ""
