"""Network faults injected by the local Hub server: downloads and --stream range reads retry and resume.

Every kind of fault, in both modes, must give the same output bytes as a local run; once retries are
exhausted the run fails with one line, exit 2, and no OUT.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

import prune_surgery
from conftest_hub import SOURCE_REPO, fake_hub, hub_env, tiny_llama  # noqa: F401
from hubfaults import FAULT_KINDS
from hubserver import FakeHub
from prune_surgery.errors import SourceError
from prune_surgery.verify import verify_output
from test_errors import assert_clean_failure

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
DROP_HALF = prune_surgery.PruneSpec(drop_layers=(1, 2))
FAULTS = {"status": [{"status": code} for code in (500, 502, 503, 429)]}


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "prune_surgery.json"}


@pytest.fixture
def local(tiny_llama: Path, tmp_path: Path) -> dict[str, bytes]:
    prune_surgery.run(str(tiny_llama), tmp_path / "local", DROP_HALF)
    return outputs(tmp_path / "local")


def cases() -> list[tuple[str, dict[str, object]]]:
    return [(kind, options) for kind in FAULT_KINDS if kind != "status" for options in [{}]] + [
        ("status", options) for options in FAULTS["status"]]


@pytest.mark.parametrize("stream", [False, True], ids=["download", "stream"])
def test_every_fault_is_retried_and_the_output_is_the_local_one(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path, local, stream: bool) -> None:
    fake_hub.add_repo(SOURCE_REPO, tiny_llama)
    injected = 0
    for number, (kind, options) in enumerate(cases()):
        if kind == "corrupt" and stream:
            continue  # a range has no digest of its own to be checked against (see the closing note)
        cache = hub_env / "hub"
        for entry in cache.glob("models--*"):  # a fresh download every time
            import shutil

            shutil.rmtree(entry)
        fake_hub.faults.clear()
        fake_hub.faults_served.clear()
        fake_hub.inject(kind, times=2, **options)  # type: ignore[arg-type]
        out = tmp_path / f"out-{number}"
        prune_surgery.run(SOURCE_REPO, out, DROP_HALF, stream=stream)
        assert outputs(out) == local, kind
        assert verify_output(out) == []
        assert len(fake_hub.faults_served) == 2, (kind, fake_hub.faults_served)
        injected += len(fake_hub.faults_served)
    print(f"{'stream' if stream else 'download'}: {injected} faults injected, output identical to the local run")


def test_retry_after_is_honoured_and_waits_grow(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake_hub.add_repo(SOURCE_REPO, tiny_llama)
    fake_hub.inject("status", times=1, status=429, retry_after="1")
    fake_hub.inject("reset", times=3)
    with caplog.at_level(logging.WARNING, logger="prune_surgery.retry"):
        prune_surgery.run(SOURCE_REPO, tmp_path / "out", DROP_HALF, stream=True)
    waits = [float(m) for m in re.findall(r"retrying in ([\d.]+) s", caplog.text)]
    assert waits[0] == 1.0  # the server's Retry-After, not our 0.01 s first wait
    assert waits[1:] == sorted(waits[1:]) and len(waits) >= 2, waits


@pytest.mark.parametrize("stream", [False, True], ids=["download", "stream"])
def test_exhausted_retries_give_one_line_exit_2_and_no_out(
        fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path, stream: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add_repo(SOURCE_REPO, tiny_llama)
    monkeypatch.setenv("PRUNE_SURGERY_RETRIES", "2")
    fake_hub.inject("status", times=1000, status=503)
    with pytest.raises(SourceError, match="gave up after 3 attempts"):
        prune_surgery.run(SOURCE_REPO, tmp_path / "api", DROP_HALF, stream=stream)
    fake_hub.faults.clear()
    # huggingface_hub resumes a truncated download itself, 1 s apart, as long as bytes come: 503 keeps it short
    fake_hub.inject("truncate", times=1000) if stream else fake_hub.inject("status", times=1000, status=502)
    result = subprocess.run([sys.executable, "-m", "prune_surgery", "run", SOURCE_REPO, str(tmp_path / "cli"),
                             "--drop-layers", "1,2", "--quiet", *(["--stream"] if stream else [])],
                            capture_output=True, text=True, timeout=300)
    assert_clean_failure(result, "gave up after 3 attempts", "RemoteProtocolError" if stream else "502")
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_response_slower_than_the_timeout_is_retried(fake_hub: FakeHub, hub_env: Path, tiny_llama: Path, tmp_path: Path,
                                                       local, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    fake_hub.add_repo(SOURCE_REPO, tiny_llama)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    fake_hub.inject("slow", times=2, delay=1.5)
    prune_surgery.run(SOURCE_REPO, tmp_path / "out", DROP_HALF, stream=True)
    assert outputs(tmp_path / "out") == local and len(fake_hub.faults_served) == 2
