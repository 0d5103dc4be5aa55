"""Check that the torch backend writes the same bytes as the numpy backend (not part of CI).

Generates a LLaMA-shaped GQA checkpoint, prunes it with the same job three ways — the default
numpy backend, ``--device cpu`` (torch) and ``--device cuda`` (torch on the GPU) — and compares
the sha256 of every output shard, of ``model.safetensors.index.json`` and of ``config.json``.
Exits 1 on any difference. Without CUDA (or without torch) the cuda leg prints a skip
message; the torch-cpu leg still runs when torch is installed (``--no-cpu`` leaves it out).

Usage (project .venv, with torch)::

    python bench/gpu_check.py               # ~0.2 GiB checkpoint, a few seconds
    python bench/gpu_check.py --full        # the benchmark's 3.9 GiB checkpoint
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import make_checkpoint as mc  # noqa: E402
from compare import file_sha256  # noqa: E402

SMALL = mc.Shape(layers=6, hidden=1024, ffn=2816, heads=16, kv_heads=4, vocab=8000, shard_size=60_000_000)
FULL = mc.Shape(layers=24, hidden=2560, ffn=6912, heads=20, kv_heads=20, vocab=32000)
JOBS = {
    "small": ["--hidden-size", "768", "--num-attention-heads", "8", "--num-key-value-heads", "2",
              "--intermediate-size", "2048", "--drop-layers", "1,4", "--max-shard-size", "40MB"],
    "full": ["--hidden-size", "1920", "--num-attention-heads", "15", "--num-key-value-heads", "15",
             "--intermediate-size", "5184", "--drop-layers", "20,21"],
}
COMPARED = ("*.safetensors", "model.safetensors.index.json", "config.json")


def prune_surgery_cmd() -> list[str]:
    """The console script next to this python, else ``python -m prune_surgery``."""
    script = Path(sys.executable).with_name("prune-surgery")
    return [str(script)] if script.exists() else [sys.executable, "-m", "prune_surgery"]


def cuda_status() -> tuple[bool, str]:
    """(CUDA usable?, why not / which device)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    return True, torch.cuda.get_device_name(0)


def torch_available() -> bool:
    """Whether torch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every compared file of an output folder."""
    return {path.name: file_sha256(path) for pattern in COMPARED for path in sorted(folder.glob(pattern))}


def prune(src: Path, out: Path, job: list[str], device: str | None) -> tuple[float, dict[str, str]]:
    """Run prune-surgery (numpy when ``device`` is None); return (seconds, digests)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*prune_surgery_cmd(), "run", str(src), str(out), *job, "--seed", "7", "--quiet"]
    if device:
        cmd += ["--device", device]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0, digests(out)


def diff(ref: dict[str, str], other: dict[str, str]) -> list[str]:
    """Names of files that differ or exist on one side only."""
    return sorted(n for n in set(ref) | set(other) if ref.get(n) != other.get(n))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit status 1 if any backend wrote different bytes."""
    p = argparse.ArgumentParser(description="torch --device cuda|cpu vs numpy: same output bytes?")
    p.add_argument("--full", action="store_true", help="the benchmark's 3.9 GiB checkpoint and job")
    p.add_argument("--no-cpu", action="store_true", help="skip the torch --device cpu leg")
    p.add_argument("--work", type=Path, default=BENCH / "work" / "gpu-check")
    p.add_argument("--keep-files", action="store_true", help="keep the outputs (the checkpoint is cached)")
    a = p.parse_args(argv)
    shape, job = (FULL, JOBS["full"]) if a.full else (SMALL, JOBS["small"])
    src, _ = mc.ensure_checkpoint(a.work / f"ckpt-{shape.layers}L-{shape.hidden}h", shape)
    has_cuda, why = cuda_status()
    legs: list[str] = []
    if not a.no_cpu and torch_available():
        legs.append("cpu")
    if has_cuda:
        legs.append("cuda")
    else:
        print(f"skip: --device cuda not checked ({why})")
    if not legs:
        print("skip: torch is not installed; nothing to compare against numpy")
        return 0
    secs, ref = prune(src, a.work / "out-numpy", job, None)
    print(f"numpy       {secs:6.2f} s  {len(ref)} files")
    failed = False
    for device in legs:
        secs, got = prune(src, a.work / f"out-{device}", job, device)
        bad = diff(ref, got)
        failed |= bool(bad)
        verdict = "same bytes" if not bad else f"DIFFERENT: {', '.join(bad)}"
        print(f"torch:{device:5s} {secs:6.2f} s  {len(got)} files  {verdict}")
    if not a.keep_files:
        for name in ["numpy", *legs]:
            shutil.rmtree(a.work / f"out-{name}", ignore_errors=True)
    print("FAIL: backends disagree" if failed else "OK: every backend wrote the same bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
