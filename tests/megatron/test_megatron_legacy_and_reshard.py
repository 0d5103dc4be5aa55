"""The older `language_model.*` layout is read; resharding a -> b then import == import of the original."""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
import torch
from megatron_fixtures import hf_tensors, read_folder
from safetensors.torch import load_file

from prune_surgery.errors import ArchitectureError, CheckpointError
from prune_surgery.megatron import export_hf, import_megatron, read_checkpoint, reshard_megatron


def write_legacy(src, folder, tp):
    """The older Megatron-LM layout (nested language_model dicts), written by hand from HF weights."""
    hf = load_file(src / "model.safetensors")
    d, r, groups, ffn, padded = 8, 2, 4, 96, 128 * tp
    emb = torch.cat([hf["model.embed_tokens.weight"], torch.zeros(padded - 100, 64, dtype=hf["model.embed_tokens.weight"].dtype)])
    args = argparse.Namespace(num_layers=3, hidden_size=64, ffn_hidden_size=ffn, num_attention_heads=8, group_query_attention=True,
                              num_query_groups=groups, kv_channels=d, padded_vocab_size=padded, tensor_model_parallel_size=tp,
                              pipeline_model_parallel_size=1, untie_embeddings_and_output_weights=True, swiglu=True,
                              layernorm_epsilon=1e-6, make_vocab_size_divisible_by=128)
    (folder / "latest_checkpointed_iteration.txt").parent.mkdir(parents=True)
    (folder / "latest_checkpointed_iteration.txt").write_text("1000")
    for rank in range(tp):
        encoder = {}
        g0, g1, f = rank * groups // tp, (rank + 1) * groups // tp, ffn // tp
        for i in range(3):
            q, k, v = (hf[f"model.layers.{i}.self_attn.{n}_proj.weight"] for n in "qkv")
            qkv = torch.cat([torch.cat([q[g * r * d:(g + 1) * r * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]) for g in range(g0, g1)])
            gate, up = hf[f"model.layers.{i}.mlp.gate_proj.weight"], hf[f"model.layers.{i}.mlp.up_proj.weight"]
            encoder.update({
                f"layers.{i}.input_norm.weight": hf[f"model.layers.{i}.input_layernorm.weight"].clone(),
                f"layers.{i}.self_attention.query_key_value.weight": qkv,
                f"layers.{i}.self_attention.dense.weight": hf[f"model.layers.{i}.self_attn.o_proj.weight"][:, g0 * r * d:g1 * r * d].clone(),
                f"layers.{i}.post_attention_norm.weight": hf[f"model.layers.{i}.post_attention_layernorm.weight"].clone(),
                f"layers.{i}.mlp.dense_h_to_4h.weight": torch.cat([gate[rank * f:(rank + 1) * f], up[rank * f:(rank + 1) * f]]),
                f"layers.{i}.mlp.dense_4h_to_h.weight": hf[f"model.layers.{i}.mlp.down_proj.weight"][:, rank * f:(rank + 1) * f].clone(),
            })
        encoder["final_norm.weight"] = hf["model.norm.weight"].clone()
        rows = slice(rank * padded // tp, (rank + 1) * padded // tp)
        out = torch.cat([hf["lm_head.weight"], torch.zeros(padded - 100, 64, dtype=emb.dtype)])
        model = {"language_model": {"embedding": {"word_embeddings": {"weight": emb[rows].clone()}}, "encoder": encoder,
                                    "output_layer": {"weight": out[rows].clone()}}}
        content = {"args": args, "checkpoint_version": 3.0, "iteration": 1000, "model": model,
                   "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state()}]}
        path = folder / "iter_0001000" / f"mp_rank_{rank:02d}" / "model_optim_rng.pt"
        path.parent.mkdir(parents=True)
        torch.save(content, path)


@pytest.mark.parametrize("tp", [1, 2])
def test_reads_the_older_language_model_layout(llama, tmp_path, tp):
    src = llama(False, "bfloat16")
    write_legacy(src, tmp_path / "legacy", tp)
    assert read_checkpoint(tmp_path / "legacy").spec == "legacy"
    import_megatron(tmp_path / "legacy", tmp_path / "hf", vocab_size=100)
    assert hf_tensors(tmp_path / "hf") == hf_tensors(src)
    config = json.loads((tmp_path / "hf/config.json").read_text())
    assert (config["rms_norm_eps"], config["num_key_value_heads"], config["intermediate_size"]) == (1e-6, 4, 96)
    # and it converts to the mcore layout at another TP size
    reshard_megatron(tmp_path / "legacy", tmp_path / "mcore", tp=4, vocab_size=100)
    converted = read_checkpoint(tmp_path / "mcore")
    assert (converted.spec, converted.vocab, converted.shapes.padded_vocab) == ("te", 100, 512)
    import_megatron(tmp_path / "mcore", tmp_path / "hf2")
    assert hf_tensors(tmp_path / "hf2") == hf_tensors(src)


@pytest.mark.parametrize("a,b", [(4, 2), (1, 4), (2, 1), (4, 1)])
def test_reshard_then_import_equals_import(llama, tmp_path, a, b):
    src = llama(a == 1, "bfloat16")
    export_hf(src, tmp_path / "a", tp=a)
    reshard_megatron(tmp_path / "a", tmp_path / "b", tp=b, spec="local" if b == 1 else None)
    ckpt = read_checkpoint(tmp_path / "b")
    assert ckpt.tp == b and ckpt.shapes.padded_vocab == 128 * b
    import_megatron(tmp_path / "a", tmp_path / "hf_a")
    import_megatron(tmp_path / "b", tmp_path / "hf_b")
    assert read_folder(tmp_path / "hf_b") == read_folder(tmp_path / "hf_a") == read_folder(src)


def test_reshard_refuses_a_tp_that_does_not_divide(llama, tmp_path):
    export_hf(llama(False, "float32"), tmp_path / "a", tp=2)
    with pytest.raises(ArchitectureError, match="query groups .* not divisible by TP size 8"):
        reshard_megatron(tmp_path / "a", tmp_path / "b", tp=8)


def test_inconsistent_checkpoints_are_refused(llama, tmp_path):
    export_hf(llama(False, "float32"), tmp_path / "a", tp=2)
    rank1 = tmp_path / "a/iter_0000001/mp_rank_01/model_optim_rng.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        content = torch.load(rank1, weights_only=True)
    content["model"]["decoder.final_layernorm.weight"] = content["model"]["decoder.final_layernorm.weight"] + 1
    torch.save(content, rank1)
    with pytest.raises(CheckpointError, match="differs between TP ranks 0 and 1"):
        import_megatron(tmp_path / "a", tmp_path / "hf")
    del content["model"]["decoder.layers.2.mlp.linear_fc2.weight"]
    torch.save(content, rank1)
    with pytest.raises(CheckpointError, match="TP rank 1 lacks fc2 of layer 2"):
        read_checkpoint(tmp_path / "a")
    rank1.unlink()
    with pytest.raises(CheckpointError, match="is missing; the checkpoint is incomplete"):
        read_checkpoint(tmp_path / "a")


def test_biases_are_an_architecture_error(llama, tmp_path):
    export_hf(llama(False, "float32"), tmp_path / "a", tp=1)
    rank0 = tmp_path / "a/iter_0000001/mp_rank_00/model_optim_rng.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        content = torch.load(rank0, weights_only=True)
    content["model"]["decoder.layers.0.self_attention.linear_qkv.bias"] = torch.zeros(128)
    torch.save(content, rank0)
    with pytest.raises(ArchitectureError, match="linear_qkv.bias.*not supported"):
        read_checkpoint(tmp_path / "a")
