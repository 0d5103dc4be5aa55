"""Oracles for Gemma 4 head pruning, the 26B-A4B-style MoE (gemma4_moe.yaml) and the
Gemma4ForConditionalGeneration VLM (gemma4_vlm.yaml).

transformers loads every output with no missing or unexpected keys; logits equal the masked
original (models_gemma4) in float32 (the VLM's text logits, and its image logits); keep-
everything is byte-identical; the cuts that cannot stay exact are refused with the reason.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import prune_surgery as ps
from clitools import assert_clean_failure, cli
from models import keep_of, load, logits, sample_ids
from models_families_2026 import IMAGE_TOKEN, load_vlm, vlm_logits
from models_gemma4 import build_gemma4, build_gemma4_vlm, masked_gemma4, masked_gemma4_vlm
from prune_surgery.errors import SpecError
from test_families import _config, _tensors

#: every space at once: sliding and full query heads (one target), kv heads of both layer
#: types (full layers with k = v have their own count), hidden, ffn, experts and their width
CUTS = {
    "dense": {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64},
    "moe": {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "num_global_key_value_heads": 1,
            "intermediate_size": 64, "num_experts": 4, "moe_intermediate_size": 16},
}


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma4_heads")
    return {v: build_gemma4(root / v, v) for v in ("dense", "ple_shared", "moe")}


def _error(src, out):
    expected = logits(masked_gemma4(src, keep_of(out)), sample_ids())
    got = logits(load(out), sample_ids())
    assert not torch.allclose(got, logits(load(src), sample_ids()), atol=1e-4)  # the pruning changed something
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("variant", ["dense", "moe"])
def test_gemma4_heads_of_both_layer_types_and_experts_are_exact(gemma4, tmp_path, variant):
    src, out = gemma4[variant], tmp_path / "out"
    plan = ps.run(src, out, ps.PruneSpec(sizes=CUTS[variant], drop_layers=(2,)))
    assert plan.arch.family == {"dense": "gemma4", "moe": "gemma4_moe"}[variant]
    t, cfg = _tensors(out), _config(out)
    assert t["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 8, 48)   # sliding: head_dim 8
    assert t["model.layers.1.self_attn.q_proj.weight"].shape == (4 * 16, 48)  # full: global_head_dim 16
    assert t["model.layers.1.self_attn.o_proj.weight"].shape == (48, 4 * 16)
    assert t["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 48)
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2
    if variant == "moe":  # k = v full layers: their own kv count, in per_layer_config; no v_proj
        assert t["model.layers.1.self_attn.k_proj.weight"].shape == (1 * 16, 48)
        assert "model.layers.1.self_attn.v_proj.weight" not in t
        assert cfg["per_layer_config"] == {"1": {"head_dim": 16, "num_key_value_heads": 1}, "2": {"head_dim": 16, "num_key_value_heads": 1}}
        assert t["model.layers.0.experts.gate_up_proj"].shape == (4, 2 * 16, 48)
        assert t["model.layers.0.experts.down_proj"].shape == (4, 48, 16)
        assert t["model.layers.0.router.proj.weight"].shape == (4, 48) and t["model.layers.0.router.per_expert_scale"].shape == (4,)
        assert (cfg["num_experts"], cfg["moe_intermediate_size"]) == (4, 16)
        assert not any("renormalised" in w for w in plan.warnings)  # Gemma 4 renormalises its top-k weights
    else:  # full layers use num_key_value_heads (`follows`): nothing of their own is written
        assert t["model.layers.1.self_attn.k_proj.weight"].shape == (2 * 16, 48)
        assert cfg["per_layer_config"] == {"1": {"head_dim": 16}, "2": {"head_dim": 16}}
    keep = keep_of(out)
    assert len(keep["full_heads"]["1"]) == len(keep["heads"]["0"]) == 4
    assert set(keep["full_heads"]) == {"1", "3"} and set(keep["heads"]) == set(keep["kv_heads"]) == {"0"}  # one selection per layer, of its type
    assert _error(src, out) < 5e-5
    assert ps.plan(src, ps.PruneSpec(keep=keep)).plan_hash == plan.plan_hash  # the keep file reproduces the run
    with pytest.raises(SpecError, match="exactly these scopes: 1, 3"):
        ps.plan(src, ps.PruneSpec(keep={**keep, "full_heads": {**keep["full_heads"], "0": keep["heads"]["0"]}}))


def test_gemma4_kv_sharing_layers_keep_their_producers_kv_heads(gemma4, tmp_path):
    """Layers 2 (sliding) and 3 (full) reuse the KV of layers 0 and 1: they keep those layers'
    kv heads and choose their query heads inside them, so kv cuts stay exact."""
    src, out = gemma4["ple_shared"], tmp_path / "out"
    sizes = {"num_attention_heads": 4, "num_key_value_heads": 2, "num_global_key_value_heads": 1, "hidden_size": 48}
    plan = ps.run(src, out, ps.PruneSpec(sizes=sizes))
    keep = keep_of(out)
    assert keep["kv_heads"]["2"] == keep["kv_heads"]["0"] and keep["full_kv_heads"]["3"] == keep["full_kv_heads"]["1"]
    t = _tensors(out)
    assert t["model.layers.3.self_attn.q_proj.weight"].shape == (4 * 16, 48)  # a consumer: query heads only
    assert t["model.layers.1.self_attn.k_proj.weight"].shape == (1 * 16, 48)
    assert "model.layers.2.self_attn.k_proj.weight" not in t
    assert plan.new_config["per_layer_config"]["3"] == {"head_dim": 16, "num_key_value_heads": 1}
    assert _error(src, out) < 5e-5
    other = {**keep, "kv_heads": {**keep["kv_heads"], "2": sorted(set(range(4)) - set(keep["kv_heads"]["0"]))}}
    with pytest.raises(SpecError, match="layer 2 reuses the keys and values of layer 0 .* its kv_heads must be layer 0's"):
        ps.plan(src, ps.PruneSpec(keep=other))
    dropped = ps.run(src, tmp_path / "drop", ps.PruneSpec(sizes={"num_attention_heads": 4, "hidden_size": 48}, drop_layers=(2,)))
    assert dropped.new_config["num_kv_shared_layers"] == 1
    assert _error(src, tmp_path / "drop") < 5e-5


def test_gemma4_refusals_name_the_reason(gemma4):
    with pytest.raises(SpecError, match="config.json has no num_global_key_value_heads: these layers use num_key_value_heads"):
        ps.plan(gemma4["dense"], ps.PruneSpec(sizes={"num_global_key_value_heads": 2}))
    with pytest.raises(SpecError, match="must be at most num_experts=1"):
        ps.plan(gemma4["moe"], ps.PruneSpec(sizes={"num_experts": 1}))
    with pytest.raises(SpecError, match="not a multiple of"):  # GQA: 8 query heads over 2 kv groups of the full layers
        ps.plan(gemma4["moe"], ps.PruneSpec(sizes={"num_attention_heads": 3}))
    magnitude = ps.plan(gemma4["moe"], ps.PruneSpec(sizes=CUTS["moe"], method="magnitude"))  # scores per layer type
    assert len(magnitude.keep["full_kv_heads"]["1"]) == 1


def test_gemma4_moe_keep_everything_is_byte_identical(gemma4, tmp_path):
    plan = ps.run(gemma4["moe"], tmp_path / "out", ps.PruneSpec())
    assert plan.arch.family == "gemma4_moe" and all(t.identity for t in plan.tensors)
    a, b = _tensors(gemma4["moe"]), _tensors(tmp_path / "out")
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert _config(tmp_path / "out") == _config(gemma4["moe"])


def _image_logits(model, seed=2):
    """Logits of a batch with one 16 x 16 image (16 patches of 4 x 4, pooled 2 x 2 into 4 soft tokens)."""
    ids = torch.randint(3, 290, (2, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 1:5] = IMAGE_TOKEN
    pixels = torch.rand(2, 16, 48, generator=torch.Generator().manual_seed(seed))
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="xy"), -1).reshape(1, 16, 2).repeat(2, 1, 1)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels, image_position_ids=grid, mm_token_type_ids=(ids == IMAGE_TOKEN).long(),
                     use_cache=False).logits.float()


@pytest.mark.parametrize("variant", ["ple_shared", "moe"])
def test_gemma4_vlm_language_model_cuts_are_exact(tmp_path, variant):
    src, out = build_gemma4_vlm(tmp_path / "src", variant, audio=variant == "ple_shared"), tmp_path / "out"
    same = ps.run(src, tmp_path / "same", ps.PruneSpec())
    a, b = _tensors(src), _tensors(tmp_path / "same")
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a) and all(t.identity for t in same.tensors)
    sizes = {k: v for k, v in CUTS["moe" if variant == "moe" else "dense"].items() if variant == "moe" or "key_value" not in k}
    plan = ps.run(src, out, ps.PruneSpec(sizes=sizes, drop_layers=(2,)))
    assert plan.arch.family == {"ple_shared": "gemma4_vlm", "moe": "gemma4_moe_vlm"}[variant]
    cfg, b = _config(out), _tensors(out)
    assert cfg["text_config"]["hidden_size"] == 48 and cfg["text_config"]["num_hidden_layers"] == 3
    assert b["model.embed_vision.embedding_projection.weight"].shape == (48, 32)
    towers = [k for k in a if k.startswith(("model.vision_tower.", "model.audio_tower."))]
    assert towers and all(a[k].tobytes() == b[k].tobytes() for k in towers)
    if variant == "ple_shared":
        assert b["model.embed_audio.embedding_projection.weight"].shape == (48, 24)
        assert b["model.language_model.embed_tokens_per_layer.weight"].shape == (300, 3 * 16)
    reference, pruned = masked_gemma4_vlm(src, keep_of(out)), load_vlm(out)  # load_vlm: no missing / unexpected keys
    assert (vlm_logits(pruned, False) - vlm_logits(reference, False)).abs().max() < 5e-5
    assert (_image_logits(pruned) - _image_logits(reference)).abs().max() < 5e-5
    assert not torch.allclose(_image_logits(pruned), _image_logits(pruned, seed=3), atol=1e-4)  # the image is read


def test_gemma4_hub_config_form_prunes_heads_exactly(gemma4, tmp_path):
    """Hub configs give `global_head_dim` / `num_global_key_value_heads` instead of 5.24's
    `per_layer_config` (which transformers then derives): read and written in that form."""
    src = tmp_path / "src"
    shutil.copytree(gemma4["moe"], src)
    cfg = _config(src)
    del cfg["per_layer_config"]
    (src / "config.json").write_text(json.dumps({**cfg, "global_head_dim": 16, "num_global_key_value_heads": 2}))
    sizes = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "num_global_key_value_heads": 1}
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=sizes, drop_layers=(2,)))
    assert plan.changes["num_global_key_value_heads"] == [2, 1] and "per_layer_config" not in plan.new_config
    assert _error(src, tmp_path / "out") < 5e-5


def test_gemma4_cli_takes_full_layer_kv_heads_from_a_spec_file(gemma4, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"num_global_key_value_heads": 1, "num_attention_heads": 4}))
    done = cli("run", str(gemma4["moe"]), str(tmp_path / "out"), "--spec", str(spec), "--quiet")
    assert done.returncode == 0, done.stderr
    assert _config(tmp_path / "out")["per_layer_config"]["1"]["num_key_value_heads"] == 1
    spec.write_text(json.dumps({"num_global_key_value_heads": 1}))
    assert_clean_failure(cli("plan", str(gemma4["dense"]), "--spec", str(spec)), "no num_global_key_value_heads", "num-key-value-heads")
