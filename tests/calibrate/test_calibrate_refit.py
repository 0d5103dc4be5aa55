"""`run --refit`: the written readers are the least-squares optimum they claim; nothing else changes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

import prune_surgery as ps
from models import load
from prune_surgery.calibrate.data import calibration_windows, load_tokenizer

SAMPLES, SEQ = 10, 24


def _spec(text, **extra):
    return ps.spec_from_dict({"method": "activation", "calibration": [str(text[0])], "calibration_samples": SAMPLES,
                              "calibration_seq_len": SEQ, **extra})


def _tensor(folder, name):
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            if name in f.keys():
                return f.get_tensor(name).double()
    raise KeyError(name)


def test_oneshot_refit_is_the_ridge_optimum(tiny, text, tmp_path):
    src = tiny["llama"]
    out = tmp_path / "out"
    plan = ps.run(src, out, _spec(text, intermediate_size=48, refit="oneshot"))
    record = json.loads((out / "prune_surgery.json").read_text())["refit"]
    assert record["mode"] == "oneshot" and record["tensors"] == 4
    # the dense model's down_proj inputs over the same windows, from plain hooks on the whole model
    ids = torch.from_numpy(calibration_windows(load_tokenizer(src), [text[0]], SAMPLES, SEQ).ids)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    grams = {}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: grams.__setitem__(i, grams.get(i, 0) + a[0].reshape(-1, a[0].shape[-1]).double().T @ a[0].reshape(-1, a[0].shape[-1]).double()))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for i, layer in enumerate(model.model.layers):
        name = f"model.layers.{i}.mlp.down_proj.weight"
        alpha = record["lambda"].get(name)
        got = _tensor(out, name)
        keep = torch.tensor(plan.keep["ffn"][str(i)])
        w = layer.mlp.down_proj.weight.detach().double()
        if alpha is None:  # held-out error said plain slicing was better
            assert torch.equal(got, w[:, keep].float().double())
            continue
        c = grams[i]
        ckk = c[keep][:, keep]
        expected = w @ c[:, keep] @ torch.linalg.inv(ckk + alpha * ckk.diagonal().mean() * torch.eye(len(keep), dtype=torch.float64))
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6), (got - expected).abs().max()
        # and it reconstructs the dense output better than plain slicing on these tokens
        err = lambda v: float(
            torch.trace((w @ c @ w.T)) - 2 * torch.trace(v @ c[keep] @ w.T) + torch.trace(v @ ckk @ v.T))
        assert err(got) < err(w[:, keep])
    load(out)  # transformers loads it with no missing or unexpected keys


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_refit_keeps_shapes_and_loads(tiny, text, tmp_path, mode):
    src = tiny["qwen3"]
    spec = _spec(text, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, num_hidden_layers=3, refit=mode)
    ps.run(src, tmp_path / "refit", spec)
    ps.run(src, tmp_path / "plain", _spec(text, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=64, num_hidden_layers=3))
    plain, refit = load(tmp_path / "plain"), load(tmp_path / "refit")
    a, b = plain.state_dict(), refit.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.endswith(("proj.weight",)) for k in changed), changed
    record = json.loads((tmp_path / "refit" / "prune_surgery.json").read_text())["refit"]
    assert record["mode"] == mode and record["tensors"] == 3 * 7 and len(record["data_hash"]) == 64


def test_keep_everything_with_refit_is_byte_identical(tiny, text, tmp_path):
    src = tiny["llama"]
    plan = ps.run(src, tmp_path / "out", ps.spec_from_dict({"calibration": [str(text[0])], "refit": True}))
    assert all(t.identity for t in plan.tensors)
    for t in plan.tensors:
        assert torch.equal(_tensor(tmp_path / "out", t.out.name), _tensor(src, t.source.name))
    assert json.loads((tmp_path / "out" / "prune_surgery.json").read_text())["refit"]["tensors"] == 0


def test_refit_needs_calibration_data():
    with pytest.raises(ps.SpecError, match="--calibration"):
        ps.spec_from_dict({"intermediate_size": 48, "refit": "oneshot"})


def test_plan_states_the_refit_peak(tiny, text):
    plan = ps.plan(tiny["llama"], ps.spec_from_dict({"intermediate_size": 48, "calibration": [str(text[0])], "refit": "oneshot"}))
    assert plan.refit_peak_bytes > 2 * 96 * 48 * 8  # at least the two sums of each down_proj


def test_depth_by_ppl_drops_the_layer_transformers_misses_least(tiny, text):
    src = tiny["llama"]
    from prune_surgery.calibrate.depth import greedy_ppl_drop

    dropped = greedy_ppl_drop(src, [text[0]], 1, samples=4, seq_len=24)
    ids = torch.from_numpy(calibration_windows(load_tokenizer(src), [text[0]], 4, 24).ids)
    losses = []
    for skip in range(4):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
        model.model.layers = torch.nn.ModuleList(layer for i, layer in enumerate(model.model.layers) if i != skip)
        for new, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = new
        model.config.num_hidden_layers = 3
        with torch.no_grad():
            losses.append(float(model(input_ids=ids, labels=ids, use_cache=False).loss))
    assert dropped == [int(np.argmin(losses))], losses
    plan = ps.plan(src, ps.spec_from_dict({"num_hidden_layers": 3, "method": "activation", "calibration": [str(text[0])],
                                           "depth": "ppl", "calibration_samples": 4, "calibration_seq_len": 24}))
    assert sorted(set(range(4)) - set(plan.keep["layers"])) == dropped


def test_sequential_refit_at_unchanged_width_starts_as_oneshot(tiny, text, tmp_path):
    """Layer 0 sees the same stream in both models, so its refit is the one-shot one; later layers differ."""
    src = tiny["llama"]
    for mode in ("oneshot", "sequential"):
        ps.run(src, tmp_path / mode, _spec(text, intermediate_size=48, refit=mode))
    first = "model.layers.0.mlp.down_proj.weight"
    assert torch.allclose(_tensor(tmp_path / "oneshot", first), _tensor(tmp_path / "sequential", first), atol=1e-6)
    refit = [set(json.loads((tmp_path / m / "prune_surgery.json").read_text())["refit"]["lambda"]) for m in ("oneshot", "sequential")]
    later = sorted(n for n in refit[0] & refit[1] if n != first)
    assert later  # refit in both modes past layer 0
    assert any(not torch.allclose(_tensor(tmp_path / "oneshot", n), _tensor(tmp_path / "sequential", n), atol=1e-6) for n in later)
    load(tmp_path / "sequential")


def test_bare_refit_and_depth_take_the_measured_defaults(tiny, text):
    from prune_surgery.cli import _bare_refit
    from prune_surgery.spec import DEFAULT_DEPTH, DEFAULT_REFIT

    assert _spec(text, refit=True).refit == DEFAULT_REFIT
    assert _bare_refit(["prune-surgery", "run", "S", "O", "--refit", "--calibration", "t"])[5] == DEFAULT_REFIT
    assert _bare_refit(["prune-surgery", "run", "S", "O", "--refit", "sequential"])[5] == "sequential"
    src = tiny["llama"]
    default = ps.plan(src, _spec(text, num_hidden_layers=2))
    chosen = ps.plan(src, _spec(text, num_hidden_layers=2, depth=DEFAULT_DEPTH))
    assert default.keep["layers"] == chosen.keep["layers"]


def test_plan_warns_that_sequential_refit_hurts_a_hidden_cut(tiny, text):
    """The bench measured sequential refit worse than none on hidden cuts: the plan says so, one-shot is not flagged."""
    from prune_surgery.plan import SEQUENTIAL_HIDDEN_WARNING

    src = tiny["qwen3"]
    assert ps.plan(src, _spec(text, hidden_size=48, refit="sequential")).warnings.count(SEQUENTIAL_HIDDEN_WARNING) == 1
    assert SEQUENTIAL_HIDDEN_WARNING not in ps.plan(src, _spec(text, hidden_size=48, refit="oneshot")).warnings
    assert SEQUENTIAL_HIDDEN_WARNING not in ps.plan(src, _spec(text, intermediate_size=64, refit="sequential")).warnings


def test_a_refit_that_does_not_fit_in_memory_is_refused_by_plan(tiny, text, tmp_path):
    """The sums of the calibration stream alone exceed any machine: one line, exit 2, before anything runs."""
    from clitools import assert_clean_failure, cli

    src, out = tiny["llama"], tmp_path / "out"
    args = ["--intermediate-size", "48", "--method", "magnitude", "--calibration", str(text[0]), "--refit",
            "--calibration-samples", "100000000"]
    assert_clean_failure(cli("plan", str(src), *args), "refit needs about", "GiB", "--calibration-samples")
    assert_clean_failure(cli("run", str(src), str(out), *args), "refit needs about")
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_a_gram_ridge_cannot_fix_is_one_line_and_writes_nothing(tiny, text, tmp_path):
    """Layer 0's MLP made to output zeros everywhere: down_proj's input Gram is zero, no lambda makes it solvable."""
    from clitools import assert_clean_failure, cli
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(tiny["llama"], src)
    for shard in src.glob("*.safetensors"):
        tensors = load_file(str(shard))
        name = "model.layers.0.mlp.up_proj.weight"
        if name in tensors:
            tensors[name] = torch.zeros_like(tensors[name])
            save_file(tensors, str(shard), metadata={"format": "pt"})
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    out = tmp_path / "out"
    result = cli("run", str(src), str(out), "--intermediate-size", "48", "--method", "magnitude", "--refit",
                 "--calibration", str(text[0]), "--calibration-samples", str(SAMPLES), "--calibration-seq-len", str(SEQ))
    assert_clean_failure(result, "model.layers.0.mlp.down_proj.weight", "singular", "calibrate on more text")
    assert not out.exists() and before == {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
