"""``recover --dry-run``: what the run will do and how much memory it needs, before anything starts.

Reads configs and safetensors headers only (no torch).  With ``--engine megatron`` it writes
the Megatron-LM command for continued training of the student instead (``pretrain_gpt.py``
with the student's sizes, the recipe's schedule, ``--finetune`` from the exported checkpoint).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from ..api import inspect
from .pair import open_pair
from .settings import Settings, memory_estimate


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def megatron_command(student: Path, config: dict[str, Any], settings: Settings, data: Sequence[Path], world: int = 8) -> str:
    """A Megatron-LM `pretrain_gpt.py` command that continues training the (exported) student."""
    from ..megatron.args import hf_to_args

    base = hf_to_args(config)
    steps = settings.total_steps(world)
    kv = int(config.get("num_key_value_heads", config["num_attention_heads"]))
    flags = {
        "--num-layers": config["num_hidden_layers"], "--hidden-size": config["hidden_size"],
        "--ffn-hidden-size": config["intermediate_size"], "--num-attention-heads": config["num_attention_heads"],
        "--group-query-attention": None, "--num-query-groups": kv, "--seq-length": settings.seq_len,
        "--max-position-embeddings": base["max_position_embeddings"], "--position-embedding-type": "rope",
        "--rotary-base": base["rotary_base"], "--normalization": "RMSNorm", "--norm-epsilon": config.get("rms_norm_eps", 1e-5),
        "--swiglu": None, "--disable-bias-linear": None, "--micro-batch-size": settings.batch_size,
        "--global-batch-size": settings.global_batch(world), "--train-iters": steps, "--lr": settings.lr,
        "--min-lr": settings.min_lr, "--lr-decay-style": "cosine",
        "--lr-warmup-iters": settings.warmup_steps if settings.warmup_steps is not None else steps // 50,
        "--weight-decay": settings.weight_decay, "--clip-grad": settings.max_grad_norm, "--bf16": None,
        "--tokenizer-type": "HuggingFaceTokenizer", "--tokenizer-model": str(student),
        "--load": f"{student}-megatron", "--save": f"{student}-megatron-recovered", "--finetune": None,
        "--data-path": " ".join(str(p) for p in data), "--split": "100,0,0",
        "--save-interval": settings.save_steps or max(1, steps // 10), "--seed": settings.seed,
    }
    if not config.get("tie_word_embeddings", False):
        flags["--untie-embeddings-and-output-weights"] = None
    parts = [f"torchrun --nproc_per_node {world} pretrain_gpt.py"]
    parts += [k if v is None else f"{k} {shlex.quote(str(v)) if k != '--data-path' else v}" for k, v in flags.items()]
    export = f"prune-surgery megatron export {shlex.quote(str(student))} {shlex.quote(str(student))}-megatron --tp 1"
    note = ("# --data-path takes Megatron's indexed dataset prefixes (tools/preprocess_data.py), "
            "not raw text; Megatron trains on the LM loss (no teacher)")
    return f"{export}\n{note}\n" + " \\\n    ".join(parts)


def dry_run(student: Path, out: Path, data: Sequence[Path], settings: Settings, *, teacher: str | None = None,
            engine: str = "transformers", world: int = 1) -> dict[str, Any]:
    """The plan of a recovery run: pair, steps, tokens and peak memory per device (or the Megatron command)."""
    pair = open_pair(student, teacher, settings.objective)
    s_params = inspect(student)["params"]
    t_params = inspect(pair.teacher)["params"] if pair.teacher else 0
    teacher_dtype = settings.teacher_dtype or "bfloat16"
    result: dict[str, Any] = {
        "student": str(student), "out": str(out), "teacher": pair.teacher_record, "objective": settings.objective,
        "steps": settings.total_steps(world), "global_batch": settings.global_batch(world),
        "tokens": settings.total_steps(world) * settings.global_batch(world) * settings.seq_len,
        "params": {"student": s_params, "teacher": t_params},
        "vocab": {"pruned": pair.kept is not None, "real_rows": pair.n_real},
        "memory": memory_estimate(pair.student_config, s_params, pair.teacher_config, t_params, settings, teacher_dtype),
        "teacher_dtype": teacher_dtype, "data": [str(p) for p in data],
    }
    if engine == "megatron":
        result["megatron_command"] = megatron_command(student, pair.student_config, settings, data)
    return result


def render(result: dict[str, Any], console: Console) -> None:
    """Print a dry-run plan for people."""
    if "megatron_command" in result:
        console.print(result["megatron_command"], highlight=False, soft_wrap=True)
        return
    t = result["teacher"]
    name = (t or {}).get("path") or (t or {}).get("repo_id") or "none"
    console.print(f"recover {result['student']} -> {result['out']}: {result['objective']} from {name}")
    console.print(f"  {result['steps']:,} steps x {result['global_batch']} windows = {result['tokens']:,} tokens")
    console.print(f"  params: student {result['params']['student']:,}, teacher {result['params']['teacher']:,}"
                  + (f"; vocabulary pruned to {result['vocab']['real_rows']:,} ids" if result["vocab"]["pruned"] else ""))
    console.print(f"  peak memory per device (teacher in {result['teacher_dtype']}, no activation checkpointing):")
    for part, n in result["memory"].items():
        console.print(f"    {part:28s} {_gib(n)}", highlight=False)
