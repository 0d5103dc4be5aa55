"""``convert_to_gguf``: any prune-surgery output to one GGUF file, written atomically."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import CheckpointError, ConversionError, OutputError, SpecError
from .converter import converter_dir

#: --outtype values passed to the converter (q8_0 is its own 8-bit quantization).
OUTTYPES = ("f16", "bf16", "f32", "q8_0")


def _check(out_dir: Path, gguf_path: Path, outtype: str, overwrite: bool) -> None:
    if outtype not in OUTTYPES:
        raise SpecError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    if not (out_dir / "config.json").is_file() or not any(out_dir.glob("*.safetensors")):
        raise CheckpointError(f"{out_dir} is not a checkpoint folder (config.json and *.safetensors); "
                              "pass the output folder of `prune-surgery run`")
    if gguf_path.is_dir():
        raise OutputError(f"{gguf_path} is a folder; name the GGUF file to write, e.g. {gguf_path / 'model.gguf'}")
    if gguf_path.exists() and not overwrite:
        raise OutputError(f"{gguf_path} exists; pass --overwrite to replace it")
    if not gguf_path.parent.is_dir():
        raise OutputError(f"folder {gguf_path.parent} does not exist; create it first")


def convert_to_gguf(out_dir: str | Path, gguf_path: str | Path, *, outtype: str = "f16", overwrite: bool = False,
                    log: int | None = None) -> Path:
    """Convert the checkpoint folder `out_dir` to the GGUF file `gguf_path` with llama.cpp's converter.

    The converter is the pinned one (see :mod:`.converter`), run in a child process; the
    pre-tokenizer recorded at pruning time is pinned.  `log` is a file descriptor for the
    converter's log (default: kept and shown only on an unexpected failure).  Raises
    :class:`ConversionError` when the architecture or the tokenizer cannot be converted; the
    file appears whole or not at all.
    """
    out_dir, gguf_path = Path(out_dir), Path(gguf_path)
    _check(out_dir, gguf_path, outtype, overwrite)
    converter = converter_dir()
    tmp = gguf_path.parent / f".{gguf_path.name}.prune-surgery-{os.getpid()}.tmp"
    with tempfile.TemporaryDirectory(prefix="prune-surgery-gguf-") as work:
        error_file, log_file = Path(work) / "error.txt", Path(work) / "converter.log"
        command = [sys.executable, "-m", "prune_surgery.llamacpp.driver", str(converter), str(out_dir.resolve()),
                   str(tmp.resolve()), outtype, str(error_file)]
        try:
            with open(log_file, "w") as sink:
                done = subprocess.run(command, stdout=sink if log is None else log,
                                      stderr=subprocess.STDOUT if log is None else log)
            if done.returncode != 0 or not tmp.is_file():
                if error_file.is_file():
                    raise ConversionError(error_file.read_text(encoding="utf-8").strip())
                lines = log_file.read_text(errors="replace").strip().splitlines() if log is None else []
                raise ConversionError(f"llama.cpp's converter failed on {out_dir} (exit {done.returncode}): "
                                      f"{lines[-1] if lines else 'see its log above'}")
            os.replace(tmp, gguf_path)
        finally:
            tmp.unlink(missing_ok=True)
    return gguf_path
