"""Hub failures become one actionable line (SourceError / OutputError), never a traceback or a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest_hub import (SOURCE_REPO, WRITER_TOKEN, dead_endpoint, fake_hub, hub_env, point_at,  # noqa: F401
                          tiny_llama)
from hubserver import FakeHub
from prune_surgery.errors import SourceError
from prune_surgery.hub import resolve_hub_source

SECRET = "hf_reader_secret_token"


def pull_error(src: str, revision: str | None = None, stream: bool = False) -> str:
    with pytest.raises(SourceError) as info:
        resolve_hub_source(src, revision, stream)
    message = str(info.value)
    assert "\n" not in message and SECRET not in message and WRITER_TOKEN not in message
    return message


@pytest.mark.parametrize("stream", [False, True])
def test_repo_and_revision_not_found(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, stream: bool) -> None:
    fake_hub.add_repo(SOURCE_REPO, tiny_llama)
    message = pull_error("org/missing", stream=stream)
    assert "repo org/missing not found" in message and "HF_TOKEN" in message  # anonymous: may be private
    message = pull_error(SOURCE_REPO, "no-such-branch", stream=stream)
    assert "revision 'no-such-branch' not found in org/tiny-llama" in message and "--revision" in message
    assert fake_hub.downloads() == []


def test_private_and_gated_repos_say_a_token_is_needed(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add_repo("me/private", tiny_llama, private=True)
    fake_hub.add_repo("me/gated", tiny_llama, gated=True)
    assert "set HF_TOKEN" in pull_error("me/private")
    message = pull_error("me/gated")
    assert "gated" in message and "a token is needed" in message and "HF_TOKEN=<your token>" in message
    monkeypatch.setenv("HF_TOKEN", SECRET)  # a valid token of another user: 403 on the gated repo
    message = pull_error("me/gated")
    assert "the token given (HF_TOKEN or `hf auth login`) cannot read me/gated" in message
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_" + SECRET)  # an invalid token: 401
    message = pull_error("me/gated", stream=True)
    assert "denied (401)" in message and "cannot read me/gated" in message and "hf_wrong_" not in message
    monkeypatch.setenv("HF_TOKEN", WRITER_TOKEN)  # the owner gets through
    _, record = resolve_hub_source("me/gated", None, False)
    assert record["repo_id"] == "me/gated"


def test_unreachable_server_says_so_and_points_to_offline_mode(
        fake_hub: FakeHub, hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_at(monkeypatch, dead_endpoint())
    for stream in (False, True):
        message = pull_error(SOURCE_REPO, stream=stream)
        assert message.startswith("cannot reach the Hub at http://127.0.0.1:")
        assert "HF_HUB_OFFLINE=1 uses what is already in the Hub cache" in message


def test_bin_only_repo_asks_for_safetensors(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path) -> None:
    files = {"config.json": (tiny_llama / "config.json").read_bytes(), "pytorch_model.bin": b"\x80" * 1000}
    fake_hub.add_repo("org/old", files=files)
    for stream in (False, True):
        message = pull_error("org/old", stream=stream)
        assert "needs safetensors" in message and "safe_serialization=True" in message
    assert not any(path.endswith(".bin") for path in fake_hub.downloads())
    fake_hub.add_repo("org/empty", files={"config.json": b"{}"})
    assert "no safetensors weights" in pull_error("org/empty")


def test_index_naming_a_missing_shard(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors.index.json":
             b'{"metadata": {}, "weight_map": {"w": "model-00009-of-00009.safetensors"}}'}
    fake_hub.add_repo("org/broken", files=files)
    for stream in (False, True):
        assert "names model-00009-of-00009.safetensors, which the repo does not hold" in pull_error("org/broken", stream=stream)
    fake_hub.add_repo("org/bad-index", files={"config.json": b"{}", "model.safetensors.index.json": b"[1]"})
    assert "not a valid index" in pull_error("org/bad-index", stream=True)
