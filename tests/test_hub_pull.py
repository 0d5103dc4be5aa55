"""Pulling checkpoints from a (fake, local) Hub: what is downloaded, caching, revisions, streaming."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest_hub import SOURCE_REPO, fake_hub, hub_env, set_offline, tiny_llama, twins  # noqa: F401
from hubserver import FakeHub
from prune_surgery.checkpoint import open_checkpoint
from prune_surgery.errors import SourceError
from prune_surgery.hub import HubStorage, looks_like_repo_id, parse_repo_ref, resolve_hub_source
from prune_surgery.storage import LocalStorage

NEEDED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors.index.json"}


def serve(hub: FakeHub, folder: Path, repo: str = SOURCE_REPO, **kwargs) -> str:
    return hub.add_repo(repo, folder, files=twins(), **kwargs)


def shard_names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("model-*.safetensors")}


def test_repo_ids_are_told_from_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local").mkdir(parents=True)
    assert looks_like_repo_id("meta-llama/Llama-3.2-1B")
    assert looks_like_repo_id("hf://org/local@v1")
    assert looks_like_repo_id("org/name@refs/pr/3")
    assert not looks_like_repo_id("org/local")  # an existing folder wins
    assert not looks_like_repo_id("./org/name") and not looks_like_repo_id("/abs/path")
    assert not looks_like_repo_id("just-a-name") and not looks_like_repo_id("a/b/c")
    assert parse_repo_ref("hf://org/name@dev") == ("org/name", "dev")
    assert parse_repo_ref("hf://models/org/name", "v1") == ("org/name", "v1")
    assert parse_repo_ref("org/name") == ("org/name", None)
    with pytest.raises(SourceError, match="give only one"):
        parse_repo_ref("hf://org/name@dev", "main")
    with pytest.raises(SourceError, match="org/name"):
        parse_repo_ref("hf://not a repo")


def test_pull_downloads_only_what_the_job_needs(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path) -> None:
    commit = serve(fake_hub, tiny_llama)
    storage, record = resolve_hub_source(SOURCE_REPO, None, stream=False)
    assert isinstance(storage, LocalStorage)
    assert record == {"path": str(storage.root), "repo_id": SOURCE_REPO, "revision": None, "commit": commit}
    assert Path(storage.root).is_relative_to(hub_env / "hub")  # the normal Hub cache
    wanted = NEEDED | shard_names(tiny_llama)
    assert set(storage.list_files()) == wanted
    fetched = {path.rsplit("/", 1)[-1] for path in fake_hub.downloads()}
    assert fetched == wanted  # no .bin/.pth/.gguf/.msgpack twin, no README, no unreferenced shard
    for name in wanted:
        assert (storage.root / name).read_bytes() == (tiny_llama / name).read_bytes()
    ckpt = open_checkpoint(storage)
    assert any(".layers.3." in name for name in ckpt.tensors)


def test_second_pull_downloads_nothing_and_offline_uses_the_cache(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(fake_hub, tiny_llama)
    first, record = resolve_hub_source(SOURCE_REPO, None, stream=False)
    fake_hub.reset_counters()
    second, again = resolve_hub_source(f"hf://{SOURCE_REPO}", None, stream=False)
    assert fake_hub.downloads() == [] and fake_hub.bytes_sent == 0
    assert (second.root, again) == (first.root, record)
    fake_hub.reset_counters()
    set_offline(monkeypatch)
    third, offline_record = resolve_hub_source(SOURCE_REPO, None, stream=False)
    assert fake_hub.log == []  # not a single request
    assert third.root == first.root and offline_record["commit"] == record["commit"]


def test_offline_without_cache_says_how_to_download(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(fake_hub, tiny_llama)
    set_offline(monkeypatch)
    with pytest.raises(SourceError, match="not in the Hub cache and HF_HUB_OFFLINE=1 is set"):
        resolve_hub_source(SOURCE_REPO, None, stream=False)
    with pytest.raises(SourceError, match="drop --stream"):
        resolve_hub_source(SOURCE_REPO, None, stream=True)
    assert fake_hub.log == []


def test_revision_branch_tag_and_sha(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path) -> None:
    main = serve(fake_hub, tiny_llama)
    changed = tmp_path / "dev"
    changed.mkdir()
    for p in tiny_llama.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    (changed / "generation_config.json").write_text('{"max_length": 7}')
    dev = serve(fake_hub, changed, branch="dev")
    fake_hub.repos[SOURCE_REPO].tags["v1"] = main
    for src, rev, expected in [(SOURCE_REPO, "dev", dev), (f"hf://{SOURCE_REPO}@dev", None, dev),
                               (SOURCE_REPO, "v1", main), (SOURCE_REPO, main, main)]:
        storage, record = resolve_hub_source(src, rev, stream=False)
        assert record["commit"] == expected and record["revision"] == (rev or "dev")
        assert storage.read_bytes("generation_config.json") == fake_hub.files(SOURCE_REPO, expected)["generation_config.json"]


def test_stream_reads_exact_byte_ranges_and_keeps_no_copy(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path) -> None:
    commit = serve(fake_hub, tiny_llama)
    storage, record = resolve_hub_source(SOURCE_REPO, "main", stream=True)
    assert isinstance(storage, HubStorage)
    assert record == {"path": None, "repo_id": SOURCE_REPO, "revision": "main", "commit": commit}
    assert set(storage.list_files()) == NEEDED | shard_names(tiny_llama)
    shard = sorted(shard_names(tiny_llama))[0]
    data = (tiny_llama / shard).read_bytes()
    assert storage.size(shard) == len(data) and storage.exists(shard) and not storage.exists("pytorch_model.bin")
    blob = storage.open_blob(shard)
    fake_hub.reset_counters()
    for offset, length in [(0, 8), (8, 100), (len(data) - 33, 33), (12345, 1), (100, 0)]:
        assert bytes(blob.read(offset, length)) == data[offset:offset + length]
    blob.close()
    assert fake_hub.bytes_sent == 8 + 100 + 33 + 1  # exactly the ranges asked for, no read-ahead
    with pytest.raises(SourceError, match="past the end"):
        storage.open_blob(shard).read(len(data) - 4, 8)
    assert storage.read_bytes("config.json") == (tiny_llama / "config.json").read_bytes()
    cached = hub_env / "hub" / "models--org--tiny-llama"
    assert not (cached / "blobs").exists() and not (cached / "snapshots").exists()  # no local copy
    ckpt = open_checkpoint(storage)
    assert len(ckpt.tensors) == len(open_checkpoint(LocalStorage(tiny_llama)).tensors)


def test_stream_pins_the_commit(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path) -> None:
    first = serve(fake_hub, tiny_llama)
    storage, _ = resolve_hub_source(SOURCE_REPO, None, stream=True)
    fake_hub.add_repo(SOURCE_REPO, files={"config.json": b'{"moved": true}'})  # main moves on
    assert storage.read_bytes("config.json") == (tiny_llama / "config.json").read_bytes()
    assert storage.commit == first
    digest = hashlib.sha256(storage.read_bytes("config.json")).hexdigest()
    assert digest == hashlib.sha256((tiny_llama / "config.json").read_bytes()).hexdigest()
