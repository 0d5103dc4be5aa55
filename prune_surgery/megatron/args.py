"""Megatron's `args`: the sizes it checks when loading, as an argparse Namespace of plain values.

Megatron-LM reads `args` with ``getattr`` (``check_checkpoint_args``,
``load_args_from_checkpoint``), so it must be a Namespace, not a dict; every value in it is
an int, float, str, bool, None or a list of those.  Non-plain values of a source checkpoint's
args (enums) are dropped when we rewrite a checkpoint.
"""

from __future__ import annotations

import argparse
from typing import Any

from .layout import Shapes

DTYPE_FLAGS = {"BF16": (True, False), "F16": (False, True), "F32": (False, False)}


def hf_to_args(config: dict[str, Any]) -> dict[str, Any]:
    """Model args implied by a Hugging Face LLaMA config (sizes come from :func:`build_args`)."""
    args: dict[str, Any] = {
        "max_position_embeddings": int(config.get("max_position_embeddings", 4096)),
        "seq_length": int(config.get("max_position_embeddings", 4096)),
        "rotary_base": config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
        "tokenizer_type": "HuggingFaceTokenizer",
    }
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if kind == "llama3":
        args["use_rope_scaling"] = True
        args["rope_scaling_factor"] = float(scaling.get("factor", 8.0))
    return args


def build_args(base: dict[str, Any], shapes: Shapes, *, tp: int, tied: bool, eps: float, dtype: str,
               spec: str, divisible_by: int) -> argparse.Namespace:
    """`base` (plain values) updated with everything that fixes the checkpoint's shapes."""
    bf16, fp16 = DTYPE_FLAGS[dtype]
    values = dict(base)
    values.update({
        "num_layers": shapes.layers, "encoder_num_layers": shapes.layers,
        "hidden_size": shapes.hidden, "ffn_hidden_size": shapes.ffn,
        "num_attention_heads": shapes.heads, "num_query_groups": shapes.groups,
        "group_query_attention": shapes.groups != shapes.heads, "kv_channels": shapes.head_dim,
        "padded_vocab_size": shapes.padded_vocab, "make_vocab_size_divisible_by": divisible_by,
        "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": 1,
        "virtual_pipeline_model_parallel_size": None, "num_layers_per_virtual_pipeline_stage": None,
        "untie_embeddings_and_output_weights": not tied, "norm_epsilon": eps,
        "normalization": "RMSNorm", "swiglu": True, "add_bias_linear": False, "add_qkv_bias": False,
        "position_embedding_type": "rope", "add_position_embedding": False,
        "use_rotary_position_embeddings": True, "rotary_percent": 1.0, "rotary_interleaved": False,
        "apply_layernorm_1p": False, "bf16": bf16, "fp16": fp16,
        "transformer_impl": "transformer_engine" if spec == "te" else "local",
        "ckpt_format": "torch", "use_dist_ckpt": False,
        "consumed_train_samples": base.get("consumed_train_samples", 0),
        "consumed_valid_samples": base.get("consumed_valid_samples", 0),
    })
    values.setdefault("vocab_file", None)
    values.setdefault("max_position_embeddings", 4096)
    values.setdefault("seq_length", values["max_position_embeddings"])
    values.setdefault("rotary_base", 10000)
    values.pop("layernorm_epsilon", None)
    return argparse.Namespace(**values)


def rank_content(args: argparse.Namespace, iteration: int | str, model: dict[str, Any]) -> dict[str, Any]:
    """What one rank file holds: args, version, iteration and the model state dict (no optimizer)."""
    return {
        "args": args, "checkpoint_version": 3.0,
        "iteration": 0 if iteration == "release" else int(iteration), "model": model,
    }
