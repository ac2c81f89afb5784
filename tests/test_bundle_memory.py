"""Exporting (and verifying) a file of several hundred MB streams it: the processes' peak
memory stays far below the file's size. The file is sparse (no disk, no write time) and its
sha256 was computed once and pinned here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.store.core import Store
from test_bundle_kit import ROOT, make_site

SIZE = 400 * 1024 * 1024
ZEROS_400MIB_SHA256 = "6ed5e85372e488807486f4446e2a3a501d319be812e969e3de426db798cc5704"
# ru_maxrss is in KiB on Linux. The bound is on what the export adds to the interpreter with
# the CLI imported (whatever other command groups import), and absolute: a quarter of the file.
GROWTH_LIMIT_KIB = 64 * 1024


# Linux carries a parent's resident size into a forked child's ru_maxrss (the copied or, with
# vfork, shared address space counts until exec), so measuring straight from this large pytest
# process would report pytest's size. A fresh small launcher runs the command and reports its
# RUSAGE_CHILDREN peak into a file.
LAUNCHER = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""


def _measured(report: Path, *argv: str) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, str(report), sys.executable, "-m", "appliance", *argv]


def test_export_and_verify_of_a_400mb_model_keep_memory_flat(tmp_path: Path) -> None:
    site = make_site(
        tmp_path / "big",
        f'[big]\nsource = "hf://example/big/big.gguf"\nsha256 = "{ZEROS_400MIB_SHA256}"\n',
    )
    store = Store.open(site.store)
    with open(store.blob_path(ZEROS_400MIB_SHA256), "wb") as f:
        f.truncate(SIZE)  # sparse: 400 MiB of zeros that take no disk

    reports = tmp_path / "export.rss", tmp_path / "verify.rss"
    export = subprocess.Popen(
        _measured(reports[0], "bundle", "export", "big", "-o", "-", *site.args()),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    verify = subprocess.Popen(
        _measured(reports[1], "bundle", "verify", "-"),
        cwd=ROOT, stdin=export.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    export.stdout.close()  # type: ignore[union-attr]  # verify holds the only reader
    out, err = verify.communicate()
    _, export_err = export.communicate()
    rc_export, rc_verify = export.returncode, verify.returncode
    rss_export, rss_verify = (int(r.read_text()) for r in reports)
    baseline = tmp_path / "baseline.rss"
    subprocess.run(_measured(baseline, "--version"), cwd=ROOT, check=True, capture_output=True)
    rss_base = int(baseline.read_text())

    assert rc_export == 0, export_err
    assert rc_verify == 0, err
    assert f"models/big/big.gguf  {SIZE}  sha256:{ZEROS_400MIB_SHA256}".encode() in out
    for what, rss in (("export", rss_export), ("verify", rss_verify)):
        assert rss - rss_base < GROWTH_LIMIT_KIB, f"{what} peaked at {rss} KiB (idle CLI {rss_base} KiB)"
        assert rss < SIZE // 1024 // 4, f"{what} peaked at {rss} KiB for a {SIZE >> 20} MiB file"
    print(f"peak RSS: export {rss_export} KiB, verify {rss_verify} KiB, idle CLI {rss_base} KiB, "
          f"file {SIZE >> 10} KiB")
