"""Training end to end on CPU: the loss falls, OUT is a stock checkpoint, resume is exact, 2 processes = 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import TrainerCallback

from prune_surgery.recover.run import recover
from prune_surgery.recover.settings import Settings

FAST = dict(seq_len=16, batch_size=4, lr=2e-3, warmup_steps=0)


def _losses(record):
    return [p["loss"] for p in record["loss"]]


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_loss_falls_and_out_is_a_stock_checkpoint(student, text, tmp_path):
    out = tmp_path / "out"
    record = recover(student, out, [text[0]], Settings(steps=8, eval_steps=4, **FAST), heldout=[text[1]], progress=False)
    losses = _losses(record)
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert [p["step"] for p in record["heldout"]] == [0, 4, 8]
    assert record["heldout"][-1]["loss"] < record["heldout"][0]["loss"]
    assert record["tokens"] == 8 * 4 * 16 and record["teacher"]["from"] == "prune_surgery.json"
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.intermediate_size == 48 and model.config.num_hidden_layers == 3
    assert (out / "tokenizer.json").exists() and (out / "prune_surgery.json").exists()
    assert (out / "recovery_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "recovery.json").read_text())
    assert saved["data"]["hash"] == record["data"]["hash"] and saved["settings"]["objective"] == "kd"
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


class Dies(TrainerCallback):
    """Kills the run (an exception out of the training loop) when step `at` ends."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_killed_run_resumes_with_the_uninterrupted_curve(vocab_student, text, tmp_path):
    settings = Settings(steps=6, save_steps=2, eval_steps=3, objective="mix", **FAST)
    whole = recover(vocab_student, tmp_path / "whole", [text[0]], settings, heldout=[text[1]], progress=False)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        recover(vocab_student, out, [text[0]], settings, heldout=[text[1]], callbacks=[Dies(5)], progress=False)
    assert not out.exists()
    resumed = recover(vocab_student, out, [text[0]], settings, heldout=[text[1]], resume=True, progress=False)
    assert resumed["resumed_from"] == "checkpoint-4"
    assert _losses(resumed) == pytest.approx(_losses(whole), rel=1e-5, abs=1e-6)
    assert [h["loss"] for h in resumed["heldout"]] == pytest.approx([h["loss"] for h in whole["heldout"]], rel=1e-5)
    a, b = _weights(tmp_path / "whole"), _weights(out)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_two_gloo_processes_equal_one(student, text, tmp_path):
    common = ["recover", str(student), "--data", str(text[0]), "--steps", "3", "--seq-len", "16", "--lr", "2e-3",
              "--warmup-steps", "0", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, "-m", "prune_surgery", *common, str(tmp_path / "one"), "--batch-size", "4"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "prune_surgery", *common, str(tmp_path / "two"), "--batch-size", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / name / "recovery.json").read_text()) for name in ("one", "two"))
    assert (a["world_size"], b["world_size"]) == (1, 2) and a["global_batch"] == b["global_batch"] == 4
    assert _losses(a) == pytest.approx(_losses(b), rel=1e-5, abs=1e-6)
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], rtol=1e-4, atol=1e-6)
