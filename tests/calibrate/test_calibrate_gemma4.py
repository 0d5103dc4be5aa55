"""Gemma 4's 26B-A4B-style MoE (fused [experts, out, in] stacks beside the dense MLP): `run
--method activation --scores` on a cut of experts, expert width, ffn, heads and hidden, end to
end: the kept units are the top scores and the output is the masked original."""

from __future__ import annotations

import numpy as np
import torch
from activation_cut import calibrated_cut, top
from models_gemma4 import masked_gemma4

from models import logits, sample_ids

CUT = {"hidden-size": 48, "num-attention-heads": 4, "num-key-value-heads": 2, "num-experts": 3,
       "moe-intermediate-size": 16, "intermediate-size": 64}


def test_gemma4_moe_activation_cut_keeps_the_top_units_and_is_the_masked_original(tiny, text, tmp_path):
    src = tiny["gemma4_moe"]
    scores, keep = calibrated_cut(src, text[0], tmp_path / "out", CUT)
    layers = len(keep["experts"])
    for layer in range(layers):
        assert keep["experts"][str(layer)] == top(scores.tables[f"experts/{layer}/route_weight"], 3)
        assert keep["moe_ffn"][str(layer)] == top(np.sqrt(scores.tables[f"moe_ffn/{layer}/win_sq"]), 16)
        assert keep["ffn"][str(layer)] == top(np.sqrt(scores.tables[f"ffn/{layer}/win_sq"]), 64)
    hidden = sum(np.sqrt(scores.tables[f"hidden/{layer}/win_sq"]) for layer in range(layers))
    assert keep["hidden"] == top(hidden, 48)
    ids = sample_ids()
    got = logits(_load(tmp_path / "out"), ids)
    expected = logits(masked_gemma4(src, keep), ids)
    assert torch.allclose(got, expected, atol=5e-5, rtol=1e-4), (got - expected).abs().max()


def _load(path):
    """The output as transformers loads it, with no missing or unexpected keys."""
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()
