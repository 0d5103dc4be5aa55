"""The objectives against hand computations: temperature, masking, the vocabulary cut, accumulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import transformers

from prune_surgery.recover.kd import VocabMap, kd_sum, lm_sum, objective_mean
from prune_surgery.recover.pair import open_pair
from prune_surgery.recover.run import recover
from prune_surgery.recover.settings import Settings


def hand_kl(student: np.ndarray, teacher: np.ndarray, t: float) -> float:
    """T^2 * sum_v p(v) (log p(v) - log q(v)) at one position, p = softmax(teacher/T), q = softmax(student/T)."""
    p = np.exp(teacher / t - np.log(np.exp(teacher / t).sum()))
    q = np.exp(student / t - np.log(np.exp(student / t).sum()))
    return t * t * float(sum(pv * (math.log(pv) - math.log(qv)) for pv, qv in zip(p, q)))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_equals_hand_computation_with_temperature_and_mask(temperature):
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64), torch.randn(2, 5, 11, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    total, count = kd_sum(student, teacher, temperature, mask)
    expected = [hand_kl(student[b, t].numpy(), teacher[b, t].numpy(), temperature)
                for b in range(2) for t in range(5) if mask[b, t]]
    assert count == 7
    assert float(total) == pytest.approx(sum(expected), rel=1e-5)
    same, _ = kd_sum(teacher, teacher, temperature)
    assert abs(float(same)) < 1e-6


def test_lm_sum_is_the_next_token_nll_and_mix_weighs_both():
    gen = torch.Generator().manual_seed(1)
    logits, ids = torch.randn(2, 6, 9, generator=gen), torch.randint(0, 9, (2, 6), generator=gen)
    total, count = lm_sum(logits, ids)
    logp = torch.log_softmax(logits.double(), -1)
    expected = -sum(float(logp[b, t, ids[b, t + 1]]) for b in range(2) for t in range(5))
    assert count == 10 and float(total) == pytest.approx(expected, rel=1e-5)
    teacher = torch.randn(2, 6, 9, generator=gen)
    vocab = VocabMap(None, 9)
    kd = objective_mean("kd", logits, ids, teacher, vocab)
    lm = objective_mean("lm", logits, ids, None, vocab)
    mix = objective_mean("mix", logits, ids, teacher, vocab, alpha=0.3)
    assert float(mix) == pytest.approx(0.3 * float(kd) + 0.7 * float(lm), rel=1e-6)


def test_vocab_mapped_kd_equals_kd_on_presliced_teacher_logits(teacher, vocab_student, text):
    pair = open_pair(vocab_student, None, "kd")
    kept = json.loads((vocab_student / "prune_surgery.json").read_text())["keep"]["vocab"]
    assert pair.kept == kept and pair.n_real == 100 and pair.student_config["vocab_size"] == 104
    vocab = VocabMap(torch.tensor(pair.kept), pair.n_real)
    t_model = transformers.AutoModelForCausalLM.from_pretrained(str(teacher)).eval()
    s_model = transformers.AutoModelForCausalLM.from_pretrained(str(vocab_student)).eval()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        t_logits = t_model(input_ids=vocab.teacher_ids(ids)).logits
        s_logits = s_model(input_ids=ids).logits
        # by hand: the teacher reads the original ids, its logits sliced to the kept ids beforehand
        original = torch.tensor([[kept[i] for i in row] for row in ids.tolist()])
        presliced = t_model(input_ids=original).logits[..., kept]
        expected, _ = kd_sum(s_logits[..., :100], presliced, 2.0)
        got = objective_mean("kd", s_logits, ids, t_logits, vocab, temperature=2.0) * ids.numel()
        assert float(got) == pytest.approx(float(expected), rel=1e-5)
        # padded rows never receive probability: making them huge changes nothing
        s_padded = s_logits.clone()
        s_padded[..., 100:] = 1e4
        assert float(objective_mean("kd", s_padded, ids, t_logits, vocab, temperature=2.0) * ids.numel()) == pytest.approx(float(expected), rel=1e-5)


def test_keep_everything_student_has_zero_kl_at_step_zero(teacher, tmp_path, text):
    import prune_surgery as ps

    same = tmp_path / "same"
    ps.run(teacher, same, ps.PruneSpec(sizes={}))
    record = recover(same, tmp_path / "out", [text[0]], Settings(steps=1, seq_len=16, batch_size=2), progress=False)
    assert abs(record["loss"][0]["loss"]) < 1e-5


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_gradient_accumulation_equals_a_larger_batch(student, text, tmp_path):
    base = dict(steps=3, seq_len=16, lr=1e-3, warmup_steps=0, objective="mix")
    one = recover(student, tmp_path / "b4", [text[0]], Settings(batch_size=4, **base), progress=False)
    two = recover(student, tmp_path / "b2x2", [text[0]], Settings(batch_size=2, grad_accum=2, **base), progress=False)
    assert [p["loss"] for p in one["loss"]] == pytest.approx([p["loss"] for p in two["loss"]], rel=1e-5, abs=1e-6)
    a, b = _weights(tmp_path / "b4"), _weights(tmp_path / "b2x2")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6)
