"""``prune-surgery vocab``: count token frequencies on a corpus, verify a pruned tokenizer.

    prune-surgery vocab count SRC --corpus data/*.jsonl --text-field text --top-k 15000 -o keep-vocab.json
    prune-surgery vocab verify SRC OUT --corpus held-out.txt

Errors are raised as prune-surgery error classes (the main CLI prints one line, exit 2);
``verify`` exits 1 when the guarantee is broken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from prune_surgery.vocab.corpus import ProgressCallback, expand_corpus, total_bytes
from prune_surgery.vocab.count import build_keep_vocab
from prune_surgery.vocab.verify import VocabFigures, vocab_figures

app = typer.Typer(
    help="Vocabulary pruning, tokenizer side: count token use on your corpus, verify a pruned tokenizer.",
    no_args_is_help=True,
)

CORPUS_HELP = "Corpus file or glob: plain text (one text per line), JSONL, or gzip of either. Repeatable."
EXTRA_HELP = "More corpus files (so that an unquoted --corpus data/*.jsonl works)."
DEFAULT_OUTPUT = Path("keep-vocab.json")


@contextmanager
def _progress(paths: list[Path], label: str, console: Console) -> Iterator[ProgressCallback]:
    """A rich progress bar over the corpus bytes (silent when stderr is not a terminal)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total_bytes(paths))
        yield lambda n: progress.advance(task, n)


@app.command()
def count(
    src: Annotated[Path, typer.Argument(help="Checkpoint folder holding the tokenizer (and config.json).")],
    corpus: Annotated[list[str], typer.Option("--corpus", "-c", help=CORPUS_HELP)],
    extra: Annotated[list[Path] | None, typer.Argument(help=EXTRA_HELP, show_default=False)] = None,
    text_field: Annotated[str, typer.Option(help="JSONL field holding the text (dotted for nested fields).")] = "text",
    top_k: Annotated[int | None, typer.Option(help="Keep the K most used tokens (specials, closure on top).")] = None,
    min_count: Annotated[int, typer.Option(help="Keep only tokens seen at least N times.")] = 1,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write keep-vocab.json.")] = DEFAULT_OUTPUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Count token frequencies on a corpus and write the kept vocabulary (keep-vocab.json)."""
    paths = expand_corpus([*corpus, *(extra or [])])
    err = Console(stderr=True)
    with _progress(paths, "counting", err) as advance:
        result = build_keep_vocab(src, paths, top_k=top_k, min_count=min_count, text_field=text_field, progress=advance)
    output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    summary = {k: v for k, v in result.items() if k not in ("vocab", "counts", "always_kept")}
    summary["always_kept"] = len(result["always_kept"])
    summary["output"] = str(output)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    out = Console()
    corpus_info = result["corpus"]
    out.print(
        f"counted {corpus_info['tokens']:,} tokens in {corpus_info['lines']:,} lines "
        f"with {result['counted_with']} ({result['tokenizer_kind']})"
    )
    out.print(
        f"kept {result['kept']:,} of {result['vocab_size']:,} ids: {result['chosen_by_count']:,} by count, "
        f"{len(result['always_kept']):,} always kept {result['always_kept_by_reason']}, "
        f"{result['closure_added']:,} added by the BPE merge closure"
    )
    share = result["covered_tokens"] / corpus_info["tokens"] if corpus_info["tokens"] else 1.0
    out.print(f"kept tokens cover {share:.2%} of the corpus tokens; wrote {output}")


def _print_figures(figures: list[VocabFigures], ok: bool) -> None:
    """The verify report: one table row per tokenizer, then the verdict and examples of failures."""
    console = Console()
    table = Table(title="vocabulary pruning check")
    for column in ("tokenizer", "lines", "identical", "covered", "tok/line", "pruned", "result"):
        table.add_column(column, justify="left" if column == "tokenizer" else "right", no_wrap=True)
    for fig in figures:
        d = fig.as_dict()
        table.add_row(
            fig.tokenizer,
            f"{fig.lines:,}",
            f"{d['identical_share']:.1%}",
            f"{d['covered_share']:.1%}",
            f"{d['tokens_per_line_before']:.2f}",
            f"{d['tokens_per_line_after']:.2f}",
            "ok" if fig.ok else "BROKEN",
        )
    console.print(table)
    console.print(
        "identical: lines tokenized exactly as before through the id map; covered: lines whose "
        "original tokens were all kept; tok/line: tokens per line before and after pruning"
    )
    for fig in figures:
        if not fig.ok:
            console.print(
                f"{fig.tokenizer}: {fig.covered_mismatches} covered lines changed, "
                f"{fig.decode_mismatches} lines decode differently, {fig.out_of_range} ids out of range"
            )
            for example in fig.examples:
                console.print(f"  {example}", markup=False)
    console.print("guarantee holds" if ok else "guarantee BROKEN", markup=False)


@app.command()
def verify(
    src: Annotated[Path, typer.Argument(help="The original checkpoint folder.")],
    out: Annotated[Path, typer.Argument(help="The pruned checkpoint folder (with prune_surgery.json).")],
    corpus: Annotated[list[str], typer.Option("--corpus", "-c", help=CORPUS_HELP)],
    extra: Annotated[list[Path] | None, typer.Argument(help=EXTRA_HELP, show_default=False)] = None,
    text_field: Annotated[str, typer.Option(help="JSONL field holding the text.")] = "text",
    keep_vocab: Annotated[Path | None, typer.Option(help="Id map to use instead of OUT/prune_surgery.json.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
) -> None:
    """Check on a held-out corpus that covered lines tokenize identically and every line round-trips."""
    paths = expand_corpus([*corpus, *(extra or [])])
    err = Console(stderr=True)
    with _progress(paths, "verifying", err) as advance:
        figures = vocab_figures(src, out, paths, text_field=text_field, keep_vocab=keep_vocab, progress=advance)
    ok = all(fig.ok for fig in figures)
    if as_json:
        typer.echo(json.dumps({"ok": ok, "tokenizers": [fig.as_dict() for fig in figures]}))
    else:
        _print_figures(figures, ok)
    if not ok:
        raise typer.Exit(1)
