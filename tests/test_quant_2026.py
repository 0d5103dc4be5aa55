"""FP8 block-quantized checkpoints (DeepSeek-V3 style `weight_scale_inv`, 16x16 blocks here).

The oracle is transformers itself: it loads our FP8 (or partly dequantized) output with no
missing or unexpected keys (dequantizing on CPU), and its logits equal the masked original
loaded the same way from the quantized source.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import prune_surgery as ps
from models import keep_of, logits, sample_ids, tree_digest
from models_moe2026 import build, dequantize_fp8, dequantize_mxfp4, load, masked_reference, mtp_tensors, quantize_fp8, quantize_mxfp4

CUT = {"hidden_size": 48, "num_attention_heads": 4, "moe_intermediate_size": 24}


@pytest.fixture(scope="module")
def fp8(tmp_path_factory):
    return quantize_fp8(build(tmp_path_factory.mktemp("fp8") / "deepseek_v3", "deepseek_v3"))


def _check(src, out, dequantize=dequantize_fp8, atol_as_is=2e-3):
    """Exact in float32 against the dequantized reference; transformers also loads the output as
    is (dequantizing FP8 / MXFP4 on CPU through bf16, hence the looser `atol_as_is`)."""
    ids = sample_ids()
    plain_src, plain_out = (dequantize(f, out.parent / f"{out.name}_{tag}_f32") for f, tag in ((src, "src"), (out, "out")))
    expected = logits(masked_reference(plain_src, keep_of(out)), ids)
    got = logits(load(plain_out), ids)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()
    as_is = logits(load(out), ids)
    assert torch.allclose(as_is, expected, atol=atol_as_is), (as_is - expected).abs().max()


def _fp8_names(folder):
    return {k for k, v in mtp_tensors(folder).items() if v.dtype == torch.float8_e4m3fn}


def test_keep_everything_is_byte_identical(fp8, tmp_path):
    plan = ps.run(fp8, tmp_path / "out", ps.PruneSpec())
    a, b = mtp_tensors(fp8), mtp_tensors(tmp_path / "out")
    assert set(a) == set(b) and all(a[k].view(torch.uint8).numpy().tobytes() == b[k].view(torch.uint8).numpy().tobytes() for k in a)
    assert plan.new_config["quantization_config"] == plan.config["quantization_config"]


def test_whole_block_cuts_keep_fp8(fp8, tmp_path):
    """Experts, layers and hidden channels kept in whole 16-blocks: codes and scales sliced exactly."""
    hidden = list(range(16)) + list(range(32, 64))
    plan = ps.run(fp8, tmp_path / "out", ps.PruneSpec(sizes={"n_routed_experts": 4}, drop_layers=(2,), keep={"hidden": hidden}))
    assert not any("FP8" in w for w in plan.warnings)
    a, b = mtp_tensors(fp8), mtp_tensors(tmp_path / "out")
    projs = [k for k in b if k.endswith("proj.weight")]
    assert projs and all(b[k].dtype == torch.float8_e4m3fn and k + "_scale_inv" in b for k in projs)
    name = "model.layers.1.self_attn.q_a_proj.weight_scale_inv"  # (2, 4) blocks; hidden keeps blocks 0, 2, 3
    np.testing.assert_array_equal(b[name].numpy(), a[name].numpy()[:, [0, 2, 3]])
    expert = keep_of(tmp_path / "out")["experts"]["1"][3]
    down = "model.layers.1.mlp.experts.{}.down_proj.weight"
    np.testing.assert_array_equal(b[down.format(3)].view(torch.uint8).numpy(), a[down.format(expert)].view(torch.uint8).numpy()[hidden])
    np.testing.assert_allclose(b[down.format(3) + "_scale_inv"].numpy(),  # writes the residual stream: scales times c
                               a[down.format(expert) + "_scale_inv"].numpy()[[0, 2, 3]] * np.float32(np.sqrt(48 / 64)), rtol=1e-6)
    assert "modules_to_not_convert" not in plan.new_config["quantization_config"]
    _check(fp8, tmp_path / "out")


def test_other_cuts_dequantize_the_affected_tensors(fp8, tmp_path):
    plan = ps.run(fp8, tmp_path / "out", ps.PruneSpec(sizes=CUT))
    note = next(w for w in plan.warnings if "FP8 tensors are written as F32" in w)
    assert "whole 16x16 blocks" in note and "no tensor stays" not in note
    skip = plan.new_config["quantization_config"]["modules_to_not_convert"]
    assert "model.layers.1.mlp.experts" in skip and "model.layers.1.self_attn.q_b_proj" in skip
    kinds = {t.out.name: t.out.dtype for t in plan.tensors}
    assert kinds["model.layers.1.self_attn.q_b_proj.weight"] == "F32"
    assert "model.layers.1.self_attn.q_b_proj.weight_scale_inv" not in kinds
    _check(fp8, tmp_path / "out")


def test_dequantize_writes_no_fp8(fp8, tmp_path):
    plan = ps.run(fp8, tmp_path / "out", ps.PruneSpec(sizes={"n_routed_experts": 4}, dequantize=True))
    assert "quantization_config" not in plan.new_config and not _fp8_names(tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    _check(fp8, tmp_path / "out")


def test_unknown_quantization_is_refused(fp8, tmp_path):
    src = tmp_path / "src"
    subprocess.run(["cp", "-r", str(fp8), str(src)], check=True)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (src / "config.json").write_text(json.dumps(config))
    before = tree_digest(src)
    done = subprocess.run([sys.executable, "-m", "prune_surgery", "run", str(src), str(tmp_path / "out"), "--num-experts", "4"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "quant_method 'awq'" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() and tree_digest(src) == before


@pytest.fixture(scope="module")
def mxfp4(tmp_path_factory):
    root = tmp_path_factory.mktemp("mxfp4")
    return quantize_mxfp4(build(root / "gpt_oss", "gpt_oss"), root / "gpt_oss_mxfp4")


def _check_mx(src, out):
    _check(src, out, dequantize_mxfp4, atol_as_is=2e-2)


def test_mxfp4_keep_everything_is_byte_identical(mxfp4, tmp_path):
    ps.run(mxfp4, tmp_path / "out", ps.PruneSpec())
    a, b = mtp_tensors(mxfp4), mtp_tensors(tmp_path / "out")
    assert set(a) == set(b) and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)


def test_mxfp4_whole_block_cuts_keep_the_format(mxfp4, tmp_path):
    """Experts, layers and heads: bytes and scales sliced (a hidden cut rescales down_proj: below)."""
    plan = ps.run(mxfp4, tmp_path / "out", ps.PruneSpec(sizes={"num_local_experts": 2, "num_attention_heads": 4}, drop_layers=(1,)))
    assert not any("MXFP4" in w for w in plan.warnings)
    a, b, keep = mtp_tensors(mxfp4), mtp_tensors(tmp_path / "out"), keep_of(tmp_path / "out")
    experts = keep["experts"]["2"]
    p, q = "model.layers.1.mlp.experts.", "model.layers.2.mlp.experts."
    for name in ("gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales"):
        np.testing.assert_array_equal(b[p + name].numpy(), a[q + name].numpy()[experts])
    assert plan.new_config["quantization_config"] == plan.config["quantization_config"]
    _check_mx(mxfp4, tmp_path / "out")


def test_mxfp4_hidden_cuts_dequantize_the_experts(mxfp4, tmp_path):
    """A whole-block hidden cut still rescales down_proj by c = sqrt(d'/d) (it writes the residual
    stream); E8M0 scales are powers of two, so the experts are written dequantized, and the plan says why."""
    plan = ps.run(mxfp4, tmp_path / "out", ps.PruneSpec(keep={"hidden": list(range(32))}))
    assert any("MXFP4 tensors are written as" in w and "power-of-two scales" in w for w in plan.warnings), plan.warnings
    b = mtp_tensors(tmp_path / "out")
    assert "model.layers.1.mlp.experts.down_proj" in b and not any(k.endswith("_blocks") for k in b)
    _check_mx(mxfp4, tmp_path / "out")


def test_mxfp4_other_cuts_dequantize_and_transpose(mxfp4, tmp_path):
    plan = ps.run(mxfp4, tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 48, "intermediate_size": 20, "num_local_experts": 3}))
    assert any("MXFP4 tensors are written as F32" in w and "quantization_config is dropped" in w for w in plan.warnings)
    b = mtp_tensors(tmp_path / "out")
    assert list(b["model.layers.0.mlp.experts.gate_up_proj"].shape) == [3, 48, 40]
    assert list(b["model.layers.0.mlp.experts.down_proj"].shape) == [3, 20, 48]
    assert not any(k.endswith(("_blocks", "_scales")) for k in b) and "quantization_config" not in plan.new_config
    ps.run(mxfp4, tmp_path / "small", ps.PruneSpec(sizes={"hidden_size": 48, "intermediate_size": 20, "num_local_experts": 3}),
           block_bytes=1000)  # blocks of 32 input columns: two per expert of gate_up_proj
    assert all(b[k].numpy().tobytes() == v.numpy().tobytes() for k, v in mtp_tensors(tmp_path / "small").items())
    _check_mx(mxfp4, tmp_path / "out")


def test_rescaled_fp8_weights_keep_their_codes(tmp_path):
    """Under a whole-block hidden cut, what writes the residual stream (o_proj, expert and shared
    down projections) is scaled by c = sqrt(d'/d) through its block scales, the FP8 codes
    unchanged; q/k (read from the normed stream) are only sliced."""
    src = quantize_fp8(build(tmp_path / "glm", "glm4_moe"))
    hidden = list(range(16)) + list(range(32, 64))
    plan = ps.run(src, tmp_path / "out", ps.PruneSpec(keep={"hidden": hidden}))
    assert not any("FP8" in w for w in plan.warnings)
    a, b = mtp_tensors(src), mtp_tensors(tmp_path / "out")
    c = np.float32(np.sqrt(48 / 64))
    for name in ("self_attn.o_proj.weight", "mlp.experts.0.down_proj.weight", "mlp.shared_experts.down_proj.weight"):
        w = f"model.layers.1.{name}"
        assert b[w].dtype == torch.float8_e4m3fn, w
        np.testing.assert_array_equal(b[w].view(torch.uint8).numpy(), a[w].view(torch.uint8).numpy()[hidden])
        np.testing.assert_allclose(b[w + "_scale_inv"].numpy(), a[w + "_scale_inv"].numpy()[[0, 2, 3]] * c, rtol=1e-6)
    q = "model.layers.1.self_attn.q_proj.weight"
    np.testing.assert_array_equal(b[q].view(torch.uint8).numpy(), a[q].view(torch.uint8).numpy()[:, hidden])
    np.testing.assert_array_equal(b[q + "_scale_inv"].numpy(), a[q + "_scale_inv"].numpy()[:, [0, 2, 3]])
    _check(src, tmp_path / "out")


def test_torch_backend_writes_the_same_bytes(mxfp4, fp8, tmp_path):
    """Quantized and 3-D paths give identical bytes with the torch backend (--device cpu)."""
    for name, src, sizes in (("mx", mxfp4, {"num_local_experts": 2}), ("mx_deq", mxfp4, {"hidden_size": 48}), ("fp8", fp8, CUT)):
        ps.run(src, tmp_path / f"{name}_np", ps.PruneSpec(sizes=sizes))
        ps.run(src, tmp_path / f"{name}_torch", ps.PruneSpec(sizes=sizes), device="cpu", block_bytes=1000)
        a, b = mtp_tensors(tmp_path / f"{name}_np"), mtp_tensors(tmp_path / f"{name}_torch")
        assert set(a) == set(b) and all(a[k].view(torch.uint8).numpy().tobytes() == b[k].view(torch.uint8).numpy().tobytes() for k in a), name
