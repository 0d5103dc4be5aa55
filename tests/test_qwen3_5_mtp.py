"""Oracles for the Qwen3.5-MoE VLM (model_type qwen3_5_moe, as Qwen3.5/3.6-MoE ship) and for the
multi-token-prediction weights (`mtp.*`) of Qwen3.5 and Qwen3.5-MoE checkpoints.

transformers 5.24 loads every output (and every source) with no missing and no unexpected keys:
its Qwen3.5 classes ignore `mtp.*` on load without reporting them.  VLM cuts equal the masked
original's text logits (with and without an image) in float32, in both expert layouts; the
vision tower is kept byte for byte except the merger's last layer.  transformers does not run
MTP, so the MTP layer is checked as a decoder layer (models_qwen3_5_mtp.mtp_as_layer): the
pruned checkpoint and the masked source with their MTP layer in place of layer 3 give the same
logits; `mtp.fc` and the MTP norms are checked against numpy slices of the source.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import prune_surgery as ps
from models import keep_of, load, logits, sample_ids
from models_families_2026 import build as build_dense, build_vlm, load_vlm, masked_qwen3_5, masked_vlm, vlm_logits
from models_moe2026 import build as build_moe, fuse_experts, masked_reference, mtp_tensors
from models_qwen3_5_mtp import LAYER_TYPES, add_mtp, build_moe_vlm, masked_moe_vlm, mtp_as_layer, swapped_keep
from prune_surgery.errors import ArchitectureError, SpecError

VLM_CUTS = {
    "width_depth_experts": {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 3,
                            "moe_intermediate_size": 20, "shared_expert_intermediate_size": 24},
    "linear_heads": {"linear_num_key_heads": 1, "linear_num_value_heads": 2, "num_experts": 2},
}
MTP_CUT = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "linear_num_value_heads": 2}
MOE_MTP_CUT = dict(MTP_CUT, num_experts=3, moe_intermediate_size=20, shared_expert_intermediate_size=24)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_5_mtp")
    made = {"vlm": add_mtp(build_moe_vlm(root / "vlm", layers=5))}
    made["vlm_fused"] = fuse_experts(made["vlm"], root / "vlm_fused")  # the Hub layout, MTP experts fused too
    made["moe"] = add_mtp(build_moe(root / "moe", "qwen3_5_moe", layers=5, layer_types=LAYER_TYPES))
    made["moe_fused"] = fuse_experts(made["moe"], root / "moe_fused")
    made["dense"] = add_mtp(build_dense(root / "dense", "qwen3_5", num_hidden_layers=5, layer_types=LAYER_TYPES))
    return made


def _same_tensors(a, b):
    a, b = mtp_tensors(a), mtp_tensors(b)
    return set(a) == set(b) and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)


@pytest.mark.parametrize("variant", ["vlm", "vlm_fused", "moe", "moe_fused", "dense"])
def test_keep_everything_with_mtp_is_byte_identical(ckpts, tmp_path, variant):
    plan = ps.run(ckpts[variant], tmp_path / "out", ps.PruneSpec())
    assert plan.arch.family == {"vlm": "qwen3_5_moe_vlm", "dense": "qwen3_5"}.get(variant.split("_")[0], "qwen3_5_moe")
    assert all(t.identity for t in plan.tensors) and _same_tensors(ckpts[variant], tmp_path / "out")
    assert any(t.out.name == "mtp.layers.0.self_attn.q_proj.weight" for t in plan.tensors)


@pytest.mark.parametrize("layout", ["vlm", "vlm_fused"])
@pytest.mark.parametrize("cut", sorted(VLM_CUTS))
def test_moe_vlm_cuts_equal_masked_text_logits(ckpts, tmp_path, layout, cut):
    src, out = ckpts[layout], tmp_path / "out"
    plan = ps.run(src, out, ps.PruneSpec(sizes=VLM_CUTS[cut], drop_layers=(1,)))
    assert plan.arch.family == "qwen3_5_moe_vlm" and not any("hidden" in w for w in plan.warnings), plan.warnings
    cfg = json.loads((out / "config.json").read_text())
    text = cfg["text_config"]
    assert cfg["vision_config"]["out_hidden_size"] == text["hidden_size"] == VLM_CUTS[cut].get("hidden_size", 64)
    assert text["layer_types"] == ["linear_attention", "linear_attention", "full_attention"] and text["mtp_num_hidden_layers"] == 1
    a, b = mtp_tensors(src), mtp_tensors(out)
    assert all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a if k.startswith("model.visual.") and ".merger.linear_fc2." not in k)
    assert b["model.visual.merger.linear_fc2.weight"].shape == (text["hidden_size"], 128)
    fused = "model.language_model.layers.0.mlp.experts.gate_up_proj" in b
    assert fused == layout.endswith("fused") and fused == ("mtp.layers.0.mlp.experts.gate_up_proj" in b)
    keep = keep_of(out)
    for images in (False, True):
        got, expected = vlm_logits(load_vlm(out), images), vlm_logits(masked_moe_vlm(src, keep), images)
        assert (got - expected).abs().max() < 5e-5, (images, (got - expected).abs().max())
    assert not torch.allclose(got, vlm_logits(load_vlm(src), True), atol=1e-4)


def _check_mtp_slices(src, out, keep, tied=False):
    """mtp.fc [hidden, embedding | hidden] sliced on both axes and times c; the 1 + w norms
    divided by c (mtp.norm feeds the lm_head: by c^2 when it is tied to the scaled embedding)."""
    a, b = mtp_tensors(src), mtp_tensors(out)
    hidden, c = keep["hidden"], np.sqrt(48 / 64)
    fc = a["mtp.fc.weight"].numpy()
    np.testing.assert_allclose(b["mtp.fc.weight"].numpy(), fc[hidden][:, hidden + [64 + h for h in hidden]] * c, rtol=1e-6)
    for norm, factor in (("pre_fc_norm_embedding", c), ("pre_fc_norm_hidden", c), ("norm", c * c if tied else c)):
        w = a[f"mtp.{norm}.weight"].numpy()[hidden]
        np.testing.assert_allclose(b[f"mtp.{norm}.weight"].numpy(), (w + 1) / factor - 1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["moe", "moe_fused", "dense", "vlm_fused"])
def test_mtp_layer_is_pruned_with_its_own_selections(ckpts, tmp_path, variant):
    """Layer 1 dropped: the decoder layers renumber, mtp.layers.0 keeps its number and its own
    selections (scope "4", after the 4 decoder layers); run as decoder layer 3, it equals the
    masked original's MTP layer."""
    src, out = ckpts[variant], tmp_path / "out"
    plan = ps.run(src, out, ps.PruneSpec(sizes=MTP_CUT if variant == "dense" else MOE_MTP_CUT, drop_layers=(1,)))
    keep = keep_of(out)
    assert keep["layers"] == [0, 2, 3] and "4" in keep["heads"] and not any(".layers.3." in k for k in mtp_tensors(out))
    assert plan.new_config.get("text_config", plan.new_config)["mtp_num_hidden_layers"] == 1
    if variant != "dense":
        assert len(keep["experts"]["4"]) == 3
        assert mtp_tensors(out)["mtp.layers.0.mlp.gate.weight"].shape == (3, 48)
    _check_mtp_slices(src, out, keep)
    if not variant.startswith("vlm"):
        load(out)  # mtp.* present: no missing and no unexpected keys (transformers ignores mtp.* silently)
    src_swapped, out_swapped = mtp_as_layer(src, tmp_path / "src_as_layer", 3), mtp_as_layer(out, tmp_path / "out_as_layer", 2)
    keep = swapped_keep(keep, 3, "4")
    if variant.startswith("vlm"):
        got, expected = vlm_logits(load_vlm(out_swapped), False), vlm_logits(masked_moe_vlm(src_swapped, keep), False)
    else:
        ids = sample_ids()
        reference = masked_qwen3_5(src_swapped, keep) if variant == "dense" else masked_reference(src_swapped, keep)
        got, expected = logits(load(out_swapped), ids), logits(reference, ids)
    assert (got - expected).abs().max() < 5e-5, (got - expected).abs().max()


def test_tied_mtp_norm_divides_out_the_embedding_factor(tmp_path):
    """Qwen3.5's small dense models tie the lm_head to the embedding, which carries c: mtp.norm,
    which feeds that lm_head, is divided by c twice (as model.norm)."""
    src = add_mtp(build_dense(tmp_path / "src", "qwen3_5", num_hidden_layers=5, layer_types=LAYER_TYPES, tie_word_embeddings=True))
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 48}))
    _check_mtp_slices(src, tmp_path / "out", keep_of(tmp_path / "out"), tied=True)
    swapped = mtp_as_layer(tmp_path / "out", tmp_path / "out_as_layer", 3)
    ids = sample_ids()
    expected = logits(masked_qwen3_5(mtp_as_layer(src, tmp_path / "src_as_layer", 3), swapped_keep(keep_of(tmp_path / "out"), 3, "4")), ids)
    assert (logits(load(swapped), ids) - expected).abs().max() < 5e-5


def test_magnitude_scores_the_mtp_layer_itself(ckpts):
    """Magnitude ranks the MTP layer's heads by its own weights, not by zeros."""
    plan = ps.plan(ckpts["dense"], ps.PruneSpec(sizes={"num_attention_heads": 4}, method="magnitude"))  # one per kv group
    a = mtp_tensors(ckpts["dense"])
    o_proj = a["mtp.layers.0.self_attn.o_proj.weight"].numpy().reshape(64, 8, 8)
    q = a["mtp.layers.0.self_attn.q_proj.weight"].numpy().reshape(8, 16, 64)  # per head [q; gate]
    norms = (o_proj**2).sum(axis=(0, 2)) + (q**2).sum(axis=(1, 2))
    assert plan.keep["heads"]["4"] == [g * 2 + int(np.argmax(norms[g * 2 : g * 2 + 2])) for g in range(4)]


def test_mtp_tensors_beyond_the_configured_count_are_refused(ckpts, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ckpts["moe"], src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mtp_num_hidden_layers": 0}))
    with pytest.raises(ArchitectureError, match="extra layer 0 but config.json gives mtp_num_hidden_layers = 0"):
        ps.plan(src, ps.PruneSpec())


def test_dense_vlm_mtp_follows_the_text_table(tmp_path):
    """Qwen3.5 dense VLMs (Qwen3.5-27B ...) hold the same mtp.*: the VLM table inherits it with the
    language model's names under model.language_model."""
    src = add_mtp(build_vlm(tmp_path / "src", "qwen3_5"))  # layers [linear, full, linear] + MTP
    assert ps.run(src, tmp_path / "same", ps.PruneSpec()).arch.family == "qwen3_5_vlm"
    assert _same_tensors(src, tmp_path / "same")
    sizes = dict(MTP_CUT, intermediate_size=64)
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=sizes, drop_layers=(2,)))
    keep = keep_of(tmp_path / "out")
    assert set(keep["ffn"]) == {"0", "1", "3"}  # scope 3: the MTP layer after 3 decoder layers
    _check_mtp_slices(src, tmp_path / "out", keep)
    keep = swapped_keep(keep, 1, "3")
    got = vlm_logits(load_vlm(mtp_as_layer(tmp_path / "out", tmp_path / "out_as_layer", 1)), True)
    expected = vlm_logits(masked_vlm(mtp_as_layer(src, tmp_path / "src_as_layer", 1), keep), True)
    assert (got - expected).abs().max() < 5e-5


def test_keep_file_with_the_mtp_scope_reproduces_the_bytes(ckpts, tmp_path):
    src = ckpts["moe_fused"]
    ps.run(src, tmp_path / "a", ps.PruneSpec(sizes=MOE_MTP_CUT, drop_layers=(1,), seed=3))
    keep = keep_of(tmp_path / "a")
    ps.run(src, tmp_path / "b", ps.PruneSpec(keep=keep))
    assert _same_tensors(tmp_path / "a", tmp_path / "b")
    del keep["heads"]["4"]
    with pytest.raises(SpecError, match="exactly these scopes"):
        ps.plan(src, ps.PruneSpec(keep=keep))
