"""``prune-surgery calibrate | eval | scores``: activation statistics, perplexity, pictures.

    prune-surgery calibrate SRC --data FILE... -o SCORES.safetensors [--plot DIR]
    prune-surgery eval SRC --data FILE [--seq-len T] [--max-tokens N] [--json]
    prune-surgery scores SCORES --plot DIR [--keep OUT/prune_surgery.json]
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from .session import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, Progress as ProgressFn

Data = typer.Option(..., "--data", help="Text: plain, JSONL (see --text-field) or gzip of either. Repeatable.")
TextField = typer.Option("text", "--text-field", help="JSONL field holding the text")
Device = typer.Option("cpu", "--device", help="cpu or cuda")
Dtype = typer.Option(None, "--dtype", help="Compute dtype: float32 (default on cpu) or bfloat16 (default on cuda)")
Micro = typer.Option(None, "--micro-batch", help="Windows per forward (default: about 4096 tokens)")
Revision = typer.Option(None, "--revision", help="Hub branch, tag or commit of SRC")


@contextmanager
def _bar(quiet: bool) -> Iterator[ProgressFn | None]:
    """A rich progress bar (stage, windows through layers, tokens/s, ETA); silent off a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    tasks: dict[str, int] = {}
    import time

    start = time.monotonic()

    def update(stage: str, done: int, total: int, tokens: int) -> None:
        kind = stage.split()[0]
        if kind not in tasks:
            tasks[kind] = bar.add_task(stage, total=total, rate="")
        rate = tokens / max(time.monotonic() - start, 1e-9)
        bar.update(tasks[kind], completed=done, description=stage, rate=f"{rate:,.0f} tok/s")

    with bar:
        yield update


def calibrate(src: str = typer.Argument(..., help="Checkpoint folder or Hub repo id"),
              data: List[Path] = Data,
              out: Path = typer.Option(..., "-o", "--output", help="Scores file to write (safetensors)"),
              text_field: str = TextField,
              samples: int = typer.Option(DEFAULT_SAMPLES, "--samples", help="Windows to calibrate on"),
              seq_len: int = typer.Option(DEFAULT_SEQ_LEN, "--seq-len", help="Tokens per window"),
              device: str = Device, dtype: Optional[str] = Dtype, micro: Optional[int] = Micro,
              resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last finished layer"),
              plot: Optional[Path] = typer.Option(None, "--plot", help="Also write PNG pictures of the scores here"),
              revision: Optional[str] = Revision,
              quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display")) -> None:
    """Activation statistics of every prunable space, one decoder layer in memory at a time.

    Defaults suit a CPU: 32 windows of 512 tokens (16k tokens).  Minitron-style ranking needs
    little data; more windows change the ranking less and less.
    """
    from .calibration import calibrate as run

    with _bar(quiet) as progress:
        scores = run(src, data, out, text_field=text_field, samples=samples, seq_len=seq_len, device=device,
                     dtype=dtype, micro=micro, resume=resume, revision=revision, progress=progress)
    p = scores.provenance
    if not quiet:
        Console().print(f"calibrated {p['layers']} layers on {p['windows']} windows x {p['seq_len']} tokens "
                        f"in {p['seconds']:.1f} s; wrote {out}")
    if plot:
        from .plot import plot_scores

        for path in plot_scores(scores, plot):
            Console().print(f"wrote {path}") if not quiet else None


def evaluate(src: str = typer.Argument(..., help="Checkpoint folder or Hub repo id"),
             data: List[Path] = Data, text_field: str = TextField,
             seq_len: int = typer.Option(DEFAULT_SEQ_LEN, "--seq-len", help="Tokens per window"),
             max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Use the first N tokens of the text"),
             device: str = Device, dtype: Optional[str] = Dtype, micro: Optional[int] = Micro,
             revision: Optional[str] = Revision,
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display")) -> None:
    """Held-out perplexity, streamed one decoder layer at a time (logits in chunks)."""
    from .perplexity import evaluate as run

    with _bar(quiet or as_json) as progress:
        result = run(src, data, seq_len=seq_len, max_tokens=max_tokens, text_field=text_field, device=device,
                     dtype=dtype, micro=micro, revision=revision, progress=progress)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
    else:
        Console().print(f"perplexity {result['perplexity']:.3f} over {result['tokens']} predicted tokens "
                        f"({result['windows']} windows of {seq_len})")


def scores(path: Path = typer.Argument(..., help="Scores file from 'prune-surgery calibrate'"),
           plot: Path = typer.Option(..., "--plot", help="Folder for the PNG pictures"),
           keep: Optional[Path] = typer.Option(None, "--keep", help="A prune_surgery.json: mark kept and dropped units")) -> None:
    """Pictures of a scores file: unit importance per layer for each space, block influence per layer."""
    from ..keepfile import load_keep
    from .plot import plot_scores
    from .scorefile import load_scores

    kept = load_keep(keep) if keep else None
    for written in plot_scores(load_scores(path), plot, kept):
        Console().print(f"wrote {written}")


def register(app: typer.Typer) -> None:
    """Add the calibration verbs to the main app."""
    app.command("calibrate")(calibrate)
    app.command("eval")(evaluate)
    app.command("scores")(scores)
