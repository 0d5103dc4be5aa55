"""HF -> Megatron (TP 1, 2, 4) -> HF is byte-identical; the rank files have Megatron's layout."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from megatron_fixtures import read_folder
from safetensors.torch import load_file

from prune_surgery.errors import ArchitectureError, OutputError
from prune_surgery.megatron import export_hf, import_megatron, is_megatron_checkpoint


def load_plain(path):
    """Load a rank file allowing nothing but argparse.Namespace: our files hold only plain values."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_export_import_is_byte_identical(llama, tmp_path, tied, dtype, tp):
    src = llama(tied, dtype)
    export_hf(src, tmp_path / "meg", tp=tp, spec="local" if tp == 2 else "te")
    assert is_megatron_checkpoint(tmp_path / "meg") and not is_megatron_checkpoint(src)
    import_megatron(tmp_path / "meg", tmp_path / "hf")
    assert read_folder(tmp_path / "hf") == read_folder(src)  # every file, model.safetensors included


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_rank_files_hold_megatron_layout(llama, tmp_path, tp):
    src = llama(False, "bfloat16")
    export_hf(src, tmp_path / "meg", tp=tp)
    assert (tmp_path / "meg/latest_checkpointed_iteration.txt").read_text().strip() == "1"
    hf = load_file(src / "model.safetensors")
    d, groups, r, ffn = 8, 4, 2, 96
    for rank in range(tp):
        path = tmp_path / f"meg/iter_0000001/mp_rank_{rank:02d}/model_optim_rng.pt"
        content = load_plain(path)
        args, model = content["args"], content["model"]
        assert content["iteration"] == 1 and content["checkpoint_version"] == 3.0
        assert (args.num_layers, args.hidden_size, args.ffn_hidden_size, args.num_attention_heads) == (3, 64, 96, 8)
        assert (args.num_query_groups, args.kv_channels, args.tensor_model_parallel_size) == (4, 8, tp)
        assert args.padded_vocab_size == 128 * tp and args.untie_embeddings_and_output_weights and args.bf16
        # embedding rows of this rank, padding rows repeat the last real token
        emb = model["embedding.word_embeddings.weight"]
        rows = 128 * tp // tp
        full = torch.cat([hf["model.embed_tokens.weight"], hf["model.embed_tokens.weight"][-1:].expand(128 * tp - 100, -1)])
        assert torch.equal(emb, full[rank * rows:(rank + 1) * rows])
        # QKV: whole query groups per rank, each [q heads of the group; k; v]
        qkv = model["decoder.layers.1.self_attention.linear_qkv.weight"]
        q, k, v = (hf[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
        expect = []
        for g in range(rank * groups // tp, (rank + 1) * groups // tp):
            expect += [q[g * r * d:(g + 1) * r * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
        assert torch.equal(qkv, torch.cat(expect))
        # SwiGLU fc1: this rank's gate shard then its up shard
        fc1 = model["decoder.layers.2.mlp.linear_fc1.weight"]
        f = ffn // tp
        gate, up = hf["model.layers.2.mlp.gate_proj.weight"], hf["model.layers.2.mlp.up_proj.weight"]
        assert torch.equal(fc1, torch.cat([gate[rank * f:(rank + 1) * f], up[rank * f:(rank + 1) * f]]))
        proj = model["decoder.layers.0.self_attention.linear_proj.weight"]
        assert torch.equal(proj, hf["model.layers.0.self_attn.o_proj.weight"][:, rank * 64 // tp:(rank + 1) * 64 // tp])
        assert torch.equal(model["decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"], hf["model.layers.0.input_layernorm.weight"])
        assert torch.equal(model["decoder.layers.0.mlp.linear_fc1.layer_norm_weight"], hf["model.layers.0.post_attention_layernorm.weight"])
        # every slice was cloned: the file is about the size of its own tensors, not tp times it
        nbytes = sum(t.numel() * t.element_size() for t in model.values() if isinstance(t, torch.Tensor))
        assert path.stat().st_size < nbytes + 64_000


def test_export_refuses_tp_that_does_not_divide(llama, tmp_path):
    with pytest.raises(ArchitectureError, match="not divisible by TP size 8"):
        export_hf(llama(False, "float32"), tmp_path / "meg", tp=8)  # 4 kv groups
    assert not (tmp_path / "meg").exists()


def test_output_must_be_empty(llama, tmp_path):
    (tmp_path / "meg").mkdir()
    (tmp_path / "meg" / "x").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        export_hf(llama(False, "float32"), tmp_path / "meg", tp=1)


def test_import_without_side_files_builds_a_llama_config(llama, tmp_path):
    src = llama(True, "float32")
    export_hf(src, tmp_path / "meg", tp=2)
    (tmp_path / "meg/prune_surgery_hf.json").unlink()
    for file in (tmp_path / "meg/hf_files").iterdir():
        file.unlink()
    import_megatron(tmp_path / "meg", tmp_path / "hf", vocab_size=100)
    config = json.loads((tmp_path / "hf/config.json").read_text())
    assert (config["vocab_size"], config["num_key_value_heads"], config["head_dim"], config["tie_word_embeddings"]) == (100, 4, 8, True)
    assert load_file(tmp_path / "hf/model.safetensors").keys() == load_file(src / "model.safetensors").keys()
    got, want = load_file(tmp_path / "hf/model.safetensors"), load_file(src / "model.safetensors")
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_sharded_sources_and_outputs(llama, tmp_path):
    src = llama(False, "float32")
    export_hf(src, tmp_path / "meg", tp=2)
    import_megatron(tmp_path / "meg", tmp_path / "sharded", max_shard_size=30_000)
    index = json.loads((tmp_path / "sharded/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    export_hf(tmp_path / "sharded", tmp_path / "meg2", tp=4)  # a sharded HF source exports too
    import_megatron(tmp_path / "meg2", tmp_path / "hf")
    assert read_folder(tmp_path / "hf") == read_folder(src)


@pytest.mark.parametrize("change,message", [
    ({"model_type": "gpt2"}, "model_type llama or mistral"),
    ({"attention_bias": True}, "without biases"),
    ({"hidden_act": "gelu"}, "SwiGLU"),
    ({"model_type": "mistral", "sliding_window": 16}, "sliding-window"),
])
def test_export_refuses_other_architectures(llama, tmp_path, change, message):
    src = tmp_path / "src"
    src.mkdir()
    for file in llama(False, "float32").iterdir():
        (src / file.name).write_bytes(file.read_bytes())
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ArchitectureError, match=message):
        export_hf(src, tmp_path / "meg", tp=1)
