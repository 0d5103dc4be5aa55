"""A 70B-shaped refit in 24 GB (issue 12, point 5): measured peak RSS against the plan's estimate.

Builds (once, under ``bench/work/refit-memory``) a LLaMA checkpoint with Llama-3-70B-shaped layers
(hidden 8192, 64 query / 8 key-value heads of 128, ffn 28672) but a tiny vocabulary and
``--layers`` decoder layers, with random non-zero bf16 weights (ffn neurons in twin pairs, see
:func:`_twins`) and a small BPE tokenizer trained on the pydoc text.  Then runs, as a child process,

    prune-surgery run SRC OUT --method activation --calibration TEXT --refit
        --intermediate-size 19456 --calibration-samples N --calibration-seq-len T

and reads the child's peak RSS (VmHWM, sampled by ``bench/rss.py``).  The refit's Grams of one
down_proj are 28672 x 19456 float64 (4.2 GiB) over all tokens and again over the held-out
windows: their size does not depend on the number of tokens, so a few short windows measure
the same peak as a real calibration set would (only the residual streams grow with tokens).
The plan's stated refit peak comes from ``prune-surgery plan --json`` with the same options but
``--method magnitude`` (the estimate depends only on the shapes, and ``plan`` would otherwise
calibrate first).  ``--timeout S`` stops the run after S seconds (the peak so far is reported);
``--render`` re-renders the committed JSON with the current plan estimate.

Writes ``bench/results/refit_memory.json`` and ``bench/results/refit_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import make_checkpoint as mc  # noqa: E402
import rss  # noqa: E402
from calibration_bench import _tokenizer_for  # noqa: E402

from prune_surgery.calibrate.realmodel import real_text  # noqa: E402

WORK = BENCH / "work" / "refit-memory"
CLI = [sys.executable, "-m", "prune_surgery"]
GIB = 2**30


def _twins(src: Path) -> Path:
    """A copy of `src` whose ffn neurons come in pairs: neuron i + ffn/2 has neuron i's gate row and
    half its up row, so it fires at half of neuron i's activation and ranks below it, and a dropped
    twin is a linear function of a kept one.  With more tokens than kept inputs the refit recovers
    it; with the few windows a memory run uses it still keeps slicing (the report's note), so the
    final solve is measured alone (``--solve-phase``)."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = src.with_name(src.name + "-twins")
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for shard in sorted(tmp.glob("*.safetensors")):
        tensors = load_file(str(shard))
        for name, value in tensors.items():
            half = value.shape[0] // 2
            if name.endswith("mlp.gate_proj.weight"):
                value[half:] = value[:half]
            elif name.endswith("mlp.up_proj.weight"):
                value[half:] = value[:half] * 0.5
        save_file(tensors, str(shard), metadata={"format": "pt"})
        del tensors
    tmp.rename(out)
    return out


def solve_phase(out: int, n: int, k: int) -> None:
    """The final solve of one reader, alone: sums of one-shot shape (C[:, K], n x k, float64, with
    C[K, K] the identity so it is positive definite), a float32 weight copy, then ``solve_refit``."""
    import torch

    from prune_surgery.refit.solve import Grams, solve_refit

    keep = torch.arange(k)
    xy = torch.zeros((n, k), dtype=torch.float64)
    xy[keep, keep] = 1.0
    weight = torch.randn((out, n), dtype=torch.float32)
    new = solve_refit(weight, Grams(xy, None, keep, tokens=1), 1e-2, "down_proj")
    assert new.shape == (out, k)


def _solve_phase_row(a: argparse.Namespace) -> dict:
    """Peak RSS of the solve phase measured alone (the run's reader kept slicing: it never solved)."""
    cmd = [sys.executable, str(Path(__file__)), "--solve-phase-child", "--ffn-to", str(a.ffn_to)]
    m = rss.measure(cmd, log=WORK / "solve.log", timeout=a.timeout)
    return {"returncode": m.returncode, "wall_s": round(m.wall_s, 1), "peak_rss_bytes": m.peak_rss}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--ffn-to", type=int, default=19456)
    p.add_argument("--samples", type=int, default=5, help="calibration windows (every fifth is held out)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--mode", default=None, help="refit mode (default: bare --refit)")
    p.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds")
    p.add_argument("--note", default=None, help="a sentence for the report")
    p.add_argument("--render", action="store_true", help="re-render the committed JSON (no run)")
    p.add_argument("--solve-phase", action="store_true", help="also measure the final solve alone (when the run kept slicing)")
    p.add_argument("--solve-phase-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.solve_phase_child:
        solve_phase(8192, 28672, a.ffn_to)
        return 0
    shape = mc.Shape(layers=a.layers, hidden=8192, ffn=28672, heads=64, kv_heads=8, vocab=2000, shard_size=4_000_000_000)
    src, _ = mc.ensure_checkpoint(WORK / f"ckpt-70b-shaped-{a.layers}l", shape)
    if not (src / "tokenizer.json").exists():
        _tokenizer_for(src, shape.vocab)
    src = _twins(src)
    calib, _ = real_text()
    options = ["--method", "activation", "--calibration", str(calib), "--intermediate-size", str(a.ffn_to),
               "--calibration-samples", str(a.samples), "--calibration-seq-len", str(a.seq_len), "--refit"]
    if a.mode:
        options.append(a.mode)
    plan_options = [("magnitude" if o == "activation" else o) for o in options]
    stated = json.loads(subprocess.run([*CLI, "plan", str(src), *plan_options, "--json"], capture_output=True, text=True,
                                       check=True).stdout)["refit_peak_memory_bytes"]
    path = BENCH / "results" / "refit_memory.json"
    if a.render:
        results = json.loads(path.read_text())
        results["plan_refit_peak_bytes"] = stated
    else:
        out = WORK / "out"
        m = rss.measure([*CLI, "run", str(src), str(out), *options, "--overwrite", "-q"], log=WORK / "run.log",
                        timeout=a.timeout)
        record = json.loads((out / "prune_surgery.json").read_text())["refit"] if m.returncode == 0 else None
        results = {
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
            "command": "python bench/refit_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "shape": {"layers": a.layers, "hidden": 8192, "heads": 64, "kv_heads": 8, "ffn": 28672, "vocab": shape.vocab,
                      "bytes": shape.total_bytes()},
            "cut": f"ffn 28672 -> {a.ffn_to}", "windows": a.samples, "seq_len": a.seq_len,
            "returncode": m.returncode, "wall_s": round(m.wall_s, 1), "peak_rss_bytes": m.peak_rss,
            "plan_refit_peak_bytes": stated, "limit_bytes": 24 * GIB, "refit": record, "note": a.note,
        }
    if a.solve_phase:
        results["solve_phase"] = _solve_phase_row(a)
    if a.note:
        results["note"] = a.note
    path.write_text(json.dumps(results, indent=1) + "\n")
    md = render(results)
    (BENCH / "results" / "refit_memory.md").write_text(md)
    print(md)
    return 0


def render(r: dict) -> str:
    """The committed report."""
    s = r["shape"]
    done = r["returncode"] == 0
    md = ["# A 70B-shaped refit in 24 GiB (issue 12)", "", f"Machine: {r['machine']}. Command: `{r['command']}`.", "",
          f"Checkpoint: {s['layers']} decoder layer(s) of Llama-3-70B shape (hidden 8192, 64/8 heads, ffn 28672), vocabulary "
          f"{s['vocab']}, random bf16 weights, ffn neurons in twin pairs ({s['bytes'] / GIB:.2f} GiB). `run --method activation --refit`, {r['cut']}, "
          f"{r['windows']} x {r['seq_len']} calibration tokens.", "",
          "| | GiB |", "|---|---:|",
          f"| plan's stated refit peak | {r['plan_refit_peak_bytes'] / GIB:.2f} |",
          f"| measured peak RSS of the run (VmHWM){'' if done else ', until stopped'} | {r['peak_rss_bytes'] / GIB:.2f} |",
          "| limit | 24.00 |", "",
          f"Exit status {r['returncode']}, wall {r['wall_s']:.0f} s."]
    if done:
        md.append(f"Fits in 24 GiB: **{'yes' if r['peak_rss_bytes'] <= r['limit_bytes'] else 'NO'}**.")
    if r.get("refit"):
        md.append(f"Refit record: {r['refit']['tensors']} tensors, lambda {r['refit']['alphas']}, "
                  f"{r['refit']['kept_slicing']} kept slicing.")
    if r.get("solve_phase"):
        sp = r["solve_phase"]
        md += ["", f"The final solve of that down_proj alone (`--solve-phase`: its sums C[:, K], a float32 weight copy, then "
               f"`solve_refit`), run because the reader kept slicing: peak RSS {sp['peak_rss_bytes'] / GIB:.2f} GiB, "
               f"{sp['wall_s']:.0f} s, exit status {sp['returncode']}."]
    if r.get("note"):
        md += ["", r["note"]]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
