"""Oracles for today's MoE tables: glm4_moe, deepseek_v3 (MLA; glm4_moe_lite reuses it).

transformers loads every output with no missing keys (unexpected only for MTP layers, which
it does not model); logits equal the masked original (models_moe2026.masked_reference) in
float32; keep-everything is byte-identical; experts stay balanced over routing groups; MTP
layers are pruned with selections of their own and renumbered.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import prune_surgery as ps
from models import keep_of, logits, sample_ids
from models_families import build as build_family
from models_moe2026 import add_mtp, build, load, masked_reference, mtp_tensors
from prune_surgery.errors import SpecError

VARIANTS = ("glm4_moe", "glm4_moe_noqk", "deepseek_v3", "glm4_moe_lite")
CUT = {"hidden_size": 48, "num_attention_heads": 4, "n_routed_experts": 4, "moe_intermediate_size": 24, "intermediate_size": 64}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe2026")
    made = {v: build(root / v, v) for v in VARIANTS}
    made["deepseek_v3_mtp"] = add_mtp(build(root / "deepseek_v3_mtp", "deepseek_v3", layers=5))
    return made


def _check(src, out, mtp_as_layer=False):
    ids = sample_ids()
    got = logits(load(out, mtp_as_layer), ids)
    expected = logits(masked_reference(src, keep_of(out), mtp_as_layer), ids)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(got, logits(load(src, mtp_as_layer), ids), atol=1e-4)


@pytest.mark.parametrize("variant", sorted(VARIANTS) + ["deepseek_v3_mtp"])
def test_keep_everything_is_byte_identical(ckpts, tmp_path, variant):
    plan = ps.run(ckpts[variant], tmp_path / "out", ps.PruneSpec())
    a, b = mtp_tensors(ckpts[variant]), mtp_tensors(tmp_path / "out")
    assert set(a) == set(b) and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)
    assert all(t.identity for t in plan.tensors)


@pytest.mark.parametrize("variant", VARIANTS)
def test_width_depth_experts_match_masked_original(ckpts, tmp_path, variant):
    src = ckpts[variant]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=CUT, drop_layers=(2,)))
    keep = keep_of(tmp_path / "out")
    assert keep["layers"] == [0, 1, 3] and {"1", "3"} <= set(keep["experts"])  # (and dense 0, MTP 4 of the config)
    for kept in keep["experts"].values():  # n_group 2 over 8 experts: two of each group of four
        assert [sum(1 for e in kept if e // 4 == g) for g in range(2)] == [2, 2]
    cfg = plan.new_config
    assert cfg["n_routed_experts"] == 4 and cfg["first_k_dense_replace"] == 1 and cfg["num_attention_heads"] == 4
    assert cfg["num_key_value_heads"] == 4  # GQA 8/4 keeps one head per group; MLA (8/8) follows the heads
    _check(src, tmp_path / "out")


def test_mla_heads_slice_three_per_head_units(ckpts, tmp_path):
    src = ckpts["deepseek_v3"]
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"num_attention_heads": 3}))
    heads = keep_of(tmp_path / "out")["heads"]["1"]
    a, b = mtp_tensors(src), mtp_tensors(tmp_path / "out")
    rows = lambda width: [h * width + r for h in heads for r in range(width)]  # noqa: E731
    attn = "model.layers.1.self_attn."
    np.testing.assert_array_equal(b[attn + "q_b_proj.weight"], a[attn + "q_b_proj.weight"][rows(12)])  # nope 8 + rope 4
    np.testing.assert_array_equal(b[attn + "kv_b_proj.weight"], a[attn + "kv_b_proj.weight"][rows(14)])  # nope 8 + v 6
    np.testing.assert_array_equal(b[attn + "o_proj.weight"], a[attn + "o_proj.weight"][:, rows(6)])
    np.testing.assert_array_equal(b[attn + "kv_a_proj_with_mqa.weight"], a[attn + "kv_a_proj_with_mqa.weight"])  # k_pe shared
    _check(src, tmp_path / "out")


def test_mtp_layer_is_pruned_and_renumbered(ckpts, tmp_path):
    src = ckpts["deepseek_v3_mtp"]  # layers 0..3 and MTP layer 4
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=CUT, drop_layers=(2,)))
    keep = keep_of(tmp_path / "out")
    assert keep["layers"] == [0, 1, 3] and set(keep["heads"]) == {"0", "1", "3", "4"} and "4" in keep["experts"]
    assert plan.new_config["num_hidden_layers"] == 3 and plan.new_config["num_nextn_predict_layers"] == 1
    a, b = mtp_tensors(src), mtp_tensors(tmp_path / "out")
    assert not any(k.startswith("model.layers.4.") for k in b)
    hidden = keep["hidden"]
    eh = a["model.layers.4.eh_proj.weight"]
    np.testing.assert_array_equal(b["model.layers.3.eh_proj.weight"], eh[hidden][:, hidden + [64 + h for h in hidden]])
    np.testing.assert_array_equal(b["model.layers.3.shared_head.head.weight"], a["model.layers.4.shared_head.head.weight"][:, hidden])
    scale = np.float32(np.sqrt(64 / 48))
    np.testing.assert_allclose(b["model.layers.3.enorm.weight"], a["model.layers.4.enorm.weight"][hidden] * scale, rtol=1e-6)
    _check(src, tmp_path / "out")  # the main model
    _check(src, tmp_path / "out", mtp_as_layer=True)  # the MTP layer's attention and MoE block too


def test_group_routing_targets_are_refused(ckpts):
    with pytest.raises(SpecError, match="multiple of n_group=2"):
        ps.plan(ckpts["glm4_moe"], ps.PruneSpec(sizes={"n_routed_experts": 5}))
    with pytest.raises(SpecError, match="topk_group of n_group groups"):
        ps.plan(ckpts["glm4_moe"], ps.PruneSpec(sizes={"n_routed_experts": 2}))


def test_keep_file_must_balance_groups(ckpts, tmp_path):
    src = ckpts["glm4_moe"]
    keep = {"experts": {str(layer): [0, 1, 2, 4] for layer in range(5)}}  # every layer scope, MTP layer 4 of the config too
    with pytest.raises(SpecError, match="per routing group"):
        ps.plan(src, ps.PruneSpec(keep=keep))


def test_qk_norm_scaling_follows_use_qk_norm(ckpts):
    """q/k are scaled by sqrt(d/d') only where q_norm/k_norm share the rescaled eps."""
    spec = ps.PruneSpec(sizes={"hidden_size": 48})
    with_norm = {t.out.name: t.rescale for t in ps.plan(ckpts["glm4_moe"], spec).tensors}
    without = {t.out.name: t.rescale for t in ps.plan(ckpts["glm4_moe_noqk"], spec).tensors}
    name = "model.layers.0.self_attn.q_proj.weight"
    assert with_norm[name] == pytest.approx(np.sqrt(64 / 48)) and without[name] is None


def test_norm_topk_prob_false_is_flagged(tmp_path):
    src = build_family(tmp_path / "qwen2_moe", "qwen2_moe")
    flagged = ps.plan(src, ps.PruneSpec(sizes={"num_experts": 3}))
    assert any("norm_topk_prob: false" in w for w in flagged.warnings)
    assert not any("norm_topk_prob" in w for w in ps.plan(src, ps.PruneSpec(sizes={"moe_intermediate_size": 24})).warnings)
    renorm = tmp_path / "renorm"
    shutil.copytree(src, renorm)
    cfg = json.loads((renorm / "config.json").read_text())
    (renorm / "config.json").write_text(json.dumps({**cfg, "norm_topk_prob": True}))
    assert not any("norm_topk_prob" in w for w in ps.plan(renorm, ps.PruneSpec(sizes={"num_experts": 3})).warnings)
