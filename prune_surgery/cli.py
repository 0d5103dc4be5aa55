"""The `prune-surgery` command: a thin typer shell over the Python API."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from . import api
from .errors import PruneSurgeryError
from .plan import Plan
from .render import plan_json, print_inspect, print_plan
from .spec import DEFAULT_DEPTH, DEFAULT_REFIT, REFIT_MODES, PruneSpec, read_spec_file, spec_from_dict

app = typer.Typer(help="Prune LLM checkpoints to any configuration by rewriting them, never loading them.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()

Src = typer.Argument(..., help="Checkpoint folder or Hub repo id (org/name, hf://org/name@rev)")
Revision = typer.Option(None, "--revision", help="Hub branch, tag or commit of SRC")
Stream = typer.Option(False, "--stream", help="Read Hub tensors with range requests; keep no local copy")
SpecFile = typer.Option(None, "--spec", help="YAML/JSON spec (same keys as the options, or the original method's *_remain keys)")
DropLayers = typer.Option(None, "--drop-layers", help="0-based layers to drop, e.g. 4,7,10-12")
NumLayers = typer.Option(None, "--num-hidden-layers", help="Keep N layers (dropped ones spread out from the middle)")
Hidden = typer.Option(None, "--hidden-size", help="Target hidden size")
Heads = typer.Option(None, "--num-attention-heads", help="Target query heads")
KvHeads = typer.Option(None, "--num-key-value-heads", help="Target key/value heads (GQA groups)")
Ffn = typer.Option(None, "--intermediate-size", help="Target FFN size")
Experts = typer.Option(None, "--num-experts", help="Target experts per MoE layer (num_experts_per_tok must stay <= N)")
MoeFfn = typer.Option(None, "--moe-intermediate-size", help="Target FFN size of each expert (Qwen-MoE)")
SharedFfn = typer.Option(None, "--shared-expert-intermediate-size", help="Target FFN size of the shared expert (Qwen-MoE)")
Method = typer.Option(None, "--method", help="random (seeded), magnitude (largest L2 norm) or activation (needs --scores or --calibration)")
ScoresFile = typer.Option(None, "--scores", help="Activation statistics from 'prune-surgery calibrate' (--method activation)")
Calibration = typer.Option(None, "--calibration", help="Data file(s) to calibrate on the fly for --method activation and --refit (repeatable)")
Refit = typer.Option(None, "--refit", help=f"Least-squares refit of the tensors that read pruned units: oneshot or sequential (bare --refit: {DEFAULT_REFIT}, the best measured)")
Depth = typer.Option(None, "--depth", help=f"With --method activation: influence (lowest block influence), block (closest contiguous block) or ppl (greedy by calibration perplexity; needs --calibration); default {DEFAULT_DEPTH}: best measured at 30 -> 24 layers and free; ppl was best at 30 -> 20 but costs layer passes")
CalSamples = typer.Option(None, "--calibration-samples", help="Windows of --calibration data (default 32)")
CalSeqLen = typer.Option(None, "--calibration-seq-len", help="Tokens per calibration window (default 512)")
Seed = typer.Option(None, "--seed", help="Seed of random selection (default 1234)")
Balance = typer.Option(None, "--balance", help="Keep the same count in each of N contiguous partitions (tensor parallel)")
KeepFile = typer.Option(None, "--keep", help="Explicit kept indices (a prune_surgery.json or its 'keep' object)")
KeepVocab = typer.Option(None, "--keep-vocab", help="Kept token ids (from 'prune-surgery vocab count')")
PadVocab = typer.Option(None, "--pad-vocab-to-multiple-of", help="Pad the pruned vocabulary with zero rows")
NoRescale = typer.Option(False, "--no-norm-rescale", help="Plain slicing of RMSNorm weights (the original method)")
ShardSize = typer.Option(None, "--max-shard-size", help="Largest output shard, e.g. 5GB")
Dequantize = typer.Option(False, "--dequantize", help="Write FP8 block-quantized weights dequantized (model dtype)")


def _spec(spec_file: Optional[Path], **options: Any) -> PruneSpec:
    """Spec file values overridden by the command-line options that were given."""
    data = read_spec_file(spec_file) if spec_file else {}
    data.update({k: v for k, v in options.items() if v is not None})
    return spec_from_dict(data)


def _spec_options(spec_file, drop_layers, num_layers, hidden, heads, kv, ffn, experts, moe_ffn, shared_ffn, method, seed,
                  balance, keep, keep_vocab, pad_vocab, no_rescale, shard_size, scores=None, calibration=None,
                  refit=None, cal_samples=None, cal_seq_len=None, depth=None, dequantize=False) -> PruneSpec:  # type: ignore[no-untyped-def]
    return _spec(
        spec_file, scores=scores, calibration=[str(c) for c in calibration] if calibration else None, refit=refit, depth=depth,
        calibration_samples=cal_samples, calibration_seq_len=cal_seq_len, drop_layers=drop_layers, num_hidden_layers=num_layers, hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=ffn, num_experts=experts,
        moe_intermediate_size=moe_ffn, shared_expert_intermediate_size=shared_ffn, method=method,
        seed=seed, balance=balance, keep=keep, keep_vocab=keep_vocab, pad_vocab_to_multiple_of=pad_vocab,
        norm_rescale=False if no_rescale else None, max_shard_size=shard_size, dequantize=True if dequantize else None,
    )


@app.command()
def inspect(src: str = Src, revision: Optional[str] = Revision, stream: bool = Stream,
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Show a checkpoint's architecture, sizes, parameters, dtypes and shards."""
    info = api.inspect(src, revision=revision, stream=stream)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        print_inspect(info, console)


@app.command()
def plan(src: str = Src, spec_file: Optional[Path] = SpecFile, drop_layers: Optional[str] = DropLayers,
         num_layers: Optional[int] = NumLayers, hidden: Optional[int] = Hidden, heads: Optional[int] = Heads,
         kv: Optional[int] = KvHeads, ffn: Optional[int] = Ffn, experts: Optional[int] = Experts,
         moe_ffn: Optional[int] = MoeFfn, shared_ffn: Optional[int] = SharedFfn, method: Optional[str] = Method,
         seed: Optional[int] = Seed, balance: Optional[int] = Balance, keep: Optional[Path] = KeepFile,
         keep_vocab: Optional[Path] = KeepVocab, pad_vocab: Optional[int] = PadVocab,
         no_rescale: bool = NoRescale, shard_size: Optional[str] = ShardSize, dequantize: bool = Dequantize,
         scores: Optional[Path] = ScoresFile, calibration: Optional[List[Path]] = Calibration,
         refit: Optional[str] = Refit, depth: Optional[str] = Depth, cal_samples: Optional[int] = CalSamples,
         cal_seq_len: Optional[int] = CalSeqLen,
         revision: Optional[str] = Revision, stream: bool = Stream,
         out: Optional[Path] = typer.Option(None, "--out", help="Also check that OUT's disk has room for the run"),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Plan the pruning: new config, sizes, shards, memory, warnings. Writes nothing."""
    spec = _spec_options(spec_file, drop_layers, num_layers, hidden, heads, kv, ffn, experts, moe_ffn, shared_ffn,
                         method, seed, balance, keep, keep_vocab, pad_vocab, no_rescale, shard_size, scores, calibration,
                         refit, cal_samples, cal_seq_len, depth, dequantize)
    the_plan = api.plan(src, spec, revision=revision, stream=stream, out=out)
    if as_json:
        typer.echo(json.dumps(plan_json(the_plan), indent=1))
    else:
        print_plan(the_plan, console)


def _progress_factory(quiet: bool) -> tuple[Progress | None, Callable[[Plan], Callable[[int], None] | None]]:
    if quiet or not sys.stderr.isatty():
        return None, lambda plan: None
    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)

    def start(the_plan: Plan) -> Callable[[int], None]:
        task = bar.add_task("writing", total=the_plan.bytes_after)
        bar.start()
        return lambda n: bar.advance(task, n)

    return bar, start


@app.command()
def run(src: str = Src, out: Path = typer.Argument(..., help="Output folder (created atomically)"),
        spec_file: Optional[Path] = SpecFile, drop_layers: Optional[str] = DropLayers,
        num_layers: Optional[int] = NumLayers, hidden: Optional[int] = Hidden, heads: Optional[int] = Heads,
        kv: Optional[int] = KvHeads, ffn: Optional[int] = Ffn, experts: Optional[int] = Experts,
        moe_ffn: Optional[int] = MoeFfn, shared_ffn: Optional[int] = SharedFfn, method: Optional[str] = Method,
        seed: Optional[int] = Seed, balance: Optional[int] = Balance, keep: Optional[Path] = KeepFile,
        keep_vocab: Optional[Path] = KeepVocab, pad_vocab: Optional[int] = PadVocab,
        no_rescale: bool = NoRescale, shard_size: Optional[str] = ShardSize, dequantize: bool = Dequantize,
        scores: Optional[Path] = ScoresFile, calibration: Optional[List[Path]] = Calibration,
        refit: Optional[str] = Refit, depth: Optional[str] = Depth, cal_samples: Optional[int] = CalSamples,
        cal_seq_len: Optional[int] = CalSeqLen,
        revision: Optional[str] = Revision, stream: bool = Stream,
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty"),
        device: Optional[str] = typer.Option(None, "--device", help="Slice with torch on cpu or cuda (default: numpy)"),
        workers: Optional[int] = typer.Option(None, "--workers", help="Slice with N threads (default: one per core, at most 4)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display"),
        push_to: Optional[str] = typer.Option(None, "--push-to", help="After success, upload OUT to this Hub repo (one commit)"),
        private: bool = typer.Option(False, "--private", help="Create the --push-to repo as private"),
        push_revision: Optional[str] = typer.Option(None, "--push-revision", help="Branch of the --push-to repo (default main)"),
        commit_message: Optional[str] = typer.Option(None, "--commit-message", help="Message of the --push-to commit"),
        as_json: bool = typer.Option(False, "--json", help="Print the executed plan as JSON")) -> None:
    """Prune SRC into OUT: new shards, config.json, tokenizer files and prune_surgery.json."""
    spec = _spec_options(spec_file, drop_layers, num_layers, hidden, heads, kv, ffn, experts, moe_ffn, shared_ffn,
                         method, seed, balance, keep, keep_vocab, pad_vocab, no_rescale, shard_size, scores, calibration,
                         refit, cal_samples, cal_seq_len, depth, dequantize)
    bar, factory = _progress_factory(quiet)
    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    command = "prune-surgery " + shlex.join(sys.argv[1:])
    try:
        the_plan = api.run(src, out, spec, revision=revision, stream=stream, overwrite=overwrite, device=device,
                           workers=workers, command=command, progress=factory, note=_note)
    finally:
        if bar is not None:
            bar.stop()
    if not isinstance(the_plan, Plan):  # a Megatron checkpoint: its run record
        if as_json:
            typer.echo(json.dumps(the_plan, indent=1))
        elif not quiet:
            changes = ", ".join(f"{k} {the_plan['sizes']['before'][k]} -> {v}" for k, v in the_plan["sizes"]["after"].items()
                                if v != the_plan["sizes"]["before"][k])
            console.print(f"pruned Megatron checkpoint ({changes or 'nothing pruned'}); wrote {out}")
    elif as_json:
        typer.echo(json.dumps(plan_json(the_plan), indent=1))
    elif not quiet:
        print_plan(the_plan, console)
        console.print(f"wrote {out}")
    if push_to:
        from .hub import push_folder

        url = push_folder(out, push_to, private=private, revision=push_revision, commit_message=commit_message,
                          note=lambda line: Console(stderr=True).print(f"note: {line}", highlight=False))
        console.print(f"pushed {out} to {url}")


def _note(line: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"note: {line}", markup=False)


@app.command()
def verify(out: Path = typer.Argument(..., help="Output folder of a finished run")) -> None:
    """Re-read OUT: every header, the index, config vs shapes, each shard's recorded sha256. Exit 1 if any differs."""
    from .verify import verify_output

    problems = verify_output(out)
    for line in problems:
        typer.echo(f"differs: {line}")
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{out}: every header, the index, config.json and every shard's sha256 check out")


CORE_COMMANDS = ("inspect", "plan", "run", "verify")


def register_subcommands() -> None:
    """Add `push`, `gguf`, `calibrate`, `eval`, `scores`, `vocab ...` and `megatron ...` (imported only when they may be used)."""
    from .calibrate.cli import register as register_calibrate
    from .cli_hub import register
    from .llamacpp.cli import register as register_gguf
    from .megatron.cli import app as megatron_app
    from .recover.cli import register as register_recover
    from .vocab.cli import app as vocab_app

    register(app)
    register_calibrate(app)
    register_gguf(app)
    register_recover(app)
    app.add_typer(vocab_app, name="vocab", help="Vocabulary pruning: count token frequencies, verify tokenization")
    app.add_typer(megatron_app, name="megatron", help="Megatron-LM tensor-parallel checkpoints: export, import, reshard")


def _bare_refit(argv: list[str]) -> list[str]:
    """`--refit` alone means `--refit DEFAULT_REFIT` (typer options always take a value)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--refit" and (i + 1 == len(out) or out[i + 1] not in REFIT_MODES):
            out.insert(i + 1, DEFAULT_REFIT)
            break
    return out


def main() -> None:
    """Entry point: run the app; deliberate errors become one line and exit status 2."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    sys.argv = _bare_refit(sys.argv)
    if command not in CORE_COMMANDS:  # keeps start-up of the hot path short (~60 ms)
        register_subcommands()
    try:
        app()  # usage errors: click prints them and exits with 2
    except PruneSurgeryError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("aborted")
        raise SystemExit(130) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
        raise SystemExit(2) from None
