"""An import killed (SIGKILL) in the middle of a file leaves the store as it was, apart from
its temp area, and the next Store.open cleans that. The test feeds the bundle through a pipe
it controls, stops feeding mid-file, waits until the temp file holds bytes, then kills."""

from __future__ import annotations

import signal
import subprocess
import sys
import tarfile
import time

from appliance.store.core import Store
from test_bundle_kit import ROOT, Site, Source, cli, dest, source, tree_digest  # noqa: F401

MiB = 1024 * 1024


def _wait_for_temp_bytes(site: Site, proc: subprocess.Popen[bytes], at_least: int) -> int:
    """Poll the temp area until the importer has written `at_least` bytes (or fail fast if it died)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode  # type: ignore[union-attr]
        sizes = [p.stat().st_size for p in (site.store / "tmp").glob("*.tmp")]
        if sizes and max(sizes) >= at_least:
            return max(sizes)
        time.sleep(0.01)  # a condition poll with a deadline, not a timing assumption
    raise AssertionError("the importer never wrote into the temp area")


def test_import_killed_mid_file_leaves_the_store_unchanged(source: Source, dest: Site) -> None:
    with tarfile.open(source.only_a) as t:
        member = t.getmembers()[-1]
    data = source.only_a.read_bytes()
    assert member.size > 6 * MiB
    before, catalog = tree_digest(dest.store), dest.models.read_bytes()

    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "bundle", "import", "-", *dest.args()],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(data[: member.offset_data + 5 * MiB])  # half of the model file, no more
        proc.stdin.flush()
        written = _wait_for_temp_bytes(dest, proc, 2 * MiB)
        assert written < member.size
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
    assert proc.returncode == -signal.SIGKILL

    assert tree_digest(dest.store) == before
    assert dest.models.read_bytes() == catalog
    assert list((dest.store / "tmp").iterdir()), "the killed import's temp file should still be there"

    Store.open(dest.store)  # the next start cleans the temp area
    assert list((dest.store / "tmp").iterdir()) == []
    assert tree_digest(dest.store) == before

    rc, _, err = cli("bundle", "import", str(source.only_a), *dest.args())
    assert rc == 0, err


def test_opening_the_store_spares_a_live_importers_temp_file(source: Source, dest: Site) -> None:
    """A second process opening the store (e.g. `appliance ls`) must not delete the temp file
    of an import that is still running."""
    with tarfile.open(source.only_a) as t:
        member = t.getmembers()[-1]
    data = source.only_a.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "bundle", "import", "-", *dest.args()],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(data[: member.offset_data + 4 * MiB])
    proc.stdin.flush()
    _wait_for_temp_bytes(dest, proc, 1 * MiB)
    Store.open(dest.store)
    assert list((dest.store / "tmp").glob("*.tmp"))
    proc.stdin.write(data[member.offset_data + 4 * MiB :])
    proc.stdin.close()
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert list((dest.store / "tmp").iterdir()) == []
    assert Store.open(dest.store).record("tiny-a") is not None


KILL_AT_COMMIT = """
import os, signal, sys
from appliance.bundle import importer
from appliance.cli import main

def killed(*a, **k):  # the process dies where the catalog was about to be written
    os.kill(os.getpid(), signal.SIGKILL)

importer.merge_catalog = killed
sys.exit(main(["bundle", "import", *sys.argv[1:]]))
"""


def test_import_killed_in_its_install_phase_is_undone_at_the_next_open(source: Source, dest: Site) -> None:
    """Killed after the blobs and records were installed, before the catalog was written:
    the next Store.open puts the store back as it was (no blob or record without an entry)."""
    before, catalog = tree_digest(dest.store), dest.models.read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_AT_COMMIT, str(source.only_a), *dest.args()],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list((dest.store / "blobs").iterdir()) != [] or (dest.store / "manifests").iterdir()  # it got that far
    assert tree_digest(dest.store) != before
    Store.open(dest.store)  # what any next command or the daemon's start does
    content = lambda t: {k: v for k, v in t.items() if not k.startswith("locks/")}  # noqa: E731
    assert content(tree_digest(dest.store)) == content(before)  # (an empty flock file may stay)
    assert dest.models.read_bytes() == catalog
    assert list((dest.store / "tmp").iterdir()) == []
    rc, _, err = cli("bundle", "import", str(source.only_a), *dest.args())  # and it imports fine after
    assert rc == 0, err
    assert Store.open(dest.store).record("tiny-a") is not None


def test_import_failing_at_its_commit_undoes_blobs_and_records(source: Source, dest: Site, monkeypatch) -> None:  # noqa: ANN001
    from appliance.bundle import importer

    def fail(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    before, catalog = tree_digest(dest.store), dest.models.read_bytes()
    monkeypatch.setattr(importer, "merge_catalog", fail)
    rc, _, err = cli("bundle", "import", str(source.only_a), *dest.args())
    assert rc != 0
    content = lambda t: {k: v for k, v in t.items() if not k.startswith("locks/")}  # noqa: E731
    assert content(tree_digest(dest.store)) == content(before)
    assert dest.models.read_bytes() == catalog and list((dest.store / "tmp").iterdir()) == []
