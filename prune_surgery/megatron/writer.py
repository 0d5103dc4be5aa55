"""Write a Megatron checkpoint in either format, and the arguments that continue training from it.

``torch``: one ``mp_rank_XX/model_optim_rng.pt`` per TP rank.  ``torch_dist``: one folder of
whole-model tensors (see :mod:`.dist`); its TP size only fixes the vocabulary padding and the
``--tensor-model-parallel-size`` written to ``train_args.sh``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .args import rank_content
from .folder import HF_DIR, rank_model, rank_path, write_tracker
from .layout import Shapes
from .safeload import save_rank_file

FORMATS = ("torch", "torch_dist")
TRAIN_ARGS = "train_args.sh"
TRAIN_ARGS_JSON = "train_args.json"


def check_format(fmt: str) -> str:
    """`fmt` if it is a format we write."""
    if fmt not in FORMATS:
        raise SpecError(f"Megatron checkpoint format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def write_megatron(tmp: Path, fmt: str, args: argparse.Namespace, iteration: int | str, shapes: Shapes, spec: str,
                   tied: bool, tensor: Callable[[int, str, int | None], Any]) -> None:
    """Write the checkpoint into `tmp` (the output root): `tensor(rank, role, layer)` makes each
    tensor of rank `rank` of ``args.tensor_model_parallel_size`` (torch_dist asks for rank 0 of TP 1)."""
    check_format(fmt)
    folder = write_tracker(tmp, iteration)
    if fmt == "torch":
        for rank in range(args.tensor_model_parallel_size):
            model = rank_model(shapes, spec, tied, partial(tensor, rank))
            save_rank_file(rank_path(folder, rank), rank_content(args, iteration, model))
            del model
        return
    from .dist import write_dist

    content = rank_content(args, iteration, {})
    del content["model"]
    write_dist(folder, shapes, tied, content, partial(tensor, 0))


def dist_args(args: argparse.Namespace, fmt: str) -> argparse.Namespace:
    """`args` with the checkpoint-format fields of `fmt`."""
    args.ckpt_format, args.use_dist_ckpt = fmt, fmt == "torch_dist"
    return args


def train_flags(args: argparse.Namespace, root: Path, tokenizer: bool) -> list[str]:
    """Megatron-LM ``pretrain_gpt.py`` flags that build this checkpoint's model and load its weights only."""
    a = vars(args)
    tp = int(a["tensor_model_parallel_size"])
    flags = [
        "--num-layers", a["num_layers"], "--hidden-size", a["hidden_size"], "--ffn-hidden-size", a["ffn_hidden_size"],
        "--num-attention-heads", a["num_attention_heads"], "--kv-channels", a["kv_channels"],
    ]
    if a["num_query_groups"] != a["num_attention_heads"]:
        flags += ["--group-query-attention", "--num-query-groups", a["num_query_groups"]]
    flags += [
        "--seq-length", a["seq_length"], "--max-position-embeddings", a["max_position_embeddings"],
        "--position-embedding-type", "rope", "--rotary-base", a["rotary_base"], "--rotary-percent", 1.0,
        "--normalization", "RMSNorm", "--norm-epsilon", a["norm_epsilon"], "--swiglu", "--disable-bias-linear",
        # Megatron pads the vocabulary to a multiple of this times TP: the padded size stays the checkpoint's
        "--make-vocab-size-divisible-by", a["padded_vocab_size"] // tp if a["padded_vocab_size"] % tp == 0 else a["make_vocab_size_divisible_by"],
        "--tensor-model-parallel-size", tp, "--pipeline-model-parallel-size", 1,
    ]
    flags += ["--untie-embeddings-and-output-weights"] if a["untie_embeddings_and_output_weights"] else []
    flags += ["--bf16"] if a.get("bf16") else ["--fp16"] if a.get("fp16") else []
    if a.get("use_rope_scaling"):
        flags += ["--use-rope-scaling", "--rope-scaling-factor", a.get("rope_scaling_factor", 8.0)]
    if tokenizer:
        flags += ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(root / HF_DIR)]
    flags += ["--ckpt-format", a["ckpt_format"], "--load", str(root), "--finetune", "--no-load-optim", "--no-load-rng"]
    return [str(f) for f in flags]


def write_train_args(tmp: Path, out: Path, args: argparse.Namespace, vocab: int) -> None:
    """Write ``train_args.sh`` (flags for ``pretrain_gpt.py $(cat train_args.sh)``) and ``train_args.json``
    into `tmp`, the folder that becomes `out`."""
    tokenizer = any((tmp / HF_DIR / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    flags = train_flags(args, Path(out).resolve(), tokenizer)
    (tmp / TRAIN_ARGS).write_text(" ".join(shlex.quote(f) for f in flags) + "\n")
    record = {"flags": flags, "vocab_size": vocab, "args": {k: v for k, v in vars(args).items()}}
    (tmp / TRAIN_ARGS_JSON).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
