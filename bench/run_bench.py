"""The benchmark (issue 6): one run, one generated checkpoint, one pruning job, every contender.

Measures, on the same LLaMA-shaped bf16 checkpoint and the same job, with a warm page cache:

1. the I/O floor (read every input byte, write the output's byte count; ``io_floor.py``);
2. prune-surgery ``run`` (numpy backend): wall time and peak RSS of the process;
3. the in-memory baseline (transformers load, ``index_select``, ``save_pretrained``) with the
   SAME kept indices, read from prune-surgery's ``prune_surgery.json``;
4. mergekit ``passthrough`` against prune-surgery on the depth-only job;
5. prune-surgery with ``--workers 1`` and ``--workers 2``;
6. peak RSS of prune-surgery on a checkpoint twice the size (twice the layers);
7. ``plan`` and ``run`` on a sparse Llama-3-70B-shaped checkpoint (holes, no disk cost).

Writes ``bench/results/latest.json`` and ``bench/results/latest.md``. Run with the project's
venv (``make bench`` runs ``.venv/bin/python bench/run_bench.py``). ``--small`` is a smoke run
on tiny checkpoints (seconds); ``--skip-*`` leave parts out. Logs of every command are under
``bench/work/logs/``. Exit status: 0 if every part ran (targets missed do not fail it), 1 if
a part failed.

Settling (``--settle``, 3 s by default): on a virtual machine whose balloon driver reports free
pages to the host (``/sys/module/page_reporting``), memory freed by deleting the previous run's
output is handed back to the hypervisor about 2 s later, and touching it again costs a host
fault per page.  A process that writes right after the delete gets those pages hot (the floor
wrote 2.2 GB in 0.43 s), one that writes later gets them cold (3.2-3.9 s after a 4 s pause).
Without a pause, whoever allocates first wins by luck; with it, every contender starts from
the same settled memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402
import io_floor  # noqa: E402
import make_checkpoint as mc  # noqa: E402
import mergekit_bench  # noqa: E402
import report  # noqa: E402
import rss  # noqa: E402
from jobs import Job, profile  # noqa: E402


@dataclasses.dataclass
class Contender:
    """One command measured in the rounds of a part."""

    name: str
    cmd: list[str]
    outs: list[Path]  # output folders: deleted before each run (and after, unless keep)
    slow: bool = False  # runs only in the first --repeat-slow rounds
    keep: bool = False
    check: str | None = None  # results["checks"] key: compare outs[0] with check_against once
    check_against: Path | None = None
    src: Path | None = None  # the checkpoint it reads, when not the part's own


def summarize(ms: list[dict]) -> dict:
    """One record for several runs: the best run's fields, every wall/CPU time, the largest peaks."""
    best = dict(min(ms, key=lambda m: m["wall_s"]))
    best["walls"] = [m["wall_s"] for m in ms]
    best["cpu_s"] = [m["user_s"] + m["sys_s"] for m in ms]
    for key in ("peak_rss", "peak_anon", "peak_file"):
        best[key] = max(m[key] for m in ms)
    return best


def prune_surgery_cmd() -> list[str]:
    """How to call prune-surgery: the console script next to this python, else ``-m``."""
    script = Path(sys.executable).with_name("prune-surgery")
    return [str(script)] if script.exists() else [sys.executable, "-m", "prune_surgery"]


class Bench:
    """State of one benchmark run: paths, options, and the results being collected."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = a.work.resolve()
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.p = profile(a.small)
        self.ps = prune_surgery_cmd()
        self.failed: list[str] = []
        self.results: dict = {"meta": self.meta(), "runs": {}, "checks": {}, "checkpoints": {}, "jobs": {}}

    # -- helpers ---------------------------------------------------------------------------
    def meta(self) -> dict:
        """Machine and software facts."""
        import numpy

        with open("/proc/meminfo") as fh:
            total = int(fh.readline().split()[1]) * 1024
        try:
            from importlib.metadata import version

            ps_version = version("prune-surgery")
        except Exception:  # noqa: BLE001 - not installed: run from the tree
            ps_version = None
        return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
                "mem_bytes": total, "kernel": platform.release(), "python": platform.python_version(),
                "numpy": numpy.__version__, "prune_surgery": ps_version,
                "commit": git_commit(), "load_start": os.getloadavg(),
                "small": self.a.small, "repeat": self.a.repeat, "repeat_slow": self.a.repeat_slow, "settle_s": self.a.settle,
                "prune_surgery_cmd": prune_surgery_cmd()}

    def log(self, msg: str) -> None:
        """Progress line on stderr."""
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def fresh(self, *dirs: Path) -> None:
        """Remove output folders and flush dirty pages so runs do not pay for each other."""
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
            for tmp in d.parent.glob(f".{d.name}.*.tmp"):  # a killed run's atomic temp folder
                shutil.rmtree(tmp, ignore_errors=True)
        os.sync()

    def warm(self, src: Path) -> None:
        """Read every input byte, so the page cache is warm for the next measurement.

        Sparse checkpoints are left alone: their data are holes (reading 141 GB of zeros
        would take minutes and fill the page cache with zero pages for nothing).
        """
        try:
            if json.loads((src / mc.MARKER).read_text()).get("sparse"):
                return
        except (OSError, ValueError):
            pass
        io_floor.read_all(io_floor.input_files(src), bytearray(io_floor.BUFFER))

    def once(self, c: Contender, src: Path) -> dict:
        """Run one contender once on a warm cache and an idle disk; return its measurement."""
        self.fresh(*c.outs)
        time.sleep(self.a.settle)  # freed pages go back to the hypervisor for every contender alike
        self.warm(c.src or src)
        log = self.logs / f"{c.name}.log"
        m = rss.measure(c.cmd, log=log, cwd=ROOT, timeout=self.a.timeout).to_dict()
        if m["returncode"] != 0:
            raise RuntimeError(f"{c.name}: exit {m['returncode']}; see {log}:\n{tail(log)}")
        m["json"] = last_json_line(log)  # this run's own timings, if the tool prints them
        if c.check and c.check not in self.results["checks"] and c.check_against:
            self.results["checks"][c.check] = compare.compare_folders(c.outs[0], c.check_against)
        if not c.keep:
            self.fresh(*c.outs)
        return m

    def rounds(self, src: Path, contenders: list[Contender], repeat: int) -> None:
        """``repeat`` rounds; each runs every contender once (slow ones in the first rounds only).

        The order alternates from round to round, and ratios are later taken within a round
        (``report.py``), so a noisy neighbour slows both sides of a ratio alike.
        """
        runs: dict[str, list[dict]] = {c.name: [] for c in contenders}
        for c in contenders:
            (self.logs / f"{c.name}.log").unlink(missing_ok=True)
        for r in range(repeat):
            seq = [c for c in contenders if not c.slow or r < self.a.repeat_slow]
            for c in seq if r % 2 == 0 else seq[::-1]:
                runs[c.name].append(self.once(c, src))
        for name, ms in runs.items():
            if ms:
                self.results["runs"][name] = summarize(ms)
                r = self.results["runs"][name]
                self.log(f"{name}: best {r['wall_s']:.2f} s of {[round(w, 2) for w in r['walls']]}, "
                         f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB")

    def ps_run(self, src: Path, out: Path, job: Job, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The prune-surgery ``run`` command line."""
        return [*self.ps, "run", str(src), str(out), *job.args(), "--seed", "0", "--quiet", *extra]

    def part(self, name: str, fn) -> None:
        """Run one part; record its failure instead of stopping the benchmark."""
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a failed part is reported, the rest still runs
            self.failed.append(name)
            self.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            self.log(f"{name} FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
        self.log(f"part {name} took {time.perf_counter() - t0:.0f} s")

    def checkpoint(self, key: str, shape: mc.Shape) -> Path:
        """Generate (or reuse) a checkpoint under the work folder."""
        size = "sparse" if shape.sparse else "dense"
        path = self.work / f"ckpt-{key}-{shape.layers}L-{shape.hidden}h-{size}"
        mc.ensure_checkpoint(path, shape, log=self.log)
        self.results["checkpoints"][key] = {**dataclasses.asdict(shape), "path": str(path),
                                            "bytes": shape.total_bytes(), "parameters": shape.parameters()}
        return path

    # -- parts -----------------------------------------------------------------------------
    def reference(self, src: Path, job: Job, out: Path) -> None:
        """One untimed prune-surgery run whose output the others use (sizes, kept indices)."""
        self.once(Contender(out.name, self.ps_run(src, out, job), [out], keep=True), src)

    def floor(self, name: str, src: Path, like: Path) -> Contender:
        """The I/O floor contender for an output shaped like ``like``."""
        out = self.work / f"out-{name}"
        return Contender(name, [sys.executable, str(BENCH / "io_floor.py"), str(src), str(out), "--like", str(like)],
                         [out])

    def width_depth(self) -> None:
        """I/O floor, prune-surgery, --workers and the in-memory baseline on the width+depth job."""
        src, job = self.checkpoint("main", self.p["main"]), self.p["job"]
        self.results["jobs"]["width_depth"] = job.args()
        ref = self.work / "out-ps-reference"
        self.reference(src, job, ref)
        out = self.work / "out-ps"
        cs = [Contender("prune_surgery", self.ps_run(src, out, job), [out]), self.floor("io_floor", src, ref)]
        if not self.a.skip_baseline:
            base = self.work / "out-baseline"
            cs.append(Contender("inmemory_baseline", [sys.executable, str(BENCH / "inmemory_baseline.py"), str(src),
                                                      str(base), "--keep", str(ref / "prune_surgery.json")],
                                [base], slow=True, check="baseline_vs_prune_surgery", check_against=ref))
        if not self.a.skip_workers:
            # --workers 1 vs 2 slicing threads (on smaller shards, so the output has several)
            shard = str(max(1, self.p["main"].total_bytes() // 6))
            for n in (1, 2):
                w = self.work / f"out-ps-w{n}"
                extra = ["--workers", str(n), "--max-shard-size", shard]
                cs.append(Contender(f"prune_surgery_workers{n}", self.ps_run(src, w, job, extra), [w]))
        self.rounds(src, cs, self.a.repeat)
        if self.a.profile:
            self.profile_run(src, job)
        self.fresh(ref)

    def depth_only(self) -> None:
        """prune-surgery vs mergekit passthrough on the depth-only job (and its I/O floor)."""
        src, job = self.checkpoint("main", self.p["main"]), self.p["job"].depth_only()
        self.results["jobs"]["depth_only"] = job.args()
        ref = self.work / "out-ps-depth-reference"
        self.reference(src, job, ref)
        out = self.work / "out-ps-depth"
        cs = [Contender("prune_surgery_depth", self.ps_run(src, out, job), [out]),
              self.floor("io_floor_depth", src, ref)]
        if not self.a.skip_mergekit:
            mergekit_bench.ensure_venv(log=self.log)
            kept = [i for i in range(self.p["main"].layers) if i not in job.drop]
            cfg = mergekit_bench.write_config(src, kept, self.work / "mergekit-depth.yaml")
            mk = self.work / "out-mergekit"
            cs.append(Contender("mergekit_depth", mergekit_bench.command(cfg, mk), [mk], slow=True,
                                check="mergekit_vs_prune_surgery", check_against=ref))
        self.rounds(src, cs, self.a.repeat)
        self.fresh(ref)

    def double(self) -> None:
        """Peak RSS of the width+depth job on a checkpoint with twice the layers, against the same
        job on the 1x checkpoint in the same rounds (the same number of chances to peak)."""
        base = self.p["main"]
        shape = dataclasses.replace(base, layers=2 * base.layers)
        one, job = self.checkpoint("main", base), self.p["job"]
        src = self.checkpoint("double", shape)
        out1, out2 = self.work / "out-ps-1x", self.work / "out-ps-2x"
        cs = [Contender("prune_surgery_1x", self.ps_run(one, out1, job), [out1], src=one),
              Contender("prune_surgery_2x", self.ps_run(src, out2, job), [out2], src=src)]
        self.rounds(src, cs, self.a.repeat_double)
        if not self.a.keep_checkpoints:  # 20 s to regenerate; frees 7.4 GB of disk and page cache
            shutil.rmtree(src)

    def llama70b(self) -> None:
        """``plan`` and ``run`` on the sparse Llama-3-70B-shaped checkpoint to a small target."""
        src, job = self.checkpoint("llama70b", self.p["big"]), self.p["big_job"]
        self.results["jobs"]["llama70b"] = job.args()
        out = self.work / "out-ps-70b"
        self.rounds(src, [Contender("plan_70b", [*self.ps, "plan", str(src), *job.args(), "--seed", "0"], [out])], 1)
        self.rounds(src, [Contender("run_70b", self.ps_run(src, out, job), [out])], 1)

    def profile_run(self, src: Path, job: Job) -> None:
        """prune-surgery under cProfile once; the top functions go to results/profile.txt."""
        out, prof = self.work / "out-ps-prof", self.work / "prune_surgery.prof"
        target = self.ps[1:] if self.ps[0] == sys.executable else self.ps  # script, or -m module
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), *target,
               "run", str(src), str(out), *job.args(), "--seed", "0"]
        self.rounds(src, [Contender("prune_surgery_cprofile", cmd, [out])], 1)
        import io
        import pstats

        buf = io.StringIO()
        st = pstats.Stats(str(prof), stream=buf)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(25)
        self.a.results.mkdir(parents=True, exist_ok=True)
        (self.a.results / "profile.txt").write_text(buf.getvalue())

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> int:
        """Run every part not skipped; write the results; return the exit status."""
        self.part("width_depth", self.width_depth)
        if not self.a.skip_depth:
            self.part("depth_only", self.depth_only)
        if not self.a.skip_2x:
            self.part("double", self.double)
        if not self.a.skip_70b:
            self.part("llama70b", self.llama70b)
        if self.a.clean:
            for key in ("main", "llama70b"):
                path = self.results["checkpoints"].get(key, {}).get("path")
                if path:
                    shutil.rmtree(path, ignore_errors=True)
        self.results["meta"]["load_end"] = os.getloadavg()
        self.results["meta"]["commit_end"] = git_commit()  # differs: the engine changed mid-run
        self.results["targets"] = report.targets(self.results)
        self.results["failed_parts"] = self.failed
        self.a.results.mkdir(parents=True, exist_ok=True)
        (self.a.results / "latest.json").write_text(json.dumps(self.results, indent=2) + "\n")
        md = report.markdown(self.results)
        (self.a.results / "latest.md").write_text(md)
        print(md)
        return 1 if self.failed else 0


def git_commit() -> str | None:
    """Short commit of the work tree (``+`` if it has uncommitted changes to prune_surgery/)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "prune_surgery"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def last_json_line(path: Path) -> dict | None:
    """The last line of a log that parses as a JSON object (tools print their timings so)."""
    try:
        for line in reversed(path.read_text(errors="replace").splitlines()):
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                return json.loads(line)
    except (OSError, ValueError):
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="prune-surgery benchmark (writes bench/results/latest.{json,md})")
    p.add_argument("--small", action="store_true",
                   help="smoke run on tiny checkpoints (results go to bench/work/results-small/)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each quick measurement, best wall kept (a shared machine's page "
                   "cache and disk are noisy); the baseline and mergekit run once")
    p.add_argument("--repeat-slow", type=int, default=2, help="rounds in which the baseline and mergekit run")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds to wait after deleting outputs, before warming the input (see the module doc)")
    p.add_argument("--repeat-double", type=int, default=3,
                   help="rounds of the 1x-vs-2x peak RSS comparison")
    p.add_argument("--skip-baseline", action="store_true", help="no transformers in-memory baseline")
    p.add_argument("--skip-depth", action="store_true", help="no depth-only part (mergekit included)")
    p.add_argument("--skip-mergekit", action="store_true", help="no mergekit (depth-only prune-surgery still runs)")
    p.add_argument("--skip-workers", action="store_true", help="no --workers 1 vs 2")
    p.add_argument("--skip-2x", action="store_true", help="no twice-the-size RSS check")
    p.add_argument("--skip-70b", action="store_true", help="no sparse Llama-3-70B plan+run")
    p.add_argument("--profile", action="store_true", help="also run prune-surgery under cProfile")
    p.add_argument("--clean", action="store_true", help="delete generated checkpoints at the end")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the 2x checkpoint (deleted after use by default: 7.4 GB)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a command is killed")
    p.add_argument("--work", type=Path, default=BENCH / "work")
    p.add_argument("--results", type=Path, default=None, help="default: bench/results/")
    a = p.parse_args(argv)
    if a.results is None:
        a.results = BENCH / "work" / "results-small" if a.small else BENCH / "results"
    return Bench(a).run()


if __name__ == "__main__":
    sys.exit(main())
