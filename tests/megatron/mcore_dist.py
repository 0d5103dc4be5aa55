"""Run in a Python that has megatron-core: its own dist_checkpointing (torch_dist) as the oracle.

Usage:
    python mcore_dist.py save LEGACY_ITER_DIR OUT_DIR [--prefix module.]
        on one gloo process per TP rank, build a GPTModel (local spec) from our rank file of
        that rank (strict load) and save it with megatron-core's dist_checkpointing.save (torch_dist), the way Megatron-LM
        does: model tensors under their sharded keys, args/iteration in common.pt
    python mcore_dist.py load CKPT_DIR TRAIN_ARGS_SH OUT_DIR TP
        on TP gloo processes: build a GPTModel from the flags of TRAIN_ARGS_SH (what
        pretrain_gpt.py would get; the vocabulary size comes from train_args.json beside it), load
        CKPT_DIR with dist_checkpointing.load into its sharded_state_dict, load_state_dict
        strict=True, and save each rank's tensors (out_dir/rank{r}.pt) and, at TP=1, logits
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

TOKENS = [[1, 5, 7, 99, 3, 42, 17, 8, 64, 0, 31, 2]]


def _init(rank: int, world: int, port: int) -> None:
    warnings.filterwarnings("ignore")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(world, 1)
    torch.cuda.current_device = lambda: "cpu"  # mcore's rotary embedding moves inv_freq to "the" GPU
    torch.cuda.synchronize = lambda *_a, **_k: None  # its checkpoint writer waits for device copies
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    get_cuda_rng_tracker().fork = lambda *_a, **_k: contextlib.nullcontext()  # no dropout: no CUDA RNG needed


def parse_flags(text: str, vocab: int) -> dict:
    """Megatron-LM's argument names and values from a train_args.sh line (as its argparse reads
    them: --a-b V -> a_b, a bare flag -> True), plus the padded vocabulary Megatron-LM computes
    from the tokenizer's vocabulary (`vocab`), --make-vocab-size-divisible-by and the TP size."""
    import shlex

    words, args = shlex.split(text), {}
    i = 0
    while i < len(words):
        name = words[i][2:].replace("-", "_")
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            value = words[i + 1]
            for kind in (int, float):
                try:
                    value = kind(value)
                    break
                except ValueError:
                    pass
            args[name], i = value, i + 2
        else:
            args[name], i = True, i + 1
    multiple = args["make_vocab_size_divisible_by"] * args["tensor_model_parallel_size"]
    args["padded_vocab_size"] = -(-vocab // multiple) * multiple
    args.setdefault("num_query_groups", args["num_attention_heads"])
    args.setdefault("untie_embeddings_and_output_weights", False)
    return args


def _model(a: dict):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = torch.bfloat16 if a.get("bf16") else torch.float32
    config = TransformerConfig(
        num_layers=a["num_layers"], hidden_size=a["hidden_size"], ffn_hidden_size=a["ffn_hidden_size"],
        num_attention_heads=a["num_attention_heads"], num_query_groups=a["num_query_groups"], kv_channels=a["kv_channels"],
        normalization="RMSNorm", layernorm_epsilon=a["norm_epsilon"], gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, params_dtype=dtype, bf16=bool(a.get("bf16")), bias_activation_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
        apply_rope_fusion=False, bias_dropout_fusion=False,
        tensor_model_parallel_size=torch.distributed.get_world_size(),
    )
    model = GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=a["padded_vocab_size"], max_sequence_length=a["max_position_embeddings"],
        position_embedding_type="rope", rotary_base=int(a["rotary_base"]),
        share_embeddings_and_output_weights=not a["untie_embeddings_and_output_weights"],
    )
    return model.bfloat16() if a.get("bf16") else model  # as Megatron-LM's Float16Module does (norms too)


def _sync_strategy():
    """megatron-core's torch_dist save strategy, writing in this process (its default forks
    writer processes, which hang on a CPU-only gloo run): the same translation and planner."""
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        TorchDistSaveShardedStrategy,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed import checkpoint as dcp

    class SyncTorchDist(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir):
            sharded_state_dict, _flat, _rename = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict)
            pyt_state_dict = mcore_to_pyt_state_dict(sharded_state_dict, False)
            dcp.save(pyt_state_dict, storage_writer=dcp.FileSystemWriter(str(checkpoint_dir), thread_count=1),
                     planner=MCoreSavePlanner(dedup_replicated_tensors=None, flatten_state_dict=False))

    return SyncTorchDist("torch_dist", 1)


def _save_worker(rank: int, world: int, port: int, iteration_dir: str, out_dir: str, prefix: str) -> None:
    from megatron.core import dist_checkpointing

    _init(rank, world, port)
    rank_file = Path(iteration_dir) / f"mp_rank_{rank:02d}" / "model_optim_rng.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        content = torch.load(rank_file, map_location="cpu", weights_only=True)
    model = _model(vars(content["args"]))
    model.load_state_dict(content["model"], strict=True)
    sharded = model.sharded_state_dict(prefix=prefix)
    state = {"model": sharded, "args": content["args"], "checkpoint_version": 3.0, "iteration": content["iteration"]}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(state, out_dir, sharded_strategy=_sync_strategy())
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def save(iteration_dir: str, out_dir: str, prefix: str) -> None:
    """A torch_dist checkpoint written by megatron-core itself from our rank files (one process per TP rank)."""
    tp = len(list(Path(iteration_dir).glob("mp_rank_*")))
    port = 29500 + os.getpid() % 1000
    if tp == 1:
        _save_worker(0, 1, port, iteration_dir, out_dir, prefix)
    else:
        torch.multiprocessing.spawn(_save_worker, args=(tp, port, iteration_dir, out_dir, prefix), nprocs=tp, join=True)
    print(json.dumps({"saved": tp}))


def _load_worker(rank: int, world: int, port: int, ckpt: str, args_json: str, out_dir: str) -> None:
    from megatron.core import dist_checkpointing

    _init(rank, world, port)
    record = json.loads(Path(args_json).with_suffix(".json").read_text())
    a = parse_flags(Path(args_json).read_text(), record["vocab_size"])
    assert a["tensor_model_parallel_size"] == world, (a["tensor_model_parallel_size"], world)
    model = _model(a)
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, ckpt)
    model.load_state_dict(state["model"], strict=True)
    expected = set(model.state_dict())
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save({"keys": sorted(expected), "tensors": tensors}, Path(out_dir) / f"rank{rank}.pt")
    if world == 1:
        model.eval()
        tokens = torch.tensor(TOKENS, dtype=torch.long)
        seq = tokens.shape[1]
        positions = torch.arange(seq).unsqueeze(0).expand_as(tokens)
        mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]
        with torch.no_grad():
            logits = model(tokens, positions, mask)
        torch.save(logits.float(), Path(out_dir) / "logits.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def load(ckpt: str, args_json: str, out_dir: str, tp: int) -> None:
    """Load CKPT_DIR into a GPTModel on `tp` CPU processes (strict keys), save what each rank holds."""
    port = 29600 + os.getpid() % 1000
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if tp == 1:
        _load_worker(0, 1, port, ckpt, args_json, out_dir)
    else:
        torch.multiprocessing.spawn(_load_worker, args=(tp, port, ckpt, args_json, out_dir), nprocs=tp, join=True)
    print(json.dumps({"loaded": tp}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "save":
        save(sys.argv[2], sys.argv[3], sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--prefix" else "")
    else:
        load(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
