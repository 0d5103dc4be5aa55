"""Pushing outputs to a (fake, local) Hub: one commit, the model card, existing repos, errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest_hub import (WRITER_TOKEN, dead_endpoint, fake_hub, hub_env, point_at, pruned_once,  # noqa: F401
                          pruned_out, set_offline, tiny_llama)
from hubserver import FakeHub
from prune_surgery.card import GENERATED_MARK
from prune_surgery.cli_hub import register
from prune_surgery.errors import OutputError
from prune_surgery.hub import push_folder

# huggingface_hub uploads LFS parts with httpx2's deprecated `data=`; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", WRITER_TOKEN)
    return WRITER_TOKEN


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_creates_the_repo_and_uploads_everything_in_one_commit(
        fake_hub: FakeHub, hub_env: Path, pruned_out: Path, writer: str) -> None:
    notes: list[str] = []
    url = push_folder(pruned_out, "me/tiny-pruned", private=True, note=notes.append)
    repo = fake_hub.repos["me/tiny-pruned"]
    assert repo.private and url == f"{fake_hub.url}/me/tiny-pruned/commit/{repo.branches['main']}"
    assert repo.commit_messages == ["initial commit", "Upload pruned checkpoint (prune-surgery)"]
    remote = fake_hub.files("me/tiny-pruned")
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == local_files(pruned_out)
    card = remote["README.md"].decode()
    assert card.startswith("---\n") and GENERATED_MARK in card and "me/tiny-pruned" in card
    assert "model.safetensors" in remote and notes == []


def test_push_to_an_existing_repo_replaces_stale_weights_and_says_so(
        fake_hub: FakeHub, hub_env: Path, pruned_out: Path, writer: str) -> None:
    fake_hub.add_repo("me/existing", files={
        "README.md": b"# someone's card\n", "model-00001-of-00002.safetensors": b"old",
        "model.safetensors.index.json": b"{}", "notes.txt": b"keep me"})
    before = len(fake_hub.repos["me/existing"].commits)
    notes: list[str] = []
    push_folder(pruned_out, "me/existing", commit_message="prune v2", note=notes.append)
    repo = fake_hub.repos["me/existing"]
    assert len(repo.commits) == before + 1 and repo.commit_messages[-1] == "prune v2"
    remote = fake_hub.files("me/existing")
    assert "model-00001-of-00002.safetensors" not in remote and "model.safetensors.index.json" not in remote
    assert remote["notes.txt"] == b"keep me" and remote["model.safetensors"] == (pruned_out / "model.safetensors").read_bytes()
    assert GENERATED_MARK.encode() in remote["README.md"]
    assert any("README.md already in me/existing@main is replaced" in n for n in notes)


def test_push_to_a_branch_leaves_main_alone(fake_hub: FakeHub, hub_env: Path, pruned_out: Path, writer: str) -> None:
    fake_hub.add_repo("me/branched", files={"README.md": b"main card"})
    main = fake_hub.repos["me/branched"].branches["main"]
    push_folder(pruned_out, "me/branched", revision="pruned-v1")
    repo = fake_hub.repos["me/branched"]
    assert repo.branches["main"] == main and "model.safetensors" in fake_hub.files("me/branched", "pruned-v1")
    push_folder(pruned_out, "me/branched", revision="pruned-v1")  # the branch exists now: still fine
    assert repo.branches["main"] == main


def test_a_card_written_by_the_user_is_kept(fake_hub: FakeHub, hub_env: Path, pruned_out: Path, writer: str) -> None:
    (pruned_out / "README.md").write_text("# my own card\n")
    notes: list[str] = []
    push_folder(pruned_out, "me/own-card", note=notes.append)
    assert fake_hub.files("me/own-card")["README.md"] == b"# my own card\n"
    assert any("was not written by prune-surgery" in n for n in notes)


def push_error(out: Path, repo: str = "me/x", **kwargs) -> str:
    with pytest.raises(OutputError) as info:
        push_folder(out, repo, **kwargs)
    message = str(info.value)
    assert "\n" not in message and WRITER_TOKEN not in message and "hf_reader_secret_token" not in message
    return message


def test_push_errors_push_nothing(fake_hub: FakeHub, hub_env: Path, pruned_out: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert "a token is needed to write to me/x: set HF_TOKEN" in push_error(pruned_out)
    monkeypatch.setenv("HF_TOKEN", "hf_reader_secret_token")  # valid, but user "reader" cannot write to "me"
    assert "the token given (HF_TOKEN or `hf auth login`) cannot write to me/x" in push_error(pruned_out)
    monkeypatch.setenv("HF_TOKEN", WRITER_TOKEN)
    assert "not a prune-surgery output" in push_error(tmp_path)
    assert "not a repo id" in push_error(pruned_out, "no slash")
    set_offline(monkeypatch)
    assert "HF_HUB_OFFLINE=1 is set" in push_error(pruned_out)
    set_offline(monkeypatch, False)
    point_at(monkeypatch, dead_endpoint())
    assert push_error(pruned_out).startswith("cannot reach the Hub at http://127.0.0.1:")
    assert fake_hub.repos == {}


def test_push_command(fake_hub: FakeHub, hub_env: Path, pruned_out: Path, writer: str,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    app = typer.Typer()

    @app.command()
    def other() -> None:  # a second command, so `push` is a subcommand as in the real app
        """Placeholder."""

    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["push", str(pruned_out), "me/cli-push", "--private", "--revision", "v1",
                                 "--commit-message", "from the CLI"])
    assert result.exit_code == 0, result.output
    repo = fake_hub.repos["me/cli-push"]
    assert result.stdout.strip() == f"{fake_hub.url}/me/cli-push/commit/{repo.branches['v1']}"
    assert repo.private and repo.commit_messages[-1] == "from the CLI"
    monkeypatch.delenv("HF_TOKEN")
    result = runner.invoke(app, ["push", str(pruned_out), "me/cli-denied"])
    assert result.exit_code == 2 and "me/cli-denied" not in fake_hub.repos
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "HF_TOKEN" in lines[0]
    record = json.loads((pruned_out / "prune_surgery.json").read_text())
    assert record["tool"] == "prune-surgery"
