"""Writing OUT safely: free space, full disks, one writer per OUT, leftovers, verify, links and paths."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import prune_surgery as ps
from models import tree_digest
from prune_surgery import output
from prune_surgery.errors import CheckpointError, OutputError
from prune_surgery.guard import free_bytes, out_lock
from test_errors import assert_clean_failure, cli

SPEC = ps.PruneSpec(sizes={"hidden_size": 48}, max_shard_size=30_000)
ARGS = ("--hidden-size", "48", "--max-shard-size", "30KB", "--quiet")


def _mount_works() -> bool:
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d; r=$?; rmdir $d; exit $r"
    try:
        return subprocess.run(["unshare", *(["-m"] if os.geteuid() == 0 else ["-rm"]), "sh", "-c", probe],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mount = pytest.mark.skipif(not _mount_works(), reason="cannot mount a tmpfs in a private mount namespace here")


def on_tmpfs(tmp_path: Path, size: str, python: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run `python` with a fresh `size` tmpfs at tmp_path/mnt (private mount namespace); what it left there."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    left = tmp_path / "left.txt"
    shell = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && {{ {shlex.quote(sys.executable)} -c {shlex.quote(python)}; "
             f"rc=$?; ls -A {mnt} > {left}; exit $rc; }}")
    result = subprocess.run(["unshare", *(["-m"] if os.geteuid() == 0 else ["-rm"]), "sh", "-c", shell],
                            capture_output=True, text=True, timeout=120)
    return result, left.read_text().split() if left.exists() else ["<not run>"]


def cli_code(*args: str, no_space_check: bool = False) -> str:
    patch = "import prune_surgery.output as o; o.check_space = lambda *a: None\n" if no_space_check else ""
    return f"import sys\n{patch}sys.argv = ['prune-surgery', *{list(args)!r}]\nfrom prune_surgery.cli import main\nmain()\n"


# -- disk space ------------------------------------------------------------------------------
@needs_mount
@pytest.mark.parametrize("command", ["plan", "run"])
def test_plan_and_run_refuse_a_disk_too_small_with_needed_and_free_bytes(checkpoints, tmp_path, command):
    src, out = checkpoints["llama"], str(tmp_path / "mnt" / "out")
    digest = tree_digest(src)
    args = ("plan", str(src), *ARGS[:-1], "--out", out) if command == "plan" else ("run", str(src), out, *ARGS)
    result, left = on_tmpfs(tmp_path, "128k", cli_code(*args))
    assert_clean_failure(result, "needs", "bytes) but its filesystem has only", "free")
    assert left == [] and tree_digest(src) == digest


@needs_mount
def test_a_disk_that_fills_anyway_gives_one_line_and_no_out(checkpoints, tmp_path):
    src = checkpoints["llama"]
    result, left = on_tmpfs(tmp_path, "160k", cli_code("run", str(src), str(tmp_path / "mnt" / "out"), *ARGS, no_space_check=True))
    assert_clean_failure(result, "filled up", "nothing was written")
    assert left == []  # no OUT, no temporary folder, no lock file


@needs_mount
def test_a_disk_with_room_is_written(checkpoints, tmp_path):
    result, left = on_tmpfs(tmp_path, "4m", cli_code("run", str(checkpoints["llama"]), str(tmp_path / "mnt" / "out"), *ARGS)
                            + "from prune_surgery.verify import verify_output\n"
                            f"assert verify_output(__import__('pathlib').Path({str(tmp_path / 'mnt' / 'out')!r})) == []\n")
    assert result.returncode == 0, result.stderr
    assert left == ["out"]


def test_space_needed_is_every_byte_the_run_writes(checkpoints, tmp_path, monkeypatch):
    src = checkpoints["llama"]
    ps.run(src, tmp_path / "out", SPEC)
    written = sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    seen: list[int] = []
    monkeypatch.setattr(output, "check_space", lambda out, needed: seen.append(needed))
    ps.run(src, tmp_path / "again", SPEC)
    assert written <= seen[0] <= written + (1 << 20) + 12 * 64 * 2
    monkeypatch.undo()
    monkeypatch.setattr("prune_surgery.guard.free_bytes", lambda path: written // 2)
    with pytest.raises(OutputError, match=f"only .* \\({written // 2} bytes\\) free"):
        ps.plan(src, SPEC, out=tmp_path / "third")
    with pytest.raises(OutputError, match="free some space"):
        ps.run(src, tmp_path / "third", SPEC)
    assert not (tmp_path / "third").exists()
    monkeypatch.undo()
    assert free_bytes(tmp_path / "not" / "there") > 0


# -- one writer per OUT ---------------------------------------------------------------------
def test_a_second_run_into_a_locked_out_is_refused(checkpoints, tmp_path):
    out = tmp_path / "out"
    with out_lock(out.resolve()):
        result = cli("run", str(checkpoints["llama"]), str(out), *ARGS)
        with pytest.raises(OutputError, match="another prune-surgery run"):
            ps.run(checkpoints["llama"], out, SPEC)
    assert_clean_failure(result, "another prune-surgery run", f"pid {os.getpid()}")
    assert not out.exists()
    ps.run(checkpoints["llama"], out, SPEC)  # the lock is released
    assert not list(tmp_path.glob(".*lock"))


def test_concurrent_runs_into_one_out_never_mix_and_from_one_source_all_succeed(checkpoints, tmp_path):
    src = checkpoints["llama"]
    ps.run(src, tmp_path / "reference", SPEC)
    reference = {k: v for k, v in tree_digest(tmp_path / "reference").items() if k != "prune_surgery.json"}
    for attempt in range(3):
        out = tmp_path / f"same{attempt}"
        procs = [subprocess.Popen([sys.executable, "-m", "prune_surgery", "run", str(src), str(out), *ARGS, "--overwrite"],
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        assert any(rc == 0 for rc, _ in results), results
        for rc, err in results:
            assert rc == 0 or (rc == 2 and "another prune-surgery run" in err), err
        assert {k: v for k, v in tree_digest(out).items() if k != "prune_surgery.json"} == reference
    procs = [subprocess.Popen([sys.executable, "-m", "prune_surgery", "run", str(src), str(tmp_path / f"own{i}"), *ARGS])
             for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_leftovers_of_dead_runs_are_removed_and_those_of_live_ones_named(checkpoints, tmp_path):
    dead, live = tmp_path / ".out.prune-surgery-4194999.tmp", tmp_path / f".other.prune-surgery-{os.getpid()}.tmp"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 3000)
    notes: list[str] = []
    ps.run(checkpoints["llama"], tmp_path / "out", SPEC, note=notes.append)
    assert not dead.exists() and live.exists()
    assert any(str(dead) in n and "2.9 KiB" in n and "no longer exists" in n for n in notes), notes
    assert any(str(live) in n and "2.9 KiB" in n and f"running process {os.getpid()}" in n for n in notes), notes


# -- verify ----------------------------------------------------------------------------------
@pytest.fixture
def out(checkpoints, tmp_path) -> Path:
    ps.run(checkpoints["llama"], tmp_path / "out", SPEC)
    return tmp_path / "out"


def _damage_data(out: Path) -> str:
    shard = sorted(out.glob("*.safetensors"))[2]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x40
    shard.write_bytes(bytes(raw))
    return shard.name


def _damage_header(out: Path) -> str:
    shard = sorted(out.glob("*.safetensors"))[1]
    raw = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    return shard.name


def _edit_config(out: Path) -> str:
    config = json.loads((out / "config.json").read_text())
    config["intermediate_size"] += 8
    (out / "config.json").write_text(json.dumps(config))
    return "config.json implies"


def _drop_shard(out: Path) -> str:
    shard = sorted(out.glob("*.safetensors"))[-1]
    shard.unlink()
    return shard.name


def test_verify_passes_a_sound_output(out):
    result = cli("verify", str(out))
    assert result.returncode == 0 and "check out" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("damage", [_damage_data, _damage_header, _edit_config, _drop_shard])
def test_verify_exits_1_with_what_differs(out, damage):
    word = damage(out)
    result = cli("verify", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and word in result.stdout, result.stdout


def test_verify_of_no_folder_is_a_usage_error(tmp_path):
    assert_clean_failure(cli("verify", str(tmp_path / "nothing")), "not a folder")


# -- links and paths ---------------------------------------------------------------------------
def test_a_shard_or_side_file_linking_outside_the_source_is_refused(checkpoints, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(checkpoints["llama"], outside)
    for name in (sorted(p.name for p in outside.glob("*.safetensors"))[0], "generation_config.json"):
        src = tmp_path / f"src-{name}"
        shutil.copytree(checkpoints["llama"], src)
        (src / name).unlink()
        (src / name).symlink_to(outside / name)
        with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
            ps.run(src, tmp_path / f"out-{name}", SPEC)
        assert_clean_failure(cli("run", str(src), str(tmp_path / f"out-{name}"), *ARGS), "outside the checkpoint folder")
        assert not (tmp_path / f"out-{name}").exists()
    inside = tmp_path / "linked-inside"  # a link inside the folder is fine
    shutil.copytree(checkpoints["llama"], inside)
    os.replace(inside / "generation_config.json", inside / "real-generation.json")
    (inside / "generation_config.json").symlink_to("real-generation.json")
    ps.run(inside, tmp_path / "out-inside", SPEC)


class _Names:
    """A storage whose side files have hostile names (as a Hub repo listing could)."""

    description = "hostile"

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list_files(self) -> list[str]:
        return self.names

    def read_bytes(self, name: str) -> bytes:
        return b"{}"


def test_side_files_with_separators_or_dots_are_never_written_outside_out(tmp_path):
    hostile = ["../evil.json", "a/../../evil.json", "..", ".", "/etc/evil.json", "sub/tokenizer.json",
               "..\\evil.json", "x\\..\\..\\evil.json", "tokenizer_config.json"]
    assert output.side_files(_Names(hostile)) == ["tokenizer_config.json"]  # type: ignore[arg-type]
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    from prune_surgery.api import write_side_files

    write_side_files(SimpleNamespace(keep={}), _Names(hostile), out)  # type: ignore[arg-type]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "deep/out/tokenizer_config.json"]
