"""The calibration verbs from the command line: one-line errors, resume, pictures, no torch on the core path."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from clitools import assert_clean_failure, cli

from prune_surgery.calibrate import calibration
from prune_surgery.calibrate.layerwise import LayerwiseModel




def test_bad_data_and_devices_give_one_line(tiny, tmp_path):
    src = str(tiny["llama"])
    out = tmp_path / "s.safetensors"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    short = tmp_path / "short.txt"
    short.write_text("a b")
    assert_clean_failure(cli("calibrate", src, "--data", str(tmp_path / "nope.txt"), "-o", str(out)), "does not exist")
    assert_clean_failure(cli("calibrate", src, "--data", str(empty), "-o", str(out)), "no text")
    assert_clean_failure(cli("calibrate", src, "--data", str(short), "-o", str(out), "--seq-len", "64"), "too few")
    assert_clean_failure(cli("eval", src, "--data", str(short), "--seq-len", "64"), "too few")
    if not __import__("torch").cuda.is_available():
        assert_clean_failure(cli("calibrate", src, "--data", str(short), "-o", str(out), "--device", "cuda"), "CUDA")
    assert_clean_failure(cli("run", src, str(tmp_path / "o"), "--intermediate-size", "64", "--method", "activation"), "--scores")
    assert not out.exists() and not (tmp_path / "o").exists()


def test_jsonl_gzip_data_and_eval_json(tiny, text, tmp_path):
    records = [json.dumps({"body": p}) for p in text[0].read_text().split("\n\n")[:200]]
    data = tmp_path / "data.jsonl.gz"
    data.write_bytes(gzip.compress("\n".join(records).encode()))
    out = tmp_path / "s.safetensors"
    result = cli("calibrate", str(tiny["llama"]), "--data", str(data), "--text-field", "body", "-o", str(out),
                 "--samples", "4", "--seq-len", "16", "--plot", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    pictures = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pictures == ["ffn.png", "heads.png", "hidden.png", "layers.png"]
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    result = cli("eval", str(tiny["llama"]), "--data", str(text[1]), "--seq-len", "16", "--max-tokens", "64", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tokens"] == 64 and report["perplexity"] > 1


def test_scores_verb_marks_a_plan(tiny, text, tmp_path):
    out = tmp_path / "s.safetensors"
    calibration.calibrate(tiny["llama"], [text[0]], out, samples=4, seq_len=16)
    run = cli("run", str(tiny["llama"]), str(tmp_path / "pruned"), "--intermediate-size", "48", "--num-hidden-layers", "3",
              "--method", "activation", "--scores", str(out), "-q")
    assert run.returncode == 0, run.stderr
    result = cli("scores", str(out), "--plot", str(tmp_path / "png"), "--keep", str(tmp_path / "pruned" / "prune_surgery.json"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "png" / "ffn.png").exists() and (tmp_path / "png" / "layers.png").exists()


@pytest.mark.parametrize("name", ["qwen2_moe", "gemma4_ple"])
def test_killed_run_resumes_from_its_last_finished_layer(tiny, text, tmp_path, monkeypatch, name):
    """gemma4_ple: layers 2 and 3 reuse the keys and values layers 0 and 1 computed (KV sharing),
    state a resumed run must bring back from the partial state."""
    src, out = tiny[name], tmp_path / "s.safetensors"
    whole = calibration.calibrate(src, [text[0]], tmp_path / "whole.safetensors", samples=6, seq_len=16, micro=4)

    def dies(stage, done, total, tokens):
        if done > 2 * 6:  # inside layer 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        calibration.calibrate(src, [text[0]], out, samples=6, seq_len=16, micro=4, progress=dies)
    assert not out.exists() and (tmp_path / "s.safetensors.partial" / "state.safetensors").exists()
    ran = []
    original = LayerwiseModel.run_layer
    monkeypatch.setattr(LayerwiseModel, "run_layer", lambda self, i, *a, **k: (ran.append(i), original(self, i, *a, **k))[1])
    resumed = calibration.calibrate(src, [text[0]], out, samples=6, seq_len=16, micro=4, resume=True)
    assert ran == [2, 3]
    assert set(resumed.tables) == set(whole.tables)
    for key, value in whole.tables.items():
        np.testing.assert_allclose(resumed.tables[key], value, rtol=1e-12, err_msg=key)
    assert not (tmp_path / "s.safetensors.partial").exists()


def test_plan_and_run_with_scores_never_import_torch(tiny, text, tmp_path):
    scores = tmp_path / "s.safetensors"
    calibration.calibrate(tiny["llama"], [text[0]], scores, samples=4, seq_len=16)
    code = (
        "import sys, prune_surgery as ps\n"
        f"spec = ps.PruneSpec(sizes={{'intermediate_size': 48, 'num_hidden_layers': 3}}, method='activation', scores={str(scores)!r})\n"
        f"ps.run({str(tiny['llama'])!r}, {str(tmp_path / 'o')!r}, spec)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
