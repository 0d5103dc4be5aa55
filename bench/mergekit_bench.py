"""mergekit ``passthrough``: the one streaming peer, for a depth-only (drop layers) job.

mergekit lives in its own virtual environment, ``bench/work/venv-mergekit``, never in the
project's. :func:`ensure_venv` creates it: torch 2.13.0 first (the CPU wheel already on disk
when there is one, so pip does not pull a multi-GB CUDA build), then ``mergekit``.

:func:`write_config` writes the passthrough YAML: one slice per run of consecutive kept
layers. :func:`command` is the ``mergekit-yaml`` command line, with the streaming-friendly
options (``--lazy-unpickle``, no async write, one thread for writing, no tokenizer copy,
no model card).

Usage::

    python bench/mergekit_bench.py install                 # create/refresh the venv
    python bench/mergekit_bench.py yaml SRC 0-9,12-23 OUT.yaml
"""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / "work" / "venv-mergekit"
TORCH_VERSION = "2.13.0"
WHEEL_DIRS = ["/opt/wheels"]


def mergekit_exe(venv: Path = VENV) -> Path:
    """Path of ``mergekit-yaml`` in the venv."""
    return venv / "bin" / "mergekit-yaml"


def torch_requirement() -> str:
    """A local CPU torch wheel of TORCH_VERSION if one is on disk, else ``torch==TORCH_VERSION``."""
    for d in WHEEL_DIRS:
        hits = sorted(glob.glob(f"{d}/torch-{TORCH_VERSION}+cpu-*.whl"))
        if hits:
            return hits[0]
    return f"torch=={TORCH_VERSION}"


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """Create the mergekit venv unless ``mergekit-yaml`` is already there; return the executable."""
    exe = mergekit_exe(venv)
    if exe.exists():
        return exe
    log(f"mergekit: creating {venv} (torch {TORCH_VERSION} CPU + mergekit; takes a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [torch_requirement()], check=True)
    subprocess.run(pip + ["mergekit"], check=True)
    return exe


def ranges(layers: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive layer ids as half-open ``(start, end)`` ranges."""
    out: list[tuple[int, int]] = []
    for i in sorted(layers):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def write_config(src: Path, kept_layers: list[int], path: Path) -> Path:
    """Write the passthrough YAML keeping ``kept_layers`` of ``src``; return ``path``."""
    lines = ["slices:"]
    for a, b in ranges(kept_layers):
        lines += ["  - sources:", f"      - model: {src.resolve()}", f"        layer_range: [{a}, {b}]"]
    lines += ["merge_method: passthrough", "dtype: bfloat16", ""]
    path.write_text("\n".join(lines))
    return path


def command(config: Path, out: Path, venv: Path = VENV) -> list[str]:
    """The ``mergekit-yaml`` command line for ``config`` writing to ``out``."""
    return [str(mergekit_exe(venv)), str(config), str(out), "--lazy-unpickle", "--quiet",
            "--no-copy-tokenizer", "--no-write-model-card", "--no-async-write"]


def parse_layers(text: str) -> list[int]:
    """``0-9,12-23`` -> [0, ..., 9, 12, ..., 23]."""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["install"]:
        print(ensure_venv())
        return 0
    if args[:1] == ["yaml"] and len(args) == 4:
        print(write_config(Path(args[1]), parse_layers(args[2]), Path(args[3])).read_text())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
