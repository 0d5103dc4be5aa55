"""Turn the benchmark's results dict into target verdicts and a markdown report.

Ratios are *paired*: the benchmark runs its contenders in rounds (each once per round, order
alternating), and a ratio is the median over rounds of the two wall times measured in the same
round, so a noisy neighbour on a shared machine slows both sides alike. ``× I/O floor``: wall
time over the I/O floor's for the same job's output; ``× prune-surgery``: over prune-surgery's
on the same job (above 1: slower than prune-surgery).

Usage::

    python bench/report.py bench/results/latest.json     # re-render the markdown
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

GIB = 2**30
MIB = 2**20


def _run(results: dict, name: str) -> dict:
    return results.get("runs", {}).get(name) or {}


def _wall(results: dict, name: str) -> float | None:
    return _run(results, name).get("wall_s")


def _rss(results: dict, name: str) -> int | None:
    return _run(results, name).get("peak_rss")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def paired(results: dict, a: str, b: str) -> float | None:
    """Median over rounds of wall(a) / wall(b) measured in the same round (None if either is missing)."""
    wa, wb = _run(results, a).get("walls"), _run(results, b).get("walls")
    if not wa or not wb:
        return _ratio(_wall(results, a), _wall(results, b))
    return statistics.median(x / y for x, y in zip(wa, wb, strict=False))  # slow contenders ran the first rounds only


def targets(results: dict) -> list[dict]:
    """Every target of issue 6 with its measured value and verdict (None: not measured)."""
    rps, rpsd = _rss(results, "prune_surgery"), _rss(results, "prune_surgery_depth")
    rmk = _rss(results, "mergekit_depth")
    r2x = _rss(results, "prune_surgery_2x")
    r1x = _rss(results, "prune_surgery_1x") or rps  # same rounds as the 2x run (older results: the main job)
    r70 = [r for r in (_rss(results, "plan_70b"), _rss(results, "run_70b")) if r is not None]
    rows = [
        ("prune-surgery / I/O floor (width+depth)", paired(results, "prune_surgery", "io_floor"), "<= 1.3",
         lambda v: v <= 1.3, "x"),
        ("in-memory baseline / prune-surgery", paired(results, "inmemory_baseline", "prune_surgery"), ">= 4",
         lambda v: v >= 4, "x"),
        ("mergekit / prune-surgery wall (depth-only)", paired(results, "mergekit_depth", "prune_surgery_depth"),
         "> 1", lambda v: v > 1, "x"),
        ("mergekit / prune-surgery peak RSS (depth-only)", _ratio(rmk, rpsd), "> 1", lambda v: v > 1, "x"),
        ("prune-surgery peak RSS (width+depth)", rps / GIB if rps else None, "< 1 GiB", lambda v: v < 1, "GiB"),
        ("peak RSS 2x checkpoint / 1x", _ratio(r2x, r1x), "<= 1.10", lambda v: v <= 1.10, "x"),
        ("70B sparse plan+run peak RSS", max(r70) / GIB if r70 else None, "< 2 GiB", lambda v: v < 2, "GiB"),
    ]
    return [{"name": n, "measured": v, "target": t, "unit": u, "pass": None if v is None else bool(ok(v))}
            for n, v, t, ok, u in rows]


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _mem(v: int | None) -> str:
    if v is None:
        return "–"
    return f"{v / GIB:.2f} GiB" if v >= GIB else f"{v / MIB:.0f} MiB"


def _table(results: dict, rows: list[tuple[str, str]], floor: str | None, ref: str | None) -> list[str]:
    out = ["| run | wall s: best | median (n) | × I/O floor | × prune-surgery | CPU s | peak RSS "
           "| anon | file-mapped |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key in rows:
        r = _run(results, key)
        if not r:
            continue
        walls = r.get("walls") or [r["wall_s"]]
        cpu = r.get("cpu_s") or [r.get("user_s", 0) + r.get("sys_s", 0)]
        out.append(f"| {label} | {r['wall_s']:.2f} | {statistics.median(walls):.2f} ({len(walls)}) | "
                   f"{_f(paired(results, key, floor) if floor else None)} | "
                   f"{_f(paired(results, key, ref) if ref else None)} | {statistics.median(cpu):.2f} | "
                   f"{_mem(r['peak_rss'])} | {_mem(r.get('peak_anon'))} | {_mem(r.get('peak_file'))} |")
    return out


def _shape(c: dict) -> str:
    kind = "sparse, " if c.get("sparse") else ""
    return (f"{c['layers']} layers, hidden {c['hidden']}, ffn {c['ffn']}, {c['heads']} heads / "
            f"{c['kv_heads']} kv, vocab {c['vocab']} ({kind}{c['bytes'] / GIB:.2f} GiB bf16)")


def markdown(results: dict) -> str:
    """The whole report as markdown."""
    m, cks, jobs = results.get("meta", {}), results.get("checkpoints", {}), results.get("jobs", {})
    lines = ["# prune-surgery benchmark", "",
             f"{m.get('date')} · {m.get('cpus')} CPUs · {m.get('mem_bytes', 0) / GIB:.0f} GiB RAM · "
             f"kernel {m.get('kernel')} · Python {m.get('python')} · numpy {m.get('numpy')} · "
             f"prune-surgery {m.get('prune_surgery')} ({m.get('commit')}) · load average at start/end "
             f"{_f((m.get('load_start') or [None])[0], '{:.1f}')}/{_f((m.get('load_end') or [None])[0], '{:.1f}')}"
             + (" · **--small smoke run: figures not meaningful**" if m.get("small") else ""), ""]
    if m.get("commit_end") and m.get("commit_end") != m.get("commit"):
        lines += [f"**The engine changed during the run** ({m.get('commit')} → {m.get('commit_end')}): "
                  "figures mix versions.", ""]
    for key, label in (("main", "Checkpoint"), ("double", "2x checkpoint"), ("llama70b", "70B-shaped")):
        if key in cks:
            lines.append(f"- {label}: {_shape(cks[key])}")
    for key, label in (("width_depth", "Width+depth job"), ("depth_only", "Depth-only job"), ("llama70b", "70B job")):
        if key in jobs:
            lines.append(f"- {label}: `{' '.join(jobs[key])}`")
    lines += ["", "## Width+depth job", ""]
    lines += _table(results, [("I/O floor", "io_floor"), ("prune-surgery", "prune_surgery"),
                              ("prune-surgery --workers 1 (smaller shards)", "prune_surgery_workers1"),
                              ("prune-surgery --workers 2 (smaller shards)", "prune_surgery_workers2"),
                              ("prune-surgery under cProfile", "prune_surgery_cprofile"),
                              ("in-memory baseline (transformers)", "inmemory_baseline")], "io_floor", "prune_surgery")
    lines += ["", "## Depth-only job", ""]
    lines += _table(results, [("I/O floor", "io_floor_depth"), ("prune-surgery", "prune_surgery_depth"),
                              ("mergekit passthrough", "mergekit_depth")], "io_floor_depth", "prune_surgery_depth")
    lines += ["", "## Memory with model size", ""]
    lines += _table(results, [("prune-surgery, checkpoint (same rounds as 2x)", "prune_surgery_1x"),
                              ("prune-surgery, 2x checkpoint", "prune_surgery_2x"),
                              ("plan, 70B-shaped sparse", "plan_70b"), ("run, 70B-shaped sparse", "run_70b")],
                    None, None)
    lines += ["", "## Targets", "", "| target | measured | wanted | met |", "|---|---:|---:|:---:|"]
    for t in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[t["pass"]]
        lines.append(f"| {t['name']} | {_f(t['measured'])} {t['unit'] if t['measured'] is not None else ''} "
                     f"| {t['target']} | {met} |")
    details = []
    for key in ("io_floor", "io_floor_depth"):
        j = _run(results, key).get("json")
        if j:
            details.append(f"- {key}: read {j['read_bytes'] / GIB:.2f} GiB in {j['read_s']:.2f} s, "
                           f"wrote {j['write_bytes'] / GIB:.2f} GiB in {j['write_s']:.2f} s")
    j = _run(results, "inmemory_baseline").get("json")
    if j:
        details.append(f"- in-memory baseline phases: load {j['load_s']:.1f} s, index_select {j['prune_s']:.1f} s, "
                       f"save {j['save_s']:.1f} s")
    for key, label in (("baseline_vs_prune_surgery", "in-memory baseline vs prune-surgery output"),
                       ("mergekit_vs_prune_surgery", "mergekit vs prune-surgery output")):
        c = results.get("checks", {}).get(key)
        if c:
            norms_only = c["bytes_differ_only_norms"] and c["bytes_differ"]
            verdict = "identical" if c["same"] else (
                f"{c['bytes_differ']} differ" + (" (norm weights only: rescale rounding)" if norms_only else "")
                + (f", shape/dtype differ: {c['shape_or_dtype_differ']}" if c["shape_or_dtype_differ"] else "")
                + (f", only in one: {c['only_in_a'] + c['only_in_b']}" if c["only_in_a"] or c["only_in_b"] else ""))
            details.append(f"- {label}: {c['identical']}/{c['tensors']} tensors byte-identical; {verdict}")
    if details:
        lines += ["", "## Details", ""] + details
    if results.get("errors"):
        lines += ["", "## Failed parts", ""] + [f"- {k}: {v}" for k, v in results["errors"].items()]
    lines += ["", "Wall: the whole process, Python start-up included, best of n rounds (median beside it). "
              "Ratios: median over rounds of the two walls measured in the same round. CPU s: user + system, "
              "median. Peak RSS: the largest of the kernel's high-water mark (VmHWM) of any process of the "
              "command's tree and the sampled sum of their RSS, over all rounds; *anon* is memory the process "
              "allocated, *file-mapped* page cache of memory-mapped files counted while mapped (sampled every "
              "10 ms)." + (f" Before each run, outputs are deleted and memory left to settle for "
                           f"{results['meta']['settle_s']:g} s (see run_bench.py: freed pages go back to the "
                           "hypervisor, so no contender inherits hot pages from the previous one)."
                           if results.get("meta", {}).get("settle_s") else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Re-render a results JSON as markdown on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    results = json.loads(Path(args[0] if args else Path(__file__).parent / "results" / "latest.json").read_text())
    results["targets"] = targets(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
