"""Activation calibration of a checkpoint with MTP weights (Qwen3.5-MoE `mtp.*`): transformers does
not run the MTP layer, so calibration skips it and the plan says how its units are kept."""

from __future__ import annotations

from clitools import cli
from models_moe2026 import build
from models_qwen3_5_mtp import LAYER_TYPES, add_mtp
from tinytok import add_tokenizer

import prune_surgery as ps


def test_mtp_layer_without_statistics_is_flagged(text, tmp_path):
    src = add_tokenizer(add_mtp(build(tmp_path / "src", "qwen3_5_moe", layers=5, layer_types=LAYER_TYPES)), text[0].read_text()[:20000])
    scores = tmp_path / "s.safetensors"
    done = cli("calibrate", str(src), "--data", str(text[0]), "-o", str(scores), "--samples", "2", "--seq-len", "32", "-q")
    assert done.returncode == 0, done.stderr
    spec = ps.PruneSpec(sizes={"num_attention_heads": 4}, method="activation", scores=str(scores))
    plan = ps.plan(src, spec)
    assert any("MTP layer(s) after layer 3 get no activation statistics" in w and "heads" in w for w in plan.warnings), plan.warnings
    assert plan.keep["heads"]["4"] == [0, 2, 4, 6]  # no record: zero scores, the first head of each kv group
    assert not any("MTP" in w for w in ps.plan(src, ps.PruneSpec(sizes={"num_attention_heads": 4})).warnings)
