"""`run --refit` beyond plain [out, in] weights: gpt-oss's [experts, in, out] stacks (applied as
``x @ W[e]``) and per-expert gate/up tensors that transformers fuses into one parameter (mixtral)
are each the closed-form ridge optimum over the tokens routed to that expert in the dense model;
GPT-2's Conv1D weights (stored [in, out]) are the ridge optimum over every token."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from models_moe2026 import load as load_moe
from models_moe2026 import mtp_tensors

import prune_surgery as ps
from models import load
from prune_surgery.calibrate.data import calibration_windows, load_tokenizer
from prune_surgery.refit.solve import DEFAULT_ALPHA

SAMPLES, SEQ = 8, 24


def _spec(text, refit="oneshot", **sizes):
    return ps.spec_from_dict({"method": "activation", "calibration": [str(text[0])], "calibration_samples": SAMPLES,
                              "calibration_seq_len": SEQ, "refit": refit, **sizes})


def _tensor(folder, name):
    return mtp_tensors(folder)[name].double()


def _ridge(w, x, keep):
    """argmin_V sum_t ||W x_t - V x_t[K]||^2 + lambda ||V||^2, lambda = alpha * mean diag C[K, K] (W: out x in)."""
    c = x.T @ x
    ckk = c[keep][:, keep]
    return w @ c[:, keep] @ torch.linalg.inv(ckk + DEFAULT_ALPHA * ckk.diagonal().mean() * torch.eye(len(keep), dtype=torch.float64))


def _routed(src, text, experts_of):
    """The dense model, and per layer the (experts input, top-k index) of the calibration windows."""
    ids = torch.from_numpy(calibration_windows(load_tokenizer(src), [text[0]], SAMPLES, SEQ).ids)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    seen = {}
    for i, layer in enumerate(model.model.layers):
        experts_of(layer).register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, (a[0], a[1])))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    return model, seen


def _close(got, expected):
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6), (got - expected).abs().max()


def test_gpt_oss_expert_stacks_are_the_ridge_optimum(tiny, text, tmp_path):
    src, out = tiny["gpt_oss"], tmp_path / "out"
    plan = ps.run(src, out, _spec(text, hidden_size=48, intermediate_size=20, num_local_experts=3))
    record = json.loads((out / "prune_surgery.json").read_text())["refit"]
    model, seen = _routed(src, text, lambda layer: layer.mlp.experts)
    hidden = torch.tensor(plan.keep["hidden"])
    rescale = {t.source.name: t.rescale or 1.0 for t in plan.tensors}
    for i, layer in enumerate(model.model.layers):
        ex, (states, index) = layer.mlp.experts, seen[i]
        ffn = torch.tensor(plan.keep["ffn"][str(i)])
        cols = torch.stack([2 * ffn, 2 * ffn + 1], 1).reshape(-1)  # gate/up interleaved: channel i owns 2i, 2i+1
        prefix = f"model.layers.{i}.mlp.experts."
        gate_up, down = _tensor(out, prefix + "gate_up_proj"), _tensor(out, prefix + "down_proj")
        assert record["lambda"][prefix + "gate_up_proj"] == record["lambda"][prefix + "down_proj"] == DEFAULT_ALPHA
        for pos, e in enumerate(plan.keep["experts"][str(i)]):
            x = states[(index == e).any(-1)]
            with torch.no_grad():
                act = ex._apply_gate(x @ ex.gate_up_proj[e] + ex.gate_up_proj_bias[e])  # what down_proj reads
            w_gu, w_down = ex.gate_up_proj[e].detach().double().T, ex.down_proj[e].detach().double().T  # [out, in]
            plain = w_down[hidden][:, ffn].T * rescale[prefix + "down_proj"]
            if x.shape[0] == 0:  # no token was routed to this expert: nothing to fit, plain slicing
                _close(down[pos], plain)
                continue
            _close(gate_up[pos], _ridge(w_gu[cols], x.double(), hidden).T * rescale[prefix + "gate_up_proj"])
            _close(down[pos], _ridge(w_down[hidden], act.double(), ffn).T * rescale[prefix + "down_proj"])
            assert not torch.allclose(down[pos], plain, atol=1e-4)
    load_moe(out)  # transformers loads it with no missing or unexpected keys


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_fused_per_expert_gate_and_up_are_refit_each(tiny, text, tmp_path, mode):
    """w1 and w3 of each expert load into one gate_up_proj parameter; each is refit as itself."""
    src, out = tiny["mixtral"], tmp_path / "out"
    plan = ps.run(src, out, _spec(text, mode, hidden_size=48))
    record = json.loads((out / "prune_surgery.json").read_text())["refit"]
    assert record["mode"] == mode
    model, seen = _routed(src, text, lambda layer: layer.mlp.experts)
    hidden = torch.tensor(plan.keep["hidden"])
    states, index = seen[0]
    for e in range(4):
        x = states[(index == e).any(-1)].double()
        for w in ("w1", "w3"):
            name = f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight"
            assert record["lambda"][name] == DEFAULT_ALPHA
            _close(_tensor(out, name), _ridge(_tensor(src, name), x, hidden))
    load(out)
    assert np.isfinite([v for v in record["lambda"].values()]).all()


def test_conv1d_weights_stored_in_out_are_refit(tiny, text, tmp_path):
    src, out = tiny["gpt2"], tmp_path / "out"
    plan = ps.run(src, out, _spec(text, n_inner=160))
    record = json.loads((out / "prune_surgery.json").read_text())["refit"]
    ids = torch.from_numpy(calibration_windows(load_tokenizer(src), [text[0]], SAMPLES, SEQ).ids)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    seen = {}
    for i, block in enumerate(model.transformer.h):
        block.mlp.c_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for i, block in enumerate(model.transformer.h):
        name = f"transformer.h.{i}.mlp.c_proj.weight"
        keep = torch.tensor(plan.keep["ffn"][str(i)])
        w = block.mlp.c_proj.weight.detach().double()  # [ffn, hidden]: x @ W
        alpha = record["lambda"].get(name)
        if alpha is None:  # held-out error said plain slicing was better
            _close(_tensor(out, name), w[keep])
            continue
        c = seen[i].double().T @ seen[i].double()
        ckk = c[keep][:, keep]
        expected = (w.T @ c[:, keep] @ torch.linalg.inv(ckk + alpha * ckk.diagonal().mean() * torch.eye(len(keep), dtype=torch.float64))).T
        _close(_tensor(out, name), expected)
    assert any(n.endswith("mlp.c_proj.weight") for n in record["lambda"]), record["lambda"]
    load(out)


def test_conv1d_weights_are_refit_in_sequential_mode_too(tiny, text, tmp_path):
    """With hidden channels pruned the dense inputs of every Conv1D are paired with the pruned ones."""
    ps.run(tiny["gpt2"], tmp_path / "out", _spec(text, "sequential", n_embd=48, n_head=6, n_inner=160))
    record = json.loads((tmp_path / "out" / "prune_surgery.json").read_text())["refit"]
    assert record["mode"] == "sequential" and record["tensors"] == 4 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    load(tmp_path / "out")


@pytest.mark.parametrize("name, stored_in_out", [("llama", False), ("gpt2", True), ("gpt_oss", None)])
def test_plan_counts_each_weight_on_the_axis_the_engine_reads(tiny, name, stored_in_out):
    """The refit's peak is sized on each weight's input axis, which the plan reads from the table
    ([out, in] for Llama, [in, out] for GPT-2's Conv1D and gpt-oss's expert stacks, its routers [out, in])."""
    from prune_surgery.calibrate.readers import expert_space
    from prune_surgery.refit.memory import _input_axis

    plan = ps.plan(tiny[name], ps.PruneSpec())
    layer0 = [t for t in plan.tensors if len(t.source.shape) in (2, 3) and (".layers.0." in t.source.name or ".h.0." in t.source.name)]
    assert len(layer0) >= 4
    for t in layer0:
        in_out = len(t.source.shape) == 3 if stored_in_out is None else stored_in_out
        expected = None if t.source.name.endswith("_bias") else -2 if in_out else -1  # gpt-oss's [experts, n] biases
        assert _input_axis(plan, t, expert_space(plan.arch)) == expected, t.source.name
