"""Streamed perplexity equals transformers' own loss on the same windows."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from prune_surgery.calibrate import perplexity
from prune_surgery.calibrate.data import eval_windows, load_tokenizer


def _reference(src, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        losses = [model(input_ids=ids[i : i + 1], labels=ids[i : i + 1], use_cache=False).loss for i in range(len(ids))]
    return math.exp(float(torch.stack(losses).mean()))


@pytest.mark.parametrize("name", ["llama", "llama_tied", "gemma2", "qwen3_moe", "gpt_neox", "gemma4_ple"])
def test_perplexity_equals_transformers_loss(tiny, text, name, monkeypatch):
    monkeypatch.setattr(perplexity, "LOGIT_BYTES", 4 * 128 * 5)  # 5 tokens of logits at a time: many chunks
    src = tiny[name]
    result = perplexity.evaluate(src, [text[1]], seq_len=20, max_tokens=100, micro=2)
    ids = torch.from_numpy(eval_windows(load_tokenizer(src), [text[1]], 20, 100).ids)
    assert ids.shape == (5, 21) and (ids[:, 0] == 1).all()  # BOS before every window of 20 text tokens
    assert result["tokens"] == 5 * 20 and result["windows"] == 5
    assert result["perplexity"] == pytest.approx(_reference(src, ids), rel=1e-4)


def test_windows_follow_the_convention(tiny, text):
    tokenizer = load_tokenizer(tiny["llama"])
    body = tokenizer(text[1].read_text().strip(), add_special_tokens=False)["input_ids"]
    ids = eval_windows(tokenizer, [text[1]], 8, 40).ids
    assert ids[:, 1:].reshape(-1).tolist() == body[:40]
