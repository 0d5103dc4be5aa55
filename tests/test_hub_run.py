"""End to end through the Python API: prune a checkpoint served by a (fake, local) Hub, stream it, push it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

import prune_surgery
from conftest_hub import (SOURCE_REPO, WRITER_TOKEN, fake_hub, hub_env, tiny_llama, tiny_llama_tied,  # noqa: F401
                          twins)
from hubserver import FakeHub
from prune_surgery.hub import push_folder

# huggingface_hub uploads LFS parts with httpx2's deprecated `data=`; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
DROP_HALF = prune_surgery.PruneSpec(drop_layers=(1, 2))


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "prune_surgery.json"}


def shard_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def header_bytes(folder: Path) -> int:
    return sum(8 + struct.unpack("<Q", p.read_bytes()[:8])[0] for p in folder.glob("*.safetensors"))


@pytest.mark.parametrize("stream", [False, True])
def test_hub_run_writes_the_same_bytes_as_a_local_run(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path, stream: bool) -> None:
    commit = fake_hub.add_repo(SOURCE_REPO, tiny_llama, files=twins())
    prune_surgery.run(str(tiny_llama), tmp_path / "local", DROP_HALF)
    prune_surgery.run(SOURCE_REPO, tmp_path / "hub", DROP_HALF, stream=stream, revision="main")
    assert outputs(tmp_path / "hub") == outputs(tmp_path / "local")
    source = json.loads((tmp_path / "hub" / "prune_surgery.json").read_text())["source"]
    assert source["repo_id"] == SOURCE_REPO and source["commit"] == commit and source["revision"] == "main"
    assert (source["path"] is None) == stream
    assert not any(p.endswith((".bin", ".pth", ".gguf", ".msgpack", "README.md")) for p in fake_hub.downloads())


def test_stream_depth_only_job_downloads_only_kept_layers(
        fake_hub: FakeHub, hub_env: Path, tiny_llama_tied: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(SOURCE_REPO, tiny_llama_tied, files=twins())
    plan = prune_surgery.run(SOURCE_REPO, tmp_path / "out", DROP_HALF, stream=True)
    source = shard_bytes(tiny_llama_tied)
    kept = shard_bytes(tmp_path / "out")
    share = fake_hub.bytes_sent / source
    print(f"stream, half the layers dropped: {fake_hub.bytes_sent} of {source} source bytes ({share:.1%}); "
          f"output shards {kept} bytes")
    assert share <= 0.55
    # Exactly: each source header, each kept tensor and each small file once; no read-ahead, no dropped layer.
    small = sum((tiny_llama_tied / name).stat().st_size for name in (
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"))
    kept_tensors = kept - header_bytes(tmp_path / "out")
    assert fake_hub.bytes_sent == header_bytes(tiny_llama_tied) + kept_tensors + small
    fetched = fake_hub.downloads()
    assert fetched and all("/resolve/" in path for path in fetched)
    assert plan.params_after < plan.params_before
    cached = hub_env / "hub" / "models--org--tiny-llama"
    assert not (cached / "blobs").exists() and not (cached / "snapshots").exists()


def test_run_then_push_carries_the_source_into_the_card(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = fake_hub.add_repo(SOURCE_REPO, tiny_llama, files=twins())
    out = tmp_path / "out"
    prune_surgery.run(f"hf://{SOURCE_REPO}", out, DROP_HALF, command="prune-surgery run org/tiny-llama out --drop-layers 1,2")
    assert not (out / "README.md").exists()  # the source's card is never copied
    monkeypatch.setenv("HF_TOKEN", WRITER_TOKEN)
    push_folder(out, "me/tiny-llama-pruned")
    card = fake_hub.files("me/tiny-llama-pruned")["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta == {"base_model": SOURCE_REPO, "tags": ["pruned", "prune-surgery"], "library_name": "transformers"}
    assert commit in card and "was **not copied**" in card and "# Source card" not in card
    assert "prune-surgery run org/tiny-llama out --drop-layers 1,2" in card
    assert "| `num_hidden_layers` **(changed)** | 4 | 2 |" in card
