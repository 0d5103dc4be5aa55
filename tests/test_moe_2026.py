"""Oracles for today's MoE tables: glm4_moe, deepseek_v3 (MLA; glm4_moe_lite reuses it).

transformers loads every output with no missing keys (unexpected only for MTP layers, which
it does not model); logits equal the masked original (models_moe2026.masked_reference) in
float32; keep-everything is byte-identical; experts stay balanced over routing groups; MTP
layers are pruned with selections of their own and renumbered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

import prune_surgery as ps
from models import keep_of, logits, sample_ids
from models_families import build as build_family
from models_moe2026 import add_mtp, build, fuse_experts, load, masked_reference, mtp_tensors
from prune_surgery.errors import SpecError

VARIANTS = ("glm4_moe", "glm4_moe_noqk", "deepseek_v3", "glm4_moe_lite")
CUT = {"hidden_size": 48, "num_attention_heads": 4, "n_routed_experts": 4, "moe_intermediate_size": 24, "intermediate_size": 64}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe2026")
    made = {v: build(root / v, v) for v in VARIANTS}
    made["gpt_oss"] = build(root / "gpt_oss", "gpt_oss")
    made["qwen3_5_moe"] = build(root / "qwen3_5_moe", "qwen3_5_moe")
    made["qwen3_5_moe_fused"] = fuse_experts(made["qwen3_5_moe"], root / "qwen3_5_moe_fused")
    made["deepseek_v3_mtp"] = add_mtp(build(root / "deepseek_v3_mtp", "deepseek_v3", layers=5))
    return made


def _check(src, out, mtp_as_layer=False, atol=2e-5):
    ids = sample_ids()
    got = logits(load(out, mtp_as_layer), ids)
    expected = logits(masked_reference(src, keep_of(out), mtp_as_layer), ids)
    assert torch.allclose(got, expected, atol=atol, rtol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(got, logits(load(src, mtp_as_layer), ids), atol=1e-4)


@pytest.mark.parametrize("variant", sorted(VARIANTS) + ["deepseek_v3_mtp", "gpt_oss", "qwen3_5_moe", "qwen3_5_moe_fused"])
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
    # the MTP layer's stream starts at eh_proj and its embedding: both write it (times c); the norms
    # reading streams divide by c; the head behind shared_head.norm is only sliced
    c = np.float32(np.sqrt(48 / 64))
    eh = a["model.layers.4.eh_proj.weight"]
    np.testing.assert_allclose(b["model.layers.3.eh_proj.weight"], eh[hidden][:, hidden + [64 + h for h in hidden]] * c, rtol=1e-6)
    np.testing.assert_allclose(b["model.layers.3.embed_tokens.weight"], a["model.layers.4.embed_tokens.weight"][:, hidden] * c, rtol=1e-6)
    np.testing.assert_array_equal(b["model.layers.3.shared_head.head.weight"], a["model.layers.4.shared_head.head.weight"][:, hidden])
    for norm in ("enorm", "hnorm", "shared_head.norm"):
        np.testing.assert_allclose(b[f"model.layers.3.{norm}.weight"], a[f"model.layers.4.{norm}.weight"][hidden] / c, rtol=1e-6)
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


def test_shared_and_routed_expert_widths_share_one_key(ckpts):
    """moe_intermediate_size sizes the routed and the shared experts: a keep file must agree."""
    src = ckpts["glm4_moe"]
    keep = {"shared_ffn": {str(layer): list(range(20)) for layer in range(5)}}
    with pytest.raises(SpecError, match="both sized by moe_intermediate_size"):
        ps.plan(src, ps.PruneSpec(keep=keep))
    plan = ps.plan(src, ps.PruneSpec(sizes={"moe_intermediate_size": 20}))
    assert plan.new_config["moe_intermediate_size"] == 20
    assert {t.out.shape for t in plan.tensors if t.out.name.endswith("shared_experts.up_proj.weight")} == {(20, 64)}


def test_hidden_rule_scales_stream_writers_and_leaves_q_k_alone(ckpts):
    """Every eps is kept and the residual stream is scaled by c = sqrt(d'/d): o_proj and every
    down projection (dense, routed, shared) get c, the norms reading the stream 1/c, and q/k are
    untouched with or without q_norm/k_norm (their inputs are the unchanged normed stream)."""
    spec = ps.PruneSpec(sizes={"hidden_size": 48})
    c = np.sqrt(48 / 64)
    for src in ("glm4_moe", "glm4_moe_noqk"):
        rescale = {t.out.name: t.rescale for t in ps.plan(ckpts[src], spec).tensors}
        for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate.weight"):
            assert rescale["model.layers.1." + name] is None, (src, name)
        for name in ("self_attn.o_proj.weight", "mlp.experts.0.down_proj.weight", "mlp.shared_experts.down_proj.weight"):
            assert rescale["model.layers.1." + name] == pytest.approx(c), (src, name)
        assert rescale["model.layers.0.mlp.down_proj.weight"] == pytest.approx(c)  # the dense prefix
        assert rescale["model.layers.1.input_layernorm.weight"] == pytest.approx(1 / c)


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


OSS_CUT = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 3, "intermediate_size": 20}


@pytest.mark.parametrize("sizes", [OSS_CUT, {"num_local_experts": 2}, {"intermediate_size": 12, "num_attention_heads": 4}])
def test_gpt_oss_matches_masked_original(ckpts, tmp_path, sizes):
    src = ckpts["gpt_oss"]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=sizes, drop_layers=(1,)))
    assert plan.new_config["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    _check(src, tmp_path / "out")


def test_gpt_oss_3d_experts_slice_every_axis_in_line_blocks(ckpts, tmp_path):
    """Interleaved gate/up columns (2i, 2i+1) follow channel i; expert, row and column cuts equal
    numpy's; blocks smaller than one expert (merged (expert, row) lines) give the same bytes."""
    src = ckpts["gpt_oss"]
    ps.run(src, tmp_path / "a", ps.PruneSpec(sizes=OSS_CUT))
    ps.run(src, tmp_path / "b", ps.PruneSpec(sizes=OSS_CUT), block_bytes=1000)  # one expert is 10 KB
    keep, a, b, c = keep_of(tmp_path / "a"), mtp_tensors(src), mtp_tensors(tmp_path / "a"), mtp_tensors(tmp_path / "b")
    assert all(b[k].numpy().tobytes() == c[k].numpy().tobytes() for k in b)
    experts, hidden, ffn = keep["experts"]["2"], keep["hidden"], keep["ffn"]["2"]
    cols = [2 * i + j for i in ffn for j in (0, 1)]
    p = "model.layers.2.mlp.experts."
    np.testing.assert_array_equal(b[p + "gate_up_proj"], a[p + "gate_up_proj"][experts][:, hidden][:, :, cols])
    c = np.float32(np.sqrt(48 / 64))  # down_proj writes the residual stream (hidden 64 -> 48)
    np.testing.assert_allclose(b[p + "down_proj"], a[p + "down_proj"][experts][:, ffn][:, :, hidden] * c, rtol=1e-6)
    np.testing.assert_allclose(b[p + "down_proj_bias"], a[p + "down_proj_bias"][experts][:, hidden] * c, rtol=1e-6)
    np.testing.assert_array_equal(b[p + "gate_up_proj_bias"], a[p + "gate_up_proj_bias"][experts][:, cols])
    np.testing.assert_array_equal(b["model.layers.2.self_attn.sinks"], a["model.layers.2.self_attn.sinks"][keep["heads"]["2"]])


QWEN35_CUTS = [
    {"num_attention_heads": 4, "num_key_value_heads": 2},
    {"num_experts": 3, "moe_intermediate_size": 20, "shared_expert_intermediate_size": 24},
    {"linear_num_key_heads": 1, "linear_num_value_heads": 2},
]


@pytest.mark.parametrize("layout", ["qwen3_5_moe", "qwen3_5_moe_fused"])
@pytest.mark.parametrize("cut", range(len(QWEN35_CUTS)))
def test_qwen3_5_moe_matches_masked_original_in_both_layouts(ckpts, tmp_path, layout, cut):
    src = ckpts[layout]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=QWEN35_CUTS[cut], drop_layers=(1,)))
    names = set(mtp_tensors(tmp_path / "out"))
    fused = "model.layers.0.mlp.experts.gate_up_proj" in names
    assert fused == layout.endswith("fused") and fused != ("model.layers.0.mlp.experts.0.gate_proj.weight" in names)
    assert plan.new_config["layer_types"] == ["linear_attention", "linear_attention", "full_attention"]
    _check(src, tmp_path / "out")


@pytest.mark.parametrize("layout", ["qwen3_5_moe", "qwen3_5_moe_fused"])
def test_qwen3_5_moe_hidden_pruning_is_exact(ckpts, tmp_path, layout):
    """rms_norm_eps is shared with q/k norms and the gated DeltaNet norm; every eps is kept and the
    stream scaled (out_proj, o_proj, routed and shared down projections times c): exact, no warning."""
    src = ckpts[layout]
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 48}))
    assert not any("hidden" in w for w in plan.warnings), plan.warnings
    assert plan.new_config["rms_norm_eps"] == plan.config["rms_norm_eps"]
    _check(src, tmp_path / "out")


def _sparse_checkpoint(path, config, shapes):
    """A safetensors checkpoint ({name: (shape, dtype)}) whose data section is a hole (sparse file)."""
    path.mkdir()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (shape, dtype) in shapes.items():
        nbytes = int(np.prod(shape)) * (2 if dtype == "BF16" else 1)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _gpt_oss_120b_layer(path, mxfp4):
    """One gpt-oss-120b-shaped layer: experts bf16 (gate_up_proj (128, 2880, 5760): 4.2 GB) or,
    as on the Hub, MXFP4 (gate_up_proj_blocks (128, 5760, 90, 16) + scales)."""
    h, ffn, experts, heads, kv, hd = 2880, 2880, 128, 64, 8, 64
    p = "model.layers.0."
    bf16 = {"model.embed_tokens.weight": (1024, h), "lm_head.weight": (1024, h), "model.norm.weight": (h,),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (heads * hd, h), p + "self_attn.q_proj.bias": (heads * hd,),
            p + "self_attn.k_proj.weight": (kv * hd, h), p + "self_attn.k_proj.bias": (kv * hd,),
            p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.v_proj.bias": (kv * hd,),
            p + "self_attn.o_proj.weight": (h, heads * hd), p + "self_attn.o_proj.bias": (h,), p + "self_attn.sinks": (heads,),
            p + "mlp.router.weight": (experts, h), p + "mlp.router.bias": (experts,),
            p + "mlp.experts.gate_up_proj_bias": (experts, 2 * ffn), p + "mlp.experts.down_proj_bias": (experts, h)}
    shapes = {k: (v, "BF16") for k, v in bf16.items()}
    config = {"model_type": "gpt_oss", "hidden_size": h, "intermediate_size": ffn, "num_local_experts": experts,
              "num_experts_per_tok": 4, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
              "num_hidden_layers": 1, "vocab_size": 1024, "rms_norm_eps": 1e-5, "layer_types": ["full_attention"]}
    if mxfp4:
        config["quantization_config"] = {"quant_method": "mxfp4"}
        for name, rows, cols in (("gate_up_proj", 2 * ffn, h), ("down_proj", h, ffn)):
            shapes[p + f"mlp.experts.{name}_blocks"] = ((experts, rows, cols // 32, 16), "U8")
            shapes[p + f"mlp.experts.{name}_scales"] = ((experts, rows, cols // 32), "U8")
    else:
        shapes[p + "mlp.experts.gate_up_proj"] = ((experts, h, 2 * ffn), "BF16")
        shapes[p + "mlp.experts.down_proj"] = ((experts, ffn, h), "BF16")
    return _sparse_checkpoint(path, config, shapes)


@pytest.mark.parametrize("mxfp4", [False, True], ids=["bf16", "mxfp4"])
def test_gpt_oss_120b_shaped_layer_prunes_in_bounded_memory(tmp_path, mxfp4):
    """Every axis of the 3-D expert tensors is cut (MXFP4: dequantized and transposed on write)
    and the run's peak RSS stays under 1 GiB."""
    src = _gpt_oss_120b_layer(tmp_path / "src", mxfp4)
    # VmHWM, not ru_maxrss: Linux starts a child's ru_maxrss at its parent's high-water mark (a
    # 2 GiB pytest process made this test fail in full runs only); VmHWM belongs to the new process image
    script = ("import re, sys, prune_surgery as ps\n"
              "plan = ps.run(sys.argv[1], sys.argv[2], ps.PruneSpec(sizes={'num_local_experts': 16, 'intermediate_size': 1440, 'hidden_size': 2048}))\n"
              "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
              "print(hwm, plan.peak_bytes)\n")
    done = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / "out")], capture_output=True, text=True, check=True)
    rss, peak = (int(x) for x in done.stdout.split()[-2:])
    print(f"gpt-oss-120b-shaped layer ({'mxfp4' if mxfp4 else 'bf16'}): peak RSS {rss / 2**20:.0f} MiB (plan budget {peak / 2**20:.0f} MiB)")
    assert rss < 2**30
    p = "model.layers.0.mlp.experts."
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "np") as f:
        assert list(f.get_slice(p + "gate_up_proj").get_shape()) == [16, 2048, 2880]
        assert list(f.get_slice(p + "down_proj").get_shape()) == [16, 1440, 2048]


def test_cli_num_experts_reaches_the_routed_experts(ckpts, tmp_path):
    from typer.testing import CliRunner

    from prune_surgery.cli import app

    done = CliRunner().invoke(app, ["plan", str(ckpts["deepseek_v3"]), "--num-experts", "4", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["new_config"]["n_routed_experts"] == 4


def test_mla_latent_and_rope_widths_are_refused(ckpts):
    for key in ("qk_rope_head_dim", "kv_lora_rank", "qk_nope_head_dim"):
        with pytest.raises(SpecError, match=f"{key} cannot be pruned"):
            ps.plan(ckpts["deepseek_v3"], ps.PruneSpec(sizes={key: 2}))


def test_magnitude_experts_stay_group_balanced(ckpts, tmp_path):
    src = ckpts["deepseek_v3"]
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"n_routed_experts": 4}, method="magnitude"))
    for kept in keep_of(tmp_path / "out")["experts"].values():
        assert [sum(1 for e in kept if e // 4 == g) for g in range(2)] == [2, 2]
    _check(src, tmp_path / "out")
