"""Oracles for GPT-2, SmolLM3, OLMo 2 and OLMo 3 (tables gpt2.yaml, olmo.yaml).

transformers loads every output with no missing or unexpected keys; logits equal the masked
original in float32; keep-everything is byte-identical; the cuts that cannot be exact are
refused (OLMo heads) or flagged (GPT-2 hidden, LayerNorm).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import prune_surgery as ps
from models import keep_of, load, logits, sample_ids
from models_families import masked_reference
from models_families_2026 import build, build_vlm, build_hub_gpt2, load_vlm, masked_vlm, masked_gpt2, masked_qwen3_5, vlm_logits
from models_gemma4 import build_gemma4, masked_gemma4
from models_families_2026 import gemma3_in_memory_layout
from prune_surgery.errors import ArchitectureError, SpecError
from test_families import _config, _tensors

NEW = ("gpt2", "smollm3", "olmo2", "olmo3", "qwen3_5")
MASKED = {"gpt2": masked_gpt2, "qwen3_5": masked_qwen3_5}
LLAMA_LIKE = {"smollm3": {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64},
              "olmo2": {"hidden_size": 48, "intermediate_size": 64}, "olmo3": {"hidden_size": 48, "intermediate_size": 64}}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("families2026")
    made = {name: build(root / name, name) for name in NEW}
    made["gpt2_hub"] = build_hub_gpt2(root / "gpt2_hub", made["gpt2"])
    return made


def _error(src, out, family):
    ids = sample_ids()
    keep = keep_of(out)
    reference = MASKED[family](src, keep) if family in MASKED else masked_reference(src, family, keep)
    expected = logits(reference, ids)
    got = logits(load(out), ids)
    assert not torch.allclose(got, logits(load(src), ids), atol=1e-4)  # the pruning changed something
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("family", [*NEW, "gpt2_hub"])
def test_keep_everything_is_byte_identical(ckpts, tmp_path, family):
    plan = ps.run(ckpts[family], tmp_path / "out", ps.PruneSpec())
    a, b = _tensors(ckpts[family]), _tensors(tmp_path / "out")
    assert set(b) == {k for k in a if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert all(a[k].tobytes() == b[k].tobytes() for k in b)
    assert all(t.identity for t in plan.tensors)


@pytest.mark.parametrize("family", sorted(LLAMA_LIKE))
def test_width_and_depth_are_exact(ckpts, tmp_path, family):
    ps.run(ckpts[family], tmp_path / "out", ps.PruneSpec(sizes=LLAMA_LIKE[family], drop_layers=(2,)))
    assert _error(ckpts[family], tmp_path / "out", family) < 5e-5


def test_smollm3_no_rope_layers_follow_the_layers(ckpts, tmp_path):
    ps.run(ckpts["smollm3"], tmp_path / "out", ps.PruneSpec(drop_layers=(0,)))
    assert _config(tmp_path / "out")["no_rope_layers"] == [0, 1, 1]
    assert _error(ckpts["smollm3"], tmp_path / "out", "smollm3") < 5e-5


def test_olmo3_layer_types_follow_the_layers(ckpts, tmp_path):
    ps.run(ckpts["olmo3"], tmp_path / "out", ps.PruneSpec(drop_layers=(1,)))
    assert _config(tmp_path / "out")["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    assert _error(ckpts["olmo3"], tmp_path / "out", "olmo3") < 5e-5


@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
@pytest.mark.parametrize("sizes", [{"num_attention_heads": 4}, {"num_attention_heads": 4, "num_key_value_heads": 2}])
def test_olmo_head_pruning_is_refused(ckpts, family, sizes):
    with pytest.raises(SpecError, match="across all .*heads at once"):
        ps.plan(ckpts[family], ps.PruneSpec(sizes=sizes))


@pytest.mark.parametrize("family", ["gpt2", "gpt2_hub"])
def test_gpt2_layers_and_ffn_are_exact(ckpts, tmp_path, family):
    src = ckpts[family]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"intermediate_size": 100}, drop_layers=(1,)))
    assert plan.new_config["n_inner"] == 100 and plan.new_config["n_layer"] == 3
    names = set(_tensors(tmp_path / "out"))
    prefix = "" if family == "gpt2_hub" else "transformer."
    assert f"{prefix}h.2.mlp.c_fc.weight" in names and f"{prefix}h.3.ln_1.weight" not in names
    assert not any(n.endswith(".attn.bias") for n in names)
    out = _tensors(tmp_path / "out")
    assert out[f"{prefix}h.0.attn.c_attn.weight"].shape == (64, 192) and out[f"{prefix}h.0.mlp.c_fc.weight"].shape == (64, 100)
    assert _error(ckpts["gpt2"], tmp_path / "out", "gpt2") < 2e-5  # the same weights, transformers' layout


def test_gpt2_heads_refused_alone_then_approximate_with_hidden(ckpts, tmp_path):
    src = ckpts["gpt2"]
    with pytest.raises(SpecError, match="n_embd / n_head"):
        ps.plan(src, ps.PruneSpec(sizes={"num_attention_heads": 6}))
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 48, "num_attention_heads": 6}))
    assert any("LayerNorm is approximate" in w for w in plan.warnings)
    out = _tensors(tmp_path / "out")
    assert out["transformer.h.0.attn.c_attn.weight"].shape == (48, 144)
    assert out["transformer.h.0.attn.c_proj.weight"].shape == (48, 48)
    err = _error(src, tmp_path / "out", "gpt2")
    print(f"gpt2 hidden 64->48, heads 8->6: max |logit error| {err:.3g}")
    assert err < 0.05


QWEN3_5_CUTS = {
    "width_depth": ({"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}, (1,)),
    "value_heads": ({"linear_num_value_heads": 2}, ()),            # one value head per key head
    "key_heads": ({"linear_num_key_heads": 1, "linear_num_value_heads": 2}, (2,)),  # a whole key group
    "hidden_only": ({"hidden_size": 32}, ()),
}


@pytest.mark.parametrize("cut", sorted(QWEN3_5_CUTS))
def test_qwen3_5_hybrid_cuts_are_exact(ckpts, tmp_path, cut):
    sizes, drop = QWEN3_5_CUTS[cut]
    plan = ps.run(ckpts["qwen3_5"], tmp_path / "out", ps.PruneSpec(sizes=sizes, drop_layers=drop, method="magnitude"))
    cfg = _config(tmp_path / "out")
    assert cfg["layer_types"] == [t for i, t in enumerate(_config(ckpts["qwen3_5"])["layer_types"]) if i not in drop]
    assert cfg["rms_norm_eps"] == _config(ckpts["qwen3_5"])["rms_norm_eps"]
    if "linear_num_value_heads" in sizes:
        out = _tensors(tmp_path / "out")
        v = sizes["linear_num_value_heads"]
        k = sizes.get("linear_num_key_heads", 2)
        assert out["model.layers.0.linear_attn.in_proj_qkv.weight"].shape == (2 * k * 8 + v * 8, 64)
        assert out["model.layers.0.linear_attn.conv1d.weight"].shape == (2 * k * 8 + v * 8, 1, 4)
        assert out["model.layers.0.linear_attn.A_log"].shape == (v,)
    assert plan.new_config.get("linear_num_value_heads", 4) == sizes.get("linear_num_value_heads", 4)
    assert _error(ckpts["qwen3_5"], tmp_path / "out", "qwen3_5") < 5e-5


def test_qwen3_5_hidden_is_exact_with_a_large_eps(tmp_path):
    """eps 0.1 makes any change of the gated DeltaNet norm's effective eps visible: the residual
    rule keeps every eps, so the cut stays exact."""
    src = build(tmp_path / "src", "qwen3_5", rms_norm_eps=0.1)
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 32}))
    assert _error(src, tmp_path / "out", "qwen3_5") < 5e-5


@pytest.fixture(scope="module")
def gemma3_vlm(tmp_path_factory):
    return build_vlm(tmp_path_factory.mktemp("vlm") / "gemma3", "gemma3")


def test_gemma3_vlm_keep_everything_is_byte_identical(gemma3_vlm, tmp_path):
    plan = ps.run(gemma3_vlm, tmp_path / "out", ps.PruneSpec())
    assert plan.arch.family == "gemma3_vlm" and all(t.identity for t in plan.tensors)
    a, b = _tensors(gemma3_vlm), _tensors(tmp_path / "out")
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize("images", [False, True])
def test_gemma3_vlm_language_model_cuts_are_exact(gemma3_vlm, tmp_path, images):
    sizes = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}
    plan = ps.run(gemma3_vlm, tmp_path / "out", ps.PruneSpec(sizes=sizes, drop_layers=(2,)))
    cfg = _config(tmp_path / "out")["text_config"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["layer_types"]) == (48, 3, ["sliding_attention", "full_attention", "full_attention"])
    a, b = _tensors(gemma3_vlm), _tensors(tmp_path / "out")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a if k.startswith("vision_tower."))  # kept whole
    assert b["multi_modal_projector.mm_input_projection_weight"].shape == (32, 48)
    assert not any(".layers.3." in k for k in b if k.startswith("language_model."))
    assert plan.new_config["text_config"]["rms_norm_eps"] == plan.config["text_config"]["rms_norm_eps"]
    expected = vlm_logits(masked_vlm(gemma3_vlm, keep_of(tmp_path / "out")), images)
    got = vlm_logits(load_vlm(tmp_path / "out"), images)
    assert (got - expected).abs().max() < 5e-5
    assert not torch.allclose(got, vlm_logits(load_vlm(gemma3_vlm), images), atol=1e-4)


def test_gemma3_vlm_in_memory_layout_is_kept(gemma3_vlm, tmp_path):
    """Checkpoints saved as `model.language_model.*` / `model.vision_tower.*` (the in-memory names)."""
    src = gemma3_in_memory_layout(gemma3_vlm, tmp_path / "src")
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"intermediate_size": 64}, drop_layers=(1,)))
    names = set(_tensors(tmp_path / "out"))
    assert "model.language_model.layers.2.mlp.down_proj.weight" in names and "model.vision_tower.post_layernorm.weight" in names
    expected = vlm_logits(masked_vlm(gemma3_vlm, keep_of(tmp_path / "out")), False)
    assert (vlm_logits(load_vlm(tmp_path / "out"), False) - expected).abs().max() < 5e-5


def test_mistral3_vlm_text_is_exact_image_path_flagged(tmp_path):
    src = build_vlm(tmp_path / "src", "mistral3")
    (src / "consolidated.safetensors").write_bytes((src / next(iter(sorted(p.name for p in src.glob("model-*.safetensors"))))).read_bytes())
    plan = ps.run(src, tmp_path / "same", ps.PruneSpec())
    assert plan.arch.family == "mistral3_vlm" and all(t.identity for t in plan.tensors)
    assert not (tmp_path / "same" / "consolidated.safetensors").exists()  # outside the index: never read nor copied
    sizes = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=sizes, drop_layers=(1,)))
    assert any("image projector" in w for w in plan.warnings)
    out = _tensors(tmp_path / "out")
    assert out["multi_modal_projector.linear_1.weight"].shape == (48, 32) and out["multi_modal_projector.linear_2.weight"].shape == (48, 48)
    assert _config(tmp_path / "out")["text_config"]["hidden_size"] == 48
    expected = vlm_logits(masked_vlm(src, keep_of(tmp_path / "out")), False)
    got = vlm_logits(load_vlm(tmp_path / "out"), False)
    assert (got - expected).abs().max() < 5e-5
    vlm_logits(load_vlm(tmp_path / "out"), True)  # the image path still runs


@pytest.mark.parametrize("images", [False, True])
def test_qwen3_5_vlm_language_model_cuts_are_exact(tmp_path, images):
    src = build_vlm(tmp_path / "src", "qwen3_5")
    sizes = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "linear_num_value_heads": 2, "intermediate_size": 64}
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=sizes, drop_layers=(1,)))
    assert plan.arch.family == "qwen3_5_vlm"
    cfg = _config(tmp_path / "out")
    assert cfg["vision_config"]["out_hidden_size"] == cfg["text_config"]["hidden_size"] == 48
    a, b = _tensors(src), _tensors(tmp_path / "out")
    assert b["model.visual.merger.linear_fc2.weight"].shape == (48, 128)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a if k.startswith("model.visual.") and ".merger.linear_fc2." not in k)
    expected = vlm_logits(masked_vlm(src, keep_of(tmp_path / "out")), images)
    got = vlm_logits(load_vlm(tmp_path / "out"), images)
    assert (got - expected).abs().max() < 5e-5
    assert not torch.allclose(got, vlm_logits(load_vlm(src), images), atol=1e-4)


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma4")
    return {v: build_gemma4(root / v, v) for v in ("dense", "ple_shared")}


def _gemma4_error(src, out):
    expected = logits(masked_gemma4(src, keep_of(out)), sample_ids())
    got = logits(load(out), sample_ids())
    assert not torch.allclose(got, logits(load(src), sample_ids()), atol=1e-4)
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("variant", ["dense", "ple_shared"])
def test_gemma4_keep_everything_is_byte_identical(gemma4, tmp_path, variant):
    plan = ps.run(gemma4[variant], tmp_path / "out", ps.PruneSpec())
    assert plan.arch.family == "gemma4" and all(t.identity for t in plan.tensors)
    a, b = _tensors(gemma4[variant]), _tensors(tmp_path / "out")
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize("variant", ["dense", "ple_shared"])
def test_gemma4_width_and_depth_are_exact(gemma4, tmp_path, variant):
    src = gemma4[variant]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 48, "intermediate_size": 64}, drop_layers=(2,)))
    cfg, old = _config(tmp_path / "out"), _config(src)
    assert cfg["per_layer_config"] == {"1": old["per_layer_config"]["1"], "2": old["per_layer_config"]["3"]}
    assert cfg["rms_norm_eps"] == old["rms_norm_eps"]
    if variant == "ple_shared":
        assert cfg["num_kv_shared_layers"] == 1  # layer 2 was a consumer; layer 3 still is
        out = _tensors(tmp_path / "out")
        assert out["model.embed_tokens_per_layer.weight"].shape == (128, 3 * 16)
        assert out["model.per_layer_model_projection.weight"].shape == (3 * 16, 48)
        assert "model.layers.2.self_attn.k_proj.weight" not in out
    assert _gemma4_error(src, tmp_path / "out") < 5e-5
    assert plan.new_config["num_hidden_layers"] == 3


def test_gemma4_kv_producer_drop_is_refused(gemma4):
    """(Head pruning per layer type: tests/test_gemma4_2026.py.)"""
    with pytest.raises(SpecError, match="produces the KV cache"):
        ps.plan(gemma4["ple_shared"], ps.PruneSpec(drop_layers=(1,)))


def test_qwen3_5_layer_types_must_match_the_tensor_sets(ckpts, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ckpts["qwen3_5"], src)
    cfg = _config(src)
    cfg["layer_types"] = ["full_attention", "linear_attention", "linear_attention", "full_attention"]  # 0 and 1 swapped
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureError, match="layers.0.self_attn.q_proj.weight' is missing .* disagree"):
        ps.plan(src, ps.PruneSpec())


def test_a_table_still_using_hidden_scale_is_refused_with_a_pointer(monkeypatch):
    """Tables written for the earlier hidden rule fail loudly instead of pruning wrongly."""
    from prune_surgery import arch

    old = {"fam": {"extends": "llama", "model_types": ["fam"], "tensors": {"q_proj": {"hidden_scale": True}}}}
    tables = {**arch.raw_tables(), **old}
    monkeypatch.setattr(arch, "raw_tables", lambda: tables)
    arch.load_architecture.cache_clear()
    try:
        with pytest.raises(ArchitectureError, match="hidden_scale` is gone.*residual: write"):
            arch.load_architecture("fam")
    finally:
        arch.load_architecture.cache_clear()
