"""`appliance pull REPO[:QUANT]`: the repo listed through huggingface_hub against a local fake
hub, the file picked by quantization, the revision pinned to a commit, the catalog entry written
(comments kept, dotted ids quoted) and the model pulled and verified."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Callable

import pytest

from appliance.store.hubrepo import looks_like_repo, parse_ref, pick
from cli_support import Ran, run_cli_env
from fakehub import FakeHub
from test_download import blob, env_for

MB = 1024 * 1024
COMMIT = "ab" * 20
Cli = Callable[..., Ran]


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Cli:
    return functools.partial(run_cli_env, monkeypatch)


def quants_repo(hub: FakeHub, repo: str = "owner/qwen2.5-0.5b-GGUF") -> dict[str, object]:
    files = {}
    for i, q in enumerate(["Q2_K", "Q4_K_M", "Q5_K_M", "Q8_0"]):
        files[q] = hub.add(repo, f"qwen2.5-0.5b-{q.lower()}.gguf", blob(MB // 4, i), commit=COMMIT)
    hub.add(repo, "README.md", b"# card", commit=COMMIT)
    return files


def empty_catalog(tmp_path: Path, hub: FakeHub) -> tuple[Path, dict[str, str]]:
    """An empty models.toml and the environment that pulls from `hub` into tmp_path/store."""
    models = tmp_path / "models.toml"
    models.touch()
    return models, env_for(hub.url, tmp_path / "store", models)


def test_parse_ref_forms() -> None:
    assert parse_ref("owner/repo") == parse_ref("hf://owner/repo")
    r = parse_ref("hf://owner/repo/sub/m.gguf@v1")
    assert (r.repo, r.file, r.quant, r.revision) == ("owner/repo", "sub/m.gguf", None, "v1")
    r = parse_ref("owner/repo:q8_0@" + COMMIT)
    assert (r.quant, r.revision) == ("Q8_0", COMMIT)
    for text in ["owner/repo", "hf://owner/repo", "owner/repo:Q8_0@v1", "owner/repo/sub/m.gguf"]:
        assert looks_like_repo(text), text
    for text in ["gemma-3-270m", "qwen2.5:7b", "owner/repo/notes.txt"]:
        assert not looks_like_repo(text), text
    for bad in ["owner", "owner/repo/readme.md", "owner/repo/m.gguf:Q4_K_M", "owner/repo@"]:
        with pytest.raises(Exception):
            parse_ref(bad)


def test_pick_by_tag_nearest_shards_and_mmproj() -> None:
    names = ["a-Q2_K.gguf", "a-Q5_K_M.gguf", "a-Q8_0.gguf", "mmproj-a-f16.gguf", "mmproj-a-q8_0.gguf"]
    p = pick(names)
    assert (p.shards, p.quant, p.mmproj) == (["a-Q5_K_M.gguf"], "Q5_K_M", "mmproj-a-f16.gguf")
    assert pick(names, "Q2_K").shards == ["a-Q2_K.gguf"]
    split = [f"big/a-Q4_K_M-{i:05d}-of-00003.gguf" for i in (3, 1, 2)] + ["a-Q8_0.gguf"]
    assert pick(split).shards == [f"big/a-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert pick(split[:2] + ["a-Q8_0.gguf"]).shards == ["a-Q8_0.gguf"]  # incomplete split: not offered
    assert pick(["model.gguf"]).shards == ["model.gguf"]  # one untagged file needs no tag


def test_pull_repo_adds_pinned_verified_entry(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    files = quants_repo(hub)
    hub.licenses["owner/qwen2.5-0.5b-GGUF"] = "apache-2.0"
    models = tmp_path / "models.toml"
    models.write_text("# my models\n\n[other]  # keep me\nsource = \"file:///x.gguf\"\n")
    env = env_for(hub.url, tmp_path / "store", models)
    p = cli(env, "pull", "owner/qwen2.5-0.5b-GGUF:Q4_K_M")
    assert p.returncode == 0, p.stderr
    want = files["Q4_K_M"]
    text = models.read_text()
    assert text.startswith("# my models\n\n[other]  # keep me\n")
    assert '["qwen2.5-0.5b-q4_k_m"]' in text  # the dotted id is quoted
    entry = tomllib.loads(text)["qwen2.5-0.5b-q4_k_m"]
    assert entry == {"source": "hf://owner/qwen2.5-0.5b-GGUF/qwen2.5-0.5b-q4_k_m.gguf",
                     "revision": COMMIT, "sha256": want.sha256}  # type: ignore[attr-defined]
    assert (tmp_path / "store" / "blobs" / f"sha256-{want.sha256}").exists()  # type: ignore[attr-defined]
    listed = hub.info_requests()  # one listing, with the files' sizes and LFS checksums
    assert len(listed) == 1 and "blobs=" in listed[0].path.lower()
    ls = cli(env, "ls")
    assert "qwen2.5-0.5b-q4_k_m  verified" in ls.stdout
    show = cli(env, "show", "qwen2.5-0.5b-q4_k_m")
    assert "license         apache-2.0 (model card)" in show.stdout and want.sha256 in show.stdout  # type: ignore[attr-defined]
    assert f"revision        {COMMIT}" in show.stdout
    assert "pin it" not in p.stdout
    # pulled again by the same reference: up to date, the catalog unchanged
    again = cli(env, "pull", "owner/qwen2.5-0.5b-GGUF:Q4_K_M")
    assert again.returncode == 0 and again.stdout == "qwen2.5-0.5b-q4_k_m: up to date\n"
    assert models.read_text() == text
    # files removed, entry kept: the same reference fetches them again into the same entry
    assert cli(env, "rm", "--keep-entry", "qwen2.5-0.5b-q4_k_m").returncode == 0
    back = cli(env, "pull", "owner/qwen2.5-0.5b-GGUF:Q4_K_M")
    assert back.returncode == 0 and back.stdout == "qwen2.5-0.5b-q4_k_m: verified (hub)\n", back.stdout
    assert models.read_text() == text
    # the repo moved on (new commit, new file): the pinned entry is not silently repointed
    hub.add("owner/qwen2.5-0.5b-GGUF", "qwen2.5-0.5b-q4_k_m.gguf", blob(MB // 4, 50), commit="cd" * 20)
    hub.refs[("owner/qwen2.5-0.5b-GGUF", "main")] = "cd" * 20
    moved = cli(env, "pull", "owner/qwen2.5-0.5b-GGUF:Q4_K_M")
    assert moved.returncode == 2 and "pinned to another version" in moved.stderr and "cdcdcdcdcdcd" in moved.stderr


def test_default_quant_nearest_name_and_revision(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    repo = "owner/tiny-GGUF"
    hub.add(repo, "tiny-Q5_K_M.gguf", blob(MB // 4, 7), commit=COMMIT)
    hub.add(repo, "tiny-Q8_0.gguf", blob(MB // 4, 8), commit=COMMIT)
    hub.refs[(repo, "v1")] = COMMIT
    models, env = empty_catalog(tmp_path, hub)
    p = cli(env, "pull", f"hf://{repo}@v1", "--name", "tiny")
    assert p.returncode == 0, p.stderr
    assert "Q4_K_M is not in owner/tiny-GGUF: took the nearest, Q5_K_M" in p.stderr
    entry = tomllib.loads(models.read_text())["tiny"]
    assert entry["source"].endswith("/tiny-Q5_K_M.gguf") and entry["revision"] == COMMIT


def test_split_model_and_mmproj(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    repo = "owner/vis-GGUF"
    shards = [hub.add(repo, f"vis-Q4_K_M-{i:05d}-of-00002.gguf", blob(MB // 4, 20 + i), commit=COMMIT) for i in (1, 2)]
    proj = hub.add(repo, "mmproj-vis-f16.gguf", blob(MB // 8, 30), commit=COMMIT)
    models, env = empty_catalog(tmp_path, hub)
    p = cli(env, "pull", repo)
    assert p.returncode == 0, p.stderr
    entry = tomllib.loads(models.read_text())["vis-q4_k_m"]
    assert entry["source"] == f"hf://{repo}/vis-Q4_K_M-00001-of-00002.gguf"
    assert entry["sha256"] == [s.sha256 for s in shards]
    assert (entry["mmproj"], entry["mmproj_sha256"]) == (f"hf://{repo}/mmproj-vis-f16.gguf", proj.sha256)
    blobs = tmp_path / "store" / "blobs"
    assert all((blobs / f"sha256-{f.sha256}").exists() for f in [*shards, proj])
    # verify re-hashes the projector too: a changed one is deleted and named
    mm = blobs / f"sha256-{proj.sha256}"
    mm.chmod(0o644)
    mm.write_bytes(blob(MB // 8, 31))
    v = cli(env, "verify", "vis-q4_k_m")
    assert v.returncode == 1 and f"sha256-{proj.sha256}, deleted" in v.stderr and not mm.exists()
    assert cli(env, "pull", "vis-q4_k_m").returncode == 0 and mm.exists()  # fetched again
    # rm removes the projector too
    assert cli(env, "rm", "vis-q4_k_m").returncode == 0
    assert not list(blobs.iterdir())


def test_a_file_without_lfs_is_pinned_to_what_was_hashed(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add("owner/small", "small.gguf", blob(MB // 8, 60), commit=COMMIT, lfs=False)
    models, env = empty_catalog(tmp_path, hub)
    p = cli(env, "pull", "owner/small")
    assert p.returncode == 0, p.stderr
    assert tomllib.loads(models.read_text())["small"]["sha256"] == f.sha256
    assert "pin it" not in p.stdout  # pinned already, by the pull itself


def test_a_file_in_the_repo_and_clear_errors(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    quants_repo(hub)
    models, env = empty_catalog(tmp_path, hub)
    p = cli(env, "pull", "hf://owner/qwen2.5-0.5b-GGUF/qwen2.5-0.5b-q8_0.gguf", "--name", "q8")
    assert p.returncode == 0, p.stderr
    assert tomllib.loads(models.read_text())["q8"]["source"].endswith("q8_0.gguf")
    for ref, code, words in [
        ("owner/missing-GGUF", 1, "owner/missing-GGUF"),
        ("owner/qwen2.5-0.5b-GGUF@nobranch", 1, "nobranch"),
        ("owner/qwen2.5-0.5b-GGUF:Q9_X", 2, "unknown quantization 'Q9_X'"),
        ("hf://owner/qwen2.5-0.5b-GGUF/nope.gguf", 2, "nope.gguf is not a GGUF model file"),
    ]:
        r = cli(env, "pull", ref)
        assert r.returncode == code and words in r.stderr, (ref, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    r = cli(env, "pull", "q8", "--name", "other")
    assert r.returncode == 2 and "--name names a model pulled from a hub repo" in r.stderr
    # a name already taken by another source is refused; the catalog keeps only q8
    r = cli(env, "pull", "owner/qwen2.5-0.5b-GGUF:Q2_K", "--name", "q8")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert list(tomllib.loads(models.read_text())) == ["q8"]


def test_piped_pull_verify_import_report_progress(tmp_path: Path, hub: FakeHub, cli: Cli,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.progress

    monkeypatch.setattr(appliance.progress, "INTERVAL_S", 0.0)  # a line per block instead of every 10 s
    quants_repo(hub)
    models, env = empty_catalog(tmp_path, hub)
    p = cli(env, "pull", "owner/qwen2.5-0.5b-GGUF", "--name", "q")
    assert p.returncode == 0, p.stderr
    assert "qwen2.5-0.5b-q4_k_m.gguf: 256.0 KiB of 256.0 KiB (100%)" in p.stderr
    assert "qwen2.5-0.5b-q4_k_m.gguf: 256.0 KiB done in" in p.stderr
    v = cli(env, "verify", "q")
    assert v.returncode == 0 and "q: 256.0 KiB of 256.0 KiB (100%)" in v.stderr
    assert cli(env, "verify", "-q", "q").stderr == ""
    local = tmp_path / "local.gguf"
    local.write_bytes(blob(MB // 2, 99))
    i = cli(env, "import", str(local), "--name", "loc")
    assert i.returncode == 0 and "local.gguf: 512.0 KiB of 512.0 KiB (100%)" in i.stderr


def test_file_pull_without_pin_does_not_claim_the_hub(tmp_path: Path, cli: Cli) -> None:
    local = tmp_path / "local.gguf"
    local.write_bytes(blob(MB // 4, 5))
    models = tmp_path / "models.toml"
    models.write_text(f'[m]\nsource = "file://{local}"\n')
    p = cli(env_for("http://127.0.0.1:9", tmp_path / "store", models), "pull", "m")
    assert p.returncode == 0, p.stderr
    assert "hub" not in p.stdout and "no sha256 pinned, hashed the file as it is now; pin it" in p.stdout


def test_fresh_user_without_a_catalog_and_offline(tmp_path: Path, hub: FakeHub, cli: Cli,
                                                   isolated_env: Path) -> None:
    """No models.toml anywhere: the pull creates ~/.config/appliance/models.toml."""
    quants_repo(hub)
    env = dict(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", APPLIANCE_STORE=str(tmp_path / "store"))
    off = cli({**env, "HF_HUB_OFFLINE": "1"}, "pull", "owner/qwen2.5-0.5b-GGUF")
    assert off.returncode == 1 and "HF_HUB_OFFLINE is set: cannot list owner/qwen2.5-0.5b-GGUF" in off.stderr
    assert not hub.info_requests()
    p = cli(env, "pull", "owner/qwen2.5-0.5b-GGUF")
    assert p.returncode == 0, p.stderr
    created = isolated_env / ".config" / "appliance" / "models.toml"
    assert "qwen2.5-0.5b-q4_k_m" in tomllib.loads(created.read_text())
    assert "qwen2.5-0.5b-q4_k_m  verified" in cli(env, "ls").stdout
