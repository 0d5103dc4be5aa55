"""The command line against a (fake, local) Hub: `run --stream --push-to`, `push`, one-line errors.

The CLI runs in a subprocess, so HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE reach
huggingface_hub the way they do for a user: through the environment, at import time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest_hub import SOURCE_REPO, WRITER_TOKEN, fake_hub, hub_env, tiny_llama, twins  # noqa: F401
from hubserver import FakeHub

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, hub: FakeHub, home: Path, token: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", **env)
    if token:
        environ["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "prune_surgery", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_run_stream_and_push_in_one_command(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path) -> None:
    commit = fake_hub.add_repo(SOURCE_REPO, tiny_llama, files=twins())
    out = tmp_path / "out"
    result = cli("run", SOURCE_REPO, str(out), "--drop-layers", "1,2", "--stream", "--quiet",
                 "--push-to", "me/tiny-pruned", "--private", "--commit-message", "pruned in CI",
                 hub=fake_hub, home=hub_env, token=WRITER_TOKEN)
    assert result.returncode == 0, result.stderr
    assert WRITER_TOKEN not in result.stdout + result.stderr
    repo = fake_hub.repos["me/tiny-pruned"]
    assert repo.private and repo.commit_messages[-1] == "pruned in CI"
    remote = fake_hub.files("me/tiny-pruned")
    assert remote["model.safetensors"] == (out / "model.safetensors").read_bytes()
    card = remote["README.md"].decode()
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == SOURCE_REPO and commit in card
    assert "--push-to me/tiny-pruned" in card  # the exact command
    assert not (hub_env / "hub" / "models--org--tiny-llama" / "blobs").exists()  # streamed: no local copy


def test_a_failed_run_pushes_nothing(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(SOURCE_REPO, tiny_llama)
    result = cli("run", SOURCE_REPO, str(tmp_path / "out"), "--drop-layers", "0,1,2,3,9", "--push-to", "me/never",
                 hub=fake_hub, home=hub_env, token=WRITER_TOKEN)
    one_error_line(result)
    assert "me/never" not in fake_hub.repos and not (tmp_path / "out").exists()


def test_cli_errors_are_one_line(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path) -> None:
    fake_hub.add_repo("me/gated", tiny_llama, gated=True)
    line = one_error_line(cli("inspect", "org/missing", hub=fake_hub, home=hub_env))
    assert "repo org/missing not found" in line
    line = one_error_line(cli("inspect", "me/gated", "--stream", hub=fake_hub, home=hub_env,
                              token="hf_reader_secret_token"))
    assert "gated" in line and "hf_reader_secret_token" not in line
    line = one_error_line(cli("inspect", "me/gated", hub=fake_hub, home=hub_env, HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE=1" in line
    line = one_error_line(cli("push", str(tmp_path), "me/x", hub=fake_hub, home=hub_env, token=WRITER_TOKEN))
    assert "not a prune-surgery output" in line


def test_second_cli_run_downloads_nothing(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(SOURCE_REPO, tiny_llama, files=twins())
    first = cli("run", SOURCE_REPO, str(tmp_path / "a"), "--drop-layers", "1", "-q", hub=fake_hub, home=hub_env)
    assert first.returncode == 0, first.stderr
    assert fake_hub.downloads()
    fake_hub.reset_counters()
    second = cli("run", SOURCE_REPO, str(tmp_path / "b"), "--drop-layers", "1", "-q", hub=fake_hub, home=hub_env)
    assert second.returncode == 0, second.stderr
    assert fake_hub.downloads() == [] and fake_hub.bytes_sent == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
