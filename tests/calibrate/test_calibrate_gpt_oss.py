"""gpt-oss, whose experts are [experts, in, out] stacks applied as ``x @ W[e]``: `run --method
activation --scores` on a cut of ffn, experts, heads and hidden, end to end; the Hub's MXFP4
layout through a dequantized copy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
from activation_cut import calibrated_cut, top
from clitools import assert_clean_failure, cli
from models_moe2026 import dequantize_mxfp4, load, masked_reference, quantize_mxfp4

from models import logits, sample_ids
from prune_surgery.calibrate.calibration import calibrate

CUT = {"hidden-size": 48, "num-attention-heads": 4, "num-key-value-heads": 2, "num-experts": 3, "intermediate-size": 20}


def test_activation_cut_of_every_space_runs_end_to_end(tiny, text, tmp_path):
    src = tiny["gpt_oss"]
    scores, keep = calibrated_cut(src, text[0], tmp_path / "out", CUT)
    for layer in range(4):
        # ffn channels are shared by a layer's experts: ranked by the down_proj input of every expert
        assert keep["ffn"][str(layer)] == top(np.sqrt(scores.tables[f"ffn/{layer}/win_sq"]), 20)
        assert keep["experts"][str(layer)] == top(scores.tables[f"experts/{layer}/route_weight"], 3)
        assert scores.tables[f"experts/{layer}/tokens"].sum() == 8 * 24 * 2  # top-2 routing
    hidden = sum(np.sqrt(scores.tables[f"hidden/{layer}/win_sq"]) for layer in range(4))
    assert keep["hidden"] == top(hidden, 48)
    # transformers loads it with no missing or unexpected keys, and it is the masked original
    ids = sample_ids()
    got = logits(load(tmp_path / "out"), ids)
    expected = logits(masked_reference(src, keep), ids)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()
    record = json.loads((tmp_path / "out" / "prune_surgery.json").read_text())
    assert record["method"] == "activation"


def test_mxfp4_is_refused_and_its_dequantized_copy_calibrates(tiny, text, tmp_path):
    """The Hub's gpt-oss is MXFP4: calibrate names the way out (`run --dequantize`), and that copy
    calibrates exactly like an independent float32 dequantization of the same bytes."""
    mx = quantize_mxfp4(tiny["gpt_oss"], tmp_path / "mx")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny["gpt_oss"] / name, mx / name)
    assert_clean_failure(cli("calibrate", str(mx), "--data", str(text[0]), "-o", str(tmp_path / "s.safetensors")),
                         "MXFP4", "--dequantize")
    assert cli("run", str(mx), str(tmp_path / "dense"), "--dequantize").returncode == 0
    exact = dequantize_mxfp4(mx, tmp_path / "exact")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny["gpt_oss"] / name, exact / name)
    got = calibrate(tmp_path / "dense", [text[0]], tmp_path / "a.safetensors", samples=4, seq_len=16).tables
    expected = calibrate(exact, [text[0]], tmp_path / "b.safetensors", samples=4, seq_len=16).tables
    assert set(got) == set(expected) and "ffn/0/win_sq" in got
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-9, err_msg=key)
