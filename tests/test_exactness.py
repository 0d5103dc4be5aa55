"""The oracles: pruned models compute exactly what the masked original computes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

import prune_surgery as ps
from models import keep_of, load, logits, masked_reference, sample_ids, tree_digest

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "llama_tied", "qwen2_tied"]


def _tensors(folder):
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "np") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                out[key] = f.get_tensor(key)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_everything_is_byte_identical(checkpoints, tmp_path, family):
    src = checkpoints[family]
    before = tree_digest(src)
    ps.run(src, tmp_path / "out", ps.PruneSpec())
    assert tree_digest(src) == before
    a, b = _tensors(src), _tensors(tmp_path / "out")
    assert set(b) == set(a)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes() and a[key].shape == b[key].shape, key
    assert (tmp_path / "out" / "generation_config.json").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_width_and_depth_pruning_matches_masked_original(checkpoints, tmp_path, family):
    src = checkpoints[family]
    spec = ps.PruneSpec(sizes={"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "intermediate_size": 64}, drop_layers=(2,))
    ps.run(src, tmp_path / "out", spec)
    pruned = load(tmp_path / "out")
    keep = keep_of(tmp_path / "out")
    assert keep["layers"] == [0, 1, 3] and len(keep["hidden"]) == 48
    assert pruned.config.num_attention_heads % pruned.config.num_key_value_heads == 0
    ids = sample_ids()
    expected = logits(masked_reference(src, keep), ids)
    got = logits(pruned, ids)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("space,sizes", [
    ("layers", {"num_hidden_layers": 2}),
    ("heads", {"num_attention_heads": 4}),
    ("kv", {"num_attention_heads": 4, "num_key_value_heads": 2}),
    ("ffn", {"intermediate_size": 40}),
    ("hidden", {"hidden_size": 32}),
])
def test_each_space_alone_matches_masked_original(checkpoints, tmp_path, space, sizes):
    src = checkpoints["llama"]
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes=sizes))
    keep = keep_of(tmp_path / "out")
    ids = sample_ids()
    assert torch.allclose(logits(load(tmp_path / "out"), ids), logits(masked_reference(src, keep), ids), atol=2e-5)


def test_gqa_heads_are_chosen_inside_kept_groups(checkpoints, tmp_path):
    src = checkpoints["mistral"]  # no hidden % heads rule, so 6 heads fit
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"num_attention_heads": 6, "num_key_value_heads": 3}))
    keep = keep_of(tmp_path / "out")
    for layer, heads in keep["heads"].items():
        groups = keep["kv_heads"][layer]
        assert len(groups) == 3 and len(heads) == 6
        assert sorted({h // 2 for h in heads}) == groups
        assert all(sum(h // 2 == g for h in heads) == 2 for g in groups)
    ids = sample_ids()
    assert torch.allclose(logits(load(tmp_path / "out"), ids), logits(masked_reference(src, keep), ids), atol=2e-5)


def test_norm_rescale_and_eps(checkpoints, tmp_path):
    src = checkpoints["llama"]
    ps.run(src, tmp_path / "a", ps.PruneSpec(sizes={"hidden_size": 32}))
    ps.run(src, tmp_path / "b", ps.PruneSpec(sizes={"hidden_size": 32}, norm_rescale=False))
    a, b, s = _tensors(tmp_path / "a"), _tensors(tmp_path / "b"), _tensors(src)
    keep = keep_of(tmp_path / "a")["hidden"]
    key = "model.layers.0.input_layernorm.weight"
    np.testing.assert_array_equal(b[key], s[key][keep])
    np.testing.assert_allclose(a[key], s[key][keep] * np.float32(math.sqrt(2)), rtol=1e-7)
    cfg_a = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    assert cfg_a["rms_norm_eps"] == cfg_b["rms_norm_eps"] == src_cfg["rms_norm_eps"]  # eps kept: the stream is scaled
    o_proj = "model.layers.0.self_attn.o_proj.weight"
    np.testing.assert_allclose(a[o_proj], s[o_proj][keep] / np.float32(math.sqrt(2)), rtol=1e-6)
    np.testing.assert_array_equal(b[o_proj], s[o_proj][keep])
    ids = sample_ids()
    reference = logits(masked_reference(src, keep_of(tmp_path / "a")), ids)
    assert not torch.allclose(logits(load(tmp_path / "b"), ids), reference, atol=1e-4)


def test_tied_embeddings_write_no_lm_head(checkpoints, tmp_path):
    ps.run(checkpoints["llama_tied"], tmp_path / "out", ps.PruneSpec(sizes={"hidden_size": 32}))
    assert "lm_head.weight" not in _tensors(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True


def test_config_is_rewritten_for_transformers(checkpoints, tmp_path):
    src = checkpoints["qwen2"]
    cfg = json.loads((src / "config.json").read_text())
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"num_attention_heads": 4, "num_key_value_heads": 2}, drop_layers=(0, 3)))
    new = json.loads((tmp_path / "out" / "config.json").read_text())
    assert new["head_dim"] == 8 and new["num_hidden_layers"] == 2 and new["num_key_value_heads"] == 2
    assert new["layer_types"] == [cfg["layer_types"][i] for i in (1, 2)]
    assert new["max_window_layers"] == sum(1 for i in (1, 2) if i < cfg["max_window_layers"])
    load(tmp_path / "out")
