"""Vision-language checkpoints: their language model calibrated, evaluated and pruned by activation
on text only, run by transformers' image-text class; the vision tower is never loaded and is kept whole.

(The streamed statistics of these models equal whole-model hooks in test_calibrate_stats.py: they
are in calibrate_families.TINY.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import transformers
from activation_cut import top
from calibrate_families import VLM
from clitools import cli
from models import keep_of
from models_families_2026 import gemma3_in_memory_layout, load_vlm, masked_vlm, vlm_logits
from safetensors import safe_open

import prune_surgery as ps
from prune_surgery.calibrate import perplexity
from prune_surgery.calibrate.calibration import calibrate
from prune_surgery.calibrate.data import eval_windows, load_tokenizer
from prune_surgery.calibrate.layerwise import LayerwiseModel
from prune_surgery.errors import ArchitectureError

NAMES = sorted(VLM)
CUTS = {"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "num_hidden_layers": 3}
EXTRA = {"qwen3_5_vlm": {"linear_num_value_heads": 2}}


def _tensors(folder):
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _copied(plan):
    """Source names of the tensors the table copies whole (the vision tower)."""
    return [t.source.name for t in plan.tensors if plan.arch.roles[t.role].copy]


@pytest.mark.parametrize("name", NAMES)
def test_vlm_perplexity_equals_transformers_loss(tiny, text, name, monkeypatch):
    monkeypatch.setattr(perplexity, "LOGIT_BYTES", 4 * 300 * 5)  # 5 tokens of logits at a time: many chunks
    src = tiny[name]
    result = perplexity.evaluate(src, [text[1]], seq_len=20, max_tokens=100, micro=2)
    ids = torch.from_numpy(eval_windows(load_tokenizer(src), [text[1]], 20, 100).ids)
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        losses = [model(input_ids=ids[i : i + 1], labels=ids[i : i + 1], use_cache=False).loss for i in range(len(ids))]
    assert result["tokens"] == 5 * 20
    assert result["perplexity"] == pytest.approx(math.exp(float(torch.stack(losses).mean())), rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_text_only_forward_never_loads_the_vision_tower(tiny, text, tmp_path, name, monkeypatch):
    loaded = []
    materialize = LayerwiseModel.materialize
    monkeypatch.setattr(LayerwiseModel, "materialize", lambda self, module, prefix: (loaded.append(prefix), materialize(self, module, prefix))[1])
    calibrate(tiny[name], [text[0]], tmp_path / "s.safetensors", samples=4, seq_len=16)
    perplexity.evaluate(tiny[name], [text[1]], seq_len=16, max_tokens=32)
    assert any(".layers.3" in p for p in loaded) and any("embed_tokens" in p for p in loaded)
    assert all(p.split(".")[0] == "lm_head" or p.startswith("model.language_model.") for p in loaded), loaded


def test_a_forward_reaching_the_vision_tower_is_refused(tiny):
    engine = LayerwiseModel(ps.open_source(tiny["gemma3_vlm"]))
    with pytest.raises(ArchitectureError, match="outside the language model"), engine._outer_lazy():
        engine.model.model.get_image_features(torch.zeros(1, 3, 28, 28))
    assert all(p.is_meta for p in engine.model.model.vision_tower.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_activation_cut_of_a_vlm_loads_and_is_exact(tiny, text, tmp_path, name):
    src = tiny[name]
    path = tmp_path / "s.safetensors"
    scores = calibrate(src, [text[0]], path, samples=8, seq_len=24)
    spec = ps.PruneSpec(sizes={**CUTS, **EXTRA.get(name, {})}, method="activation", scores=str(path))
    plan = ps.run(src, tmp_path / "out", spec)
    influence = scores.tables["layers/all/influence"]
    assert plan.keep["layers"] == sorted(np.argsort(influence, kind="stable")[1:].tolist())  # the lowest block influence goes
    for layer in plan.keep["layers"]:
        assert plan.keep["ffn"][str(layer)] == top(np.sqrt(scores.tables[f"ffn/{layer}/win_sq"]), 64)
    hidden = sum(np.sqrt(scores.tables[f"hidden/{layer}/win_sq"]) for layer in range(len(influence)))
    assert plan.keep["hidden"] == top(hidden, 48)
    a, b = _tensors(src), _tensors(tmp_path / "out")
    copied = _copied(plan)
    assert copied and all(torch.equal(a[k], b[k]) for k in copied)  # the vision tower, byte for byte
    got = vlm_logits(load_vlm(tmp_path / "out"), False)  # no missing, unexpected or mismatched keys
    expected = vlm_logits(masked_vlm(src, keep_of(tmp_path / "out")), False)
    assert (got - expected).abs().max() < 5e-5
    vlm_logits(load_vlm(tmp_path / "out"), True)  # the image path still runs


@pytest.mark.parametrize("name,mode", [("mistral3_vlm", "oneshot"), ("qwen3_5_vlm", "oneshot"), ("gemma3_vlm", "sequential")])
def test_refit_of_a_vlm_calibrated_on_the_fly(tiny, text, tmp_path, name, mode):
    src = tiny[name]
    base = {"method": "activation", "calibration": [str(text[0])], "calibration_samples": 8, "calibration_seq_len": 24,
            **CUTS, **EXTRA.get(name, {})}
    plain = ps.run(src, tmp_path / "plain", ps.spec_from_dict(base))
    ps.run(src, tmp_path / "refit", ps.spec_from_dict({**base, "refit": mode}))
    a, b = load_vlm(tmp_path / "plain").state_dict(), load_vlm(tmp_path / "refit").state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    # only linear weights of the language model's layers are refit (q/k/v/o, gate/up/down, linear attention's in_proj_*)
    assert changed and all(k.startswith("model.language_model.layers.") and a[k].dim() == 2 for k in changed), changed
    record = json.loads((tmp_path / "refit" / "prune_surgery.json").read_text())["refit"]
    assert record["mode"] == mode and record["tensors"] > 0
    source, refit = _tensors(src), _tensors(tmp_path / "refit")
    assert all(torch.equal(source[k], refit[k]) for k in _copied(plain))


def test_in_memory_layout_calibrates_the_same(tiny, text, tmp_path):
    """A Gemma 3 VLM saved under the in-memory names (`model.language_model.*`, `lm_head.*` tied)."""
    src = gemma3_in_memory_layout(tiny["gemma3_vlm"], tmp_path / "src")
    stored = calibrate(src, [text[0]], tmp_path / "a.safetensors", samples=4, seq_len=16)
    canonical = calibrate(tiny["gemma3_vlm"], [text[0]], tmp_path / "b.safetensors", samples=4, seq_len=16)
    assert stored.tables.keys() == canonical.tables.keys()
    for key, value in canonical.tables.items():
        np.testing.assert_array_equal(stored.tables[key], value, err_msg=key)
    assert perplexity.evaluate(src, [text[1]], seq_len=16, max_tokens=48)["perplexity"] == pytest.approx(
        perplexity.evaluate(tiny["gemma3_vlm"], [text[1]], seq_len=16, max_tokens=48)["perplexity"], rel=1e-12)


def test_vlm_from_the_command_line(tiny, text, tmp_path):
    src, scores, out = str(tiny["mistral3_vlm"]), str(tmp_path / "s.safetensors"), tmp_path / "out"
    assert cli("calibrate", src, "--data", str(text[0]), "--samples", "4", "--seq-len", "16", "-o", scores).returncode == 0
    run = cli("run", src, str(out), "--intermediate-size", "64", "--hidden-size", "48", "--method", "activation", "--scores", scores)
    assert run.returncode == 0, run.stderr
    load_vlm(out)
    result = cli("eval", str(out), "--data", str(text[1]), "--seq-len", "16", "--max-tokens", "64", "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["tokens"] == 64 and got["perplexity"] == pytest.approx(
        perplexity.evaluate(out, [text[1]], seq_len=16, max_tokens=64)["perplexity"], rel=1e-9)
