"""Run in a Python that has megatron-core: load one of our TP=1 rank files into mcore's GPTModel.

Usage: python mcore_forward.py RANK_FILE TOKENS_JSON OUT_NPY
The rank file is loaded with weights_only=True and only argparse.Namespace allowed (our files
hold nothing else); the state dict is loaded with strict=True into a GPTModel built from the
file's args with the local (non-TransformerEngine) layer spec, and its logits are saved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings

import numpy as np
import torch


def main() -> None:
    rank_file, tokens_json, out_npy = sys.argv[1:4]
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel_state.initialize_model_parallel(1, 1)
    torch.cuda.current_device = lambda: "cpu"  # mcore's rotary embedding moves inv_freq to "the" GPU
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    get_cuda_rng_tracker().fork = lambda *_a, **_k: contextlib.nullcontext()  # no dropout: no CUDA RNG needed
    with torch.serialization.safe_globals([argparse.Namespace]):
        content = torch.load(rank_file, map_location="cpu", weights_only=True)
    a = content["args"]
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    config = TransformerConfig(
        num_layers=a.num_layers, hidden_size=a.hidden_size, ffn_hidden_size=a.ffn_hidden_size,
        num_attention_heads=a.num_attention_heads, num_query_groups=a.num_query_groups, kv_channels=a.kv_channels,
        normalization="RMSNorm", layernorm_epsilon=a.norm_epsilon, gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, params_dtype=dtype, bf16=bool(a.bf16), bias_activation_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
        apply_rope_fusion=False, bias_dropout_fusion=False,
    )
    model = GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=a.padded_vocab_size, max_sequence_length=a.max_position_embeddings,
        position_embedding_type="rope", rotary_base=int(a.rotary_base),
        share_embeddings_and_output_weights=not a.untie_embeddings_and_output_weights,
    )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    got = {k: tuple(v.shape) for k, v in content["model"].items() if isinstance(v, torch.Tensor)}
    if expected != got:
        raise SystemExit(f"key/shape mismatch: missing {sorted(set(expected) - set(got))}, extra {sorted(set(got) - set(expected))}, "
                         f"shapes {[(k, expected[k], got[k]) for k in expected if k in got and expected[k] != got[k]]}")
    model.load_state_dict(content["model"], strict=True)
    model.eval()
    with open(tokens_json) as handle:
        tokens = torch.tensor(json.load(handle), dtype=torch.long)
    seq = tokens.shape[1]
    positions = torch.arange(seq).unsqueeze(0).expand_as(tokens)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        logits = model(tokens, positions, mask)
    np.save(out_npy, logits.float().numpy())
    print(json.dumps({"keys": len(expected), "strict": True, "logits": list(logits.shape)}))


if __name__ == "__main__":
    main()
