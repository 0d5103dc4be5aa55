"""Runs killed with SIGKILL at every kind of point leave OUT whole (old or new) and the source untouched.

A child process runs the real CLI with its file-writing steps counted (shard header, each tensor
write and in-kernel copy, tensor ends, side files, the final exchange or renames, cleanups); at
step N it SIGKILLs itself.  Steps are counted first, then kill points are spread over all of them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import prune_surgery as ps
from models import tree_digest
from prune_surgery.verify import verify_output

KILL_POINTS = 24

CHILD = r"""
import os, signal, sys, pathlib, shutil
import prune_surgery.sink as sink, prune_surgery.guard as guard
target, count = int(sys.argv[1]), [0]
def counted(owner, name):
    real = getattr(owner, name)
    def step(*args, **kwargs):
        count[0] += 1
        if count[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(owner, name, step)
for name in ("__init__", "write", "copy_range", "end", "close"):
    counted(sink.ShardWriter, name)
for name in ("write_text", "write_bytes", "mkdir"):
    counted(pathlib.Path, name)
counted(guard, "_exchange"); counted(guard.os, "replace"); counted(guard.shutil, "rmtree")
sys.argv = ["prune-surgery", *sys.argv[2:]]
from prune_surgery.cli import main
try:
    main()
finally:
    print("steps", count[0])
"""


def killed_run(point: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(point), *args], capture_output=True, text=True, timeout=120)


def weights(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(folder).items() if k != "prune_surgery.json"}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".prune-surgery" in p.name and not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def job(checkpoints, tmp_path_factory):
    """A multi-shard source, the old OUT (--overwrite replaces it), and the new OUT's bytes."""
    root = tmp_path_factory.mktemp("killed")
    src = checkpoints["llama"]
    args = ["--hidden-size", "48", "--intermediate-size", "64", "--max-shard-size", "30KB", "--quiet"]
    ps.run(src, root / "new", ps.PruneSpec(sizes={"hidden_size": 48, "intermediate_size": 64}, max_shard_size=30_000))
    ps.run(src, root / "old", ps.PruneSpec(drop_layers=(1,)))
    assert len(list((root / "new").glob("*.safetensors"))) > 5
    return src, args, weights(root / "new"), weights(root / "old"), tree_digest(src)


def test_sigkill_at_any_point_leaves_out_whole_and_the_next_run_cleans_up(job, tmp_path):
    src, args, new, old, source_digest = job
    counting = killed_run(0, "run", str(src), str(tmp_path / "count"), *args)
    assert counting.returncode == 0, counting.stderr
    steps = int(counting.stdout.split()[-1])
    assert steps > KILL_POINTS
    points = sorted({1 + round(i * (steps - 1) / (KILL_POINTS - 1)) for i in range(KILL_POINTS)})
    outcomes, removed = {"absent": 0, "old": 0, "new": 0}, 0
    for number, point in enumerate(points):
        out = tmp_path / f"out{number}"
        overwrite = number % 2 == 1
        if overwrite:
            ps.run(src, out, ps.PruneSpec(drop_layers=(1,)))
        result = killed_run(point, "run", str(src), str(out), *args, *(["--overwrite"] if overwrite else []))
        assert result.returncode == -signal.SIGKILL, (point, result.stderr)
        if not out.exists():
            state = "absent"
            assert not overwrite, f"kill at step {point} of {steps} lost the previous OUT"
        else:
            state = "new" if weights(out) == new else "old"
            assert weights(out) == (new if state == "new" else old), f"kill at step {point}: OUT is mixed"
            assert state == "new" or overwrite
        outcomes[state] += 1
        assert tree_digest(src) == source_digest
        notes: list[str] = []
        ps.run(src, out, ps.PruneSpec(sizes={"hidden_size": 48, "intermediate_size": 64}, max_shard_size=30_000),
               overwrite=True, note=notes.append)
        assert leftovers(tmp_path) == [], (point, leftovers(tmp_path))
        removed += sum("left by run" in line and "no longer exists" in line for line in notes)
        assert weights(out) == new and verify_output(out) == []
    assert len(points) >= 20
    assert outcomes["absent"] and outcomes["old"] and outcomes["new"], outcomes
    assert removed >= len(points) // 2  # most kills left a temporary folder, and the next run named and removed it
    print(f"kill points: {len(points)} of {steps} steps; outcomes {json.dumps(outcomes)}")
