"""`--method activation`: units ranked by their scores, GQA and balance rules kept, outputs exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prune_surgery as ps
from activation_cut import top
from models import keep_of, load, logits, masked_reference, sample_ids
from prune_surgery.calibrate.calibration import calibrate
from prune_surgery.calibrate.scorefile import load_scores, save_scores


@pytest.fixture(scope="module")
def scored(tiny, text, tmp_path_factory):
    path = tmp_path_factory.mktemp("scores") / "llama.safetensors"
    calibrate(tiny["llama"], [text[0]], path, samples=8, seq_len=24)
    return tiny["llama"], path


def test_ffn_and_hidden_keep_the_highest_scores(scored, tmp_path):
    src, path = scored
    scores = load_scores(path)
    spec = ps.PruneSpec(sizes={"intermediate_size": 64, "hidden_size": 48}, method="activation", scores=str(path))
    plan = ps.run(src, tmp_path / "out", spec)
    for layer in range(4):
        assert plan.keep["ffn"][str(layer)] == top(np.sqrt(scores.tables[f"ffn/{layer}/win_sq"]), 64)
    hidden = sum(np.sqrt(scores.tables[f"hidden/{layer}/win_sq"]) for layer in range(4))
    assert plan.keep["hidden"] == top(hidden, 48)
    # the output is still exactly the masked original, and records what it was ranked by
    ids = sample_ids()
    assert torch.allclose(logits(load(tmp_path / "out"), ids), logits(masked_reference(src, keep_of(tmp_path / "out")), ids), atol=2e-5)
    record = (tmp_path / "out" / "prune_surgery.json").read_text()
    assert '"method": "activation"' in record and scores.provenance["data_hash"] in record
    assert (tmp_path / "out" / "scores.safetensors").read_bytes() == path.read_bytes()


def test_gqa_groups_ranked_by_their_heads(scored):
    src, path = scored
    scores = load_scores(path)
    spec = ps.PruneSpec(sizes={"num_attention_heads": 2, "num_key_value_heads": 2}, method="activation", scores=str(path))
    plan = ps.plan(src, spec)
    for layer in range(4):
        heads = np.sqrt(scores.tables[f"heads/{layer}/win_sq"])  # 8 heads in 4 groups of 2
        groups = top(heads.reshape(4, 2).sum(1), 2)
        expected = [g * 2 + int(np.argmax(heads[g * 2 : g * 2 + 2])) for g in groups]
        assert plan.keep["kv_heads"][str(layer)] == groups
        assert plan.keep["heads"][str(layer)] == expected


def test_balance_keeps_the_same_count_per_partition(scored):
    src, path = scored
    plan = ps.plan(src, ps.PruneSpec(sizes={"intermediate_size": 48}, method="activation", scores=str(path), balance=2))
    for kept in plan.keep["ffn"].values():
        assert sum(i < 48 for i in kept) == sum(i >= 48 for i in kept) == 24


def test_depth_drops_the_lowest_block_influence(scored):
    src, path = scored
    influence = load_scores(path).layer_influence()
    plan = ps.plan(src, ps.PruneSpec(sizes={"num_hidden_layers": 2}, method="activation", scores=str(path)))
    assert plan.keep["layers"] == sorted(np.argsort(influence)[2:].tolist())


def test_scores_of_another_model_are_refused(scored, tiny):
    _, path = scored
    with pytest.raises(ps.SpecError, match="another model"):
        ps.plan(tiny["qwen2"], ps.PruneSpec(sizes={"intermediate_size": 64}, method="activation", scores=str(path)))


def test_scores_lacking_a_pruned_space_are_refused(scored, tmp_path):
    src, path = scored
    scores = load_scores(path)
    tables = {k: v for k, v in scores.tables.items() if not k.startswith("ffn/")}
    save_scores(tmp_path / "partial.safetensors", tables, scores.provenance)
    with pytest.raises(ps.SpecError, match="no statistics for ffn"):
        ps.plan(src, ps.PruneSpec(sizes={"intermediate_size": 64}, method="activation", scores=str(tmp_path / "partial.safetensors")))


def test_activation_needs_scores():
    with pytest.raises(ps.SpecError, match="--scores"):
        ps.spec_from_dict({"method": "activation", "intermediate_size": 64})


def test_calibration_on_the_fly_equals_a_scores_file(tiny, text, tmp_path):
    src = tiny["llama"]
    calibrate(src, [text[0]], tmp_path / "s.safetensors")
    a = ps.plan(src, ps.PruneSpec(sizes={"intermediate_size": 64}, method="activation", scores=str(tmp_path / "s.safetensors")))
    b = ps.plan(src, ps.PruneSpec(sizes={"intermediate_size": 64}, method="activation", calibration=(str(text[0]),)))
    assert a.keep == b.keep


def test_magnitude_warns(tiny):
    plan = ps.plan(tiny["llama"], ps.PruneSpec(sizes={"intermediate_size": 64}, method="magnitude"))
    assert any("magnitude" in w and "random" in w for w in plan.warnings)
