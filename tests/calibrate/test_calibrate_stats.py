"""The streamed statistics equal an in-memory run with hooks on the whole transformers model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import prune_surgery as ps
from calibrate_families import TINY
from prune_surgery.calibrate.calibration import calibrate
from prune_surgery.calibrate.data import calibration_windows, load_tokenizer
from prune_surgery.calibrate.reference import as_numpy, inmemory_stats

SAMPLES, SEQ, MICRO = 6, 16, 4  # two micro-batches of different sizes (4 + 2)


def _windows(src, text):
    return torch.from_numpy(calibration_windows(load_tokenizer(src), [text[0]], SAMPLES, SEQ).ids)


@pytest.mark.parametrize("name", sorted(TINY))
def test_streamed_statistics_equal_whole_model_hooks(tiny, text, tmp_path, name):
    src = tiny[name]
    scores = calibrate(src, [text[0]], tmp_path / "s.safetensors", samples=SAMPLES, seq_len=SEQ, micro=MICRO)
    ref, model = inmemory_stats(src, _windows(src, text), MICRO)
    ref = as_numpy(ref)
    got = {k: v for k, v in scores.tables.items() if not k.startswith("layers/")}
    assert set(got) == set(ref)
    for key, value in ref.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-9, err_msg=key)
    # every prunable space has statistics, but vocab and the groups other heads nest in (kv groups,
    # linear-attention key heads), which are ranked through their nested heads
    arch = ps.open_source(src).arch
    outer = {s.within for s in arch.spaces.values() if s.within}
    wanted = {s for s in arch.spaces if s not in ("layers", "vocab") and s not in outer}
    assert wanted <= scores.spaces(), wanted - scores.spaces()
    # block influence against the whole model's own hidden states
    ids = _windows(src, text)
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    n = len(states) - 1
    # the last entry of hidden_states has the final norm applied: compare the layers before it
    for layer in range(n - 1):
        cos = torch.nn.functional.cosine_similarity(states[layer].double(), states[layer + 1].double(), dim=-1)
        expected = float((1 - cos).sum())
        assert scores.tables["layers/all/influence"][layer] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert scores.tables["layers/all/tokens"].tolist() == [SAMPLES * SEQ] * n


def test_micro_batches_of_one_shape_keep_their_own_arguments(tiny, text, tmp_path):
    """Three micro-batches of one shape: each has its own per-layer inputs and KV sharing state."""
    src = tiny["gemma4_ple"]
    scores = calibrate(src, [text[0]], tmp_path / "s.safetensors", samples=SAMPLES, seq_len=SEQ, micro=2)
    ref = as_numpy(inmemory_stats(src, _windows(src, text), 2)[0])
    assert set(ref) <= set(scores.tables)
    for key, value in ref.items():
        np.testing.assert_allclose(scores.tables[key], value, rtol=1e-5, atol=1e-9, err_msg=key)


def test_provenance_and_tokens(tiny, text, tmp_path):
    scores = calibrate(tiny["llama"], [text[0]], tmp_path / "s.safetensors", samples=5, seq_len=12)
    p = scores.provenance
    assert p["windows"] == 5 and p["seq_len"] == 12 and p["tokens"] == 60 and p["bos"] == 1
    assert p["source"]["path"] == str(tiny["llama"].resolve()) and len(p["data_hash"]) == 64 and len(p["config_hash"]) == 64
    assert p["version"] == ps.__version__
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny["llama"]))
    ids = calibration_windows(tokenizer, [text[0]], 5, 12).ids
    assert (ids[:, 0] == 1).all() and ids.shape == (5, 12)
    assert scores.tables["ffn/0/tokens"].tolist() == [60.0]
