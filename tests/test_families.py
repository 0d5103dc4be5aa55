"""The oracles for the non-LLaMA tables: phi3, mixtral, qwen2_moe, qwen3_moe, gemma 1/2/3, gpt_neox.

Same oracles as the LLaMA family: transformers loads the output with no missing or
unexpected keys; logits equal the masked original (models_families.masked_reference);
keep-everything is byte-identical.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

import prune_surgery as ps
from models import keep_of, load, logits, sample_ids
from models_families import build, family_of, masked_reference
from prune_surgery.errors import ArchitectureError, SpecError

VARIANTS = {
    "phi3": {}, "mixtral": {}, "qwen2_moe": {}, "qwen3_moe": {}, "gemma": {}, "gemma2": {}, "gemma3": {},
    "gpt_neox": {}, "gemma_untied": {"tie_word_embeddings": False}, "phi3_tied": {"tie_word_embeddings": True},
}
WIDTH = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}
SPECS = {
    "phi3": WIDTH, "phi3_tied": WIDTH, "gemma": WIDTH, "gemma_untied": WIDTH, "gemma2": WIDTH, "gemma3": WIDTH,
    "mixtral": {**WIDTH, "num_local_experts": 3},
    "qwen2_moe": {**WIDTH, "num_experts": 3, "moe_intermediate_size": 24, "shared_expert_intermediate_size": 32},
    "qwen3_moe": {**WIDTH, "num_experts": 3, "moe_intermediate_size": 24},
}


def _tensors(folder):
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "np") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    return out


def _config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="session")
def family_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(root / name, family_of(name), **over) for name, over in VARIANTS.items()}


def _check(src, out, family, atol=2e-5):
    pruned = load(out)
    ids = sample_ids()
    expected = logits(masked_reference(src, family, keep_of(out)), ids)
    got = logits(pruned, ids)
    assert torch.allclose(got, expected, atol=atol, rtol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(got, logits(load(src), ids), atol=1e-4)  # the pruning changed something
    return pruned


@pytest.mark.parametrize("family", sorted(VARIANTS))
def test_keep_everything_is_byte_identical(family_ckpts, tmp_path, family):
    src = family_ckpts[family]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec())
    assert plan.arch.family == family_of(family)
    a, b = _tensors(src), _tensors(tmp_path / "out")
    assert set(a) == set(b)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes() and a[key].shape == b[key].shape, key
    assert all(t.identity for t in plan.tensors)


@pytest.mark.parametrize("family", sorted(SPECS))
def test_width_and_depth_pruning_matches_masked_original(family_ckpts, tmp_path, family):
    src = family_ckpts[family]
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=SPECS[family], drop_layers=(2,)))
    keep = keep_of(tmp_path / "out")
    assert keep["layers"] == [0, 1, 3] and len(keep["hidden"]) == 48
    pruned = _check(src, tmp_path / "out", family)
    assert pruned.config.num_attention_heads == 4 and pruned.config.num_key_value_heads == 2


def test_phi3_fused_segments(family_ckpts, tmp_path):
    src = family_ckpts["phi3"]
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 40}))
    keep, a, b = keep_of(tmp_path / "out"), _tensors(src), _tensors(tmp_path / "out")
    heads, kv, ffn = keep["heads"]["1"], keep["kv_heads"]["1"], keep["ffn"]["1"]
    rows = lambda units, base: [base + u * 8 + r for u in units for r in range(8)]  # noqa: E731
    qkv = a["model.layers.1.self_attn.qkv_proj.weight"]
    expected = qkv[rows(heads, 0) + rows(kv, 64) + rows(kv, 96)]
    np.testing.assert_array_equal(b["model.layers.1.self_attn.qkv_proj.weight"], expected)
    gate_up = a["model.layers.1.mlp.gate_up_proj.weight"]
    np.testing.assert_array_equal(b["model.layers.1.mlp.gate_up_proj.weight"], gate_up[ffn + [96 + i for i in ffn]])
    _check(src, tmp_path / "out", "phi3")


@pytest.mark.parametrize("family,key", [("mixtral", "num_local_experts"), ("qwen2_moe", "num_experts"), ("qwen3_moe", "num_experts")])
def test_experts_are_dropped_and_renumbered(family_ckpts, tmp_path, family, key):
    src = family_ckpts[family]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={key: 2}, seed=7))
    keep = keep_of(tmp_path / "out")
    sparse = [layer for layer in keep["experts"] if any(".experts." in t.source.name and f".layers.{layer}." in t.source.name for t in plan.tensors)]
    assert sparse
    a, b = _tensors(src), _tensors(tmp_path / "out")
    for layer in sparse:
        kept = keep["experts"][layer]
        assert len(kept) == 2
        gate = next(k for k in a if k.startswith(f"model.layers.{layer}.") and k.endswith("gate.weight") and "shared" not in k)
        np.testing.assert_array_equal(b[gate], a[gate][kept])
        for new, old in enumerate(kept):  # experts renumbered 0..N-1 in kept order
            names = [k for k in a if f".layers.{layer}." in k and f".experts.{old}." in k]
            for name in names:
                np.testing.assert_array_equal(b[name.replace(f".experts.{old}.", f".experts.{new}.")], a[name])
        assert not any(f".layers.{layer}." in k and ".experts.2." in k for k in b)
    cfg = _config(tmp_path / "out")
    assert cfg.get(key, cfg.get("num_local_experts")) == 2
    _check(src, tmp_path / "out", family)


def test_num_experts_below_top_k_is_refused(family_ckpts, tmp_path):
    with pytest.raises(SpecError, match="num_experts_per_tok=2 must be at most num_local_experts=1"):
        ps.plan(family_ckpts["mixtral"], ps.PruneSpec(sizes={"num_local_experts": 1}))
    with pytest.raises(SpecError, match="num_experts_per_tok"):
        ps.plan(family_ckpts["qwen2_moe"], ps.PruneSpec(sizes={"num_experts": 1}))


def test_per_expert_ffn_is_chosen_per_expert(family_ckpts, tmp_path):
    src = family_ckpts["mixtral"]
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"num_local_experts": 3, "intermediate_size": 40}, method="magnitude"))
    keep = keep_of(tmp_path / "out")
    assert set(keep["ffn"]) == {f"{layer}.{e}" for layer in range(4) for e in keep["experts"][str(layer)]}
    assert len({tuple(v) for v in keep["ffn"].values()}) > 1
    _check(src, tmp_path / "out", "mixtral")


def test_qwen_moe_sparse_layer_pattern_survives_layer_drop(family_ckpts, tmp_path):
    src = family_ckpts["qwen2_moe"]  # decoder_sparse_step 2, mlp_only_layers [3]: sparse layers are 1 only
    ps.run(src, tmp_path / "out", ps.PruneSpec(drop_layers=(0,)))
    cfg = _config(tmp_path / "out")
    assert cfg["decoder_sparse_step"] == 1 and cfg["mlp_only_layers"] == [1, 2]  # kept 1 (sparse), 2, 3 (dense)
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in _tensors(tmp_path / "out")
    _check(src, tmp_path / "out", "qwen2_moe")
    src = family_ckpts["qwen3_moe"]  # step 1, mlp_only_layers [1]
    ps.run(src, tmp_path / "out3", ps.PruneSpec(drop_layers=(0, 2)))
    assert _config(tmp_path / "out3")["mlp_only_layers"] == [0]
    _check(src, tmp_path / "out3", "qwen3_moe")


@pytest.mark.parametrize("family", ["gemma", "gemma_untied", "gemma2", "gemma3"])
def test_gemma_hidden_pruning_is_exact(family_ckpts, tmp_path, family):
    """Residual stream times c = sqrt(d'/d), every eps kept: (1+w) norms reading it times 1/c, the
    embedding unchanged (c times the sqrt(d'/d) of its run-time sqrt(hidden_size)), so the final
    norm times 1/c tied or not; post-norms unchanged, o_proj and down_proj times c."""
    src = family_ckpts[family]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 16}))
    s = math.sqrt(64 / 16)
    a, b, keep = _tensors(src), _tensors(tmp_path / "out"), keep_of(tmp_path / "out")["hidden"]
    norm = "model.layers.0.input_layernorm.weight"
    np.testing.assert_allclose(b[norm], (a[norm][keep] + 1) * np.float32(s) - 1, rtol=1e-6)
    np.testing.assert_array_equal(b["model.embed_tokens.weight"], a["model.embed_tokens.weight"][:, keep])
    tied = family != "gemma_untied"
    final = b["model.norm.weight"]
    np.testing.assert_allclose(final, (a["model.norm.weight"][keep] + 1) * np.float32(s) - 1, rtol=1e-6)
    down = "model.layers.0.mlp.down_proj.weight"
    np.testing.assert_allclose(b[down], a[down][keep] / np.float32(s), rtol=1e-6)
    if family in ("gemma2", "gemma3"):
        post = "model.layers.0.post_feedforward_layernorm.weight"
        np.testing.assert_array_equal(b[post], a[post][keep])
    assert ("lm_head.weight" in b) is not tied
    assert plan.new_config["rms_norm_eps"] == plan.config["rms_norm_eps"]
    _check(src, tmp_path / "out", family, atol=5e-5)


def test_gemma_layer_types_and_softcapping_survive(family_ckpts, tmp_path):
    src = family_ckpts["gemma2"]
    ps.run(src, tmp_path / "out", ps.PruneSpec(drop_layers=(0,), sizes={"num_attention_heads": 4, "num_key_value_heads": 2}))
    cfg, old = _config(tmp_path / "out"), _config(src)
    assert cfg["layer_types"] == old["layer_types"][1:] == ["full_attention", "sliding_attention", "full_attention"]
    assert cfg["final_logit_softcapping"] == old["final_logit_softcapping"]
    assert cfg["attn_logit_softcapping"] == old["attn_logit_softcapping"]
    _check(src, tmp_path / "out", "gemma2")


def test_gemma2_layer_types_are_written_out_when_implicit(family_ckpts, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(family_ckpts["gemma2"], src)
    cfg = _config(src)
    del cfg["layer_types"]  # older gemma-2 configs: sliding on even layers, implied
    (src / "config.json").write_text(json.dumps(cfg))
    plan = ps.plan(src, ps.PruneSpec(drop_layers=(0,)))
    assert plan.new_config["layer_types"] == ["full_attention", "sliding_attention", "full_attention"]


def test_gpt_neox_layers_heads_ffn_exact_hidden_approximate(family_ckpts, tmp_path):
    src = family_ckpts["gpt_neox"]
    ps.run(src, tmp_path / "a", ps.PruneSpec(sizes={"intermediate_size": 64}, drop_layers=(2,)))
    _check(src, tmp_path / "a", "gpt_neox")
    with pytest.raises(SpecError, match="hidden_size"):
        ps.plan(src, ps.PruneSpec(sizes={"num_attention_heads": 6}))
    plan = ps.run(src, tmp_path / "b", ps.PruneSpec(sizes={"hidden_size": 48, "num_attention_heads": 6}))
    assert any("LayerNorm is approximate" in w for w in plan.warnings)
    assert "head_dim" not in plan.new_config or plan.new_config["head_dim"] == 8
    ids = sample_ids()
    expected = logits(masked_reference(src, "gpt_neox", keep_of(tmp_path / "b")), ids)
    err = (logits(load(tmp_path / "b"), ids) - expected).abs().max().item()
    ps.run(src, tmp_path / "c", ps.PruneSpec(sizes={"hidden_size": 48, "num_attention_heads": 6}, norm_rescale=False))
    plain = (logits(load(tmp_path / "c"), ids) - expected).abs().max().item()
    print(f"gpt_neox hidden 64->48: max |logit error| {err:.4g} rescaled, {plain:.4g} plain (max |logit| {expected.abs().max():.3g})")
    assert 0 < err < 0.05 and err < plain / 3  # approximate; rescaling LayerNorm weights by sqrt(d/d') helps


def test_magnitude_on_mixed_dense_and_sparse_layers(family_ckpts, tmp_path):
    src = family_ckpts["qwen2_moe"]  # layers 0, 2, 3 are dense: their experts score zero
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"num_experts": 2, "moe_intermediate_size": 16}, method="magnitude"))
    _check(src, tmp_path / "out", "qwen2_moe")


def test_unsupported_model_type_points_to_the_table_docs(family_ckpts, tmp_path):
    from prune_surgery.api import inspect

    src = tmp_path / "falcon"
    shutil.copytree(family_ckpts["phi3"], src)
    (src / "config.json").write_text(json.dumps({**_config(family_ckpts["phi3"]), "model_type": "falcon"}))
    with pytest.raises(ArchitectureError) as info:
        inspect(src)
    message = str(info.value)
    for family in ("phi3", "mixtral", "qwen2_moe", "gemma3_text", "gpt_neox"):
        assert family in message
    assert "Adding an architecture" in message and "tables/README.md" in message


def test_moe_sizes_from_the_command_line(tmp_path):
    import subprocess
    import sys

    from models import load

    src = build(tmp_path / "src", "mixtral")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "prune_surgery", "run", str(src), str(out), "-q",
                             "--num-experts", "3", "--intermediate-size", "64"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["num_local_experts"] == 3 and config["intermediate_size"] == 64
    load(out)
    result = subprocess.run([sys.executable, "-m", "prune_surgery", "plan", str(src), "--num-experts", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "num_experts_per_tok" in result.stderr and "Traceback" not in result.stderr
