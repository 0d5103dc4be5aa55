"""Run a command; measure its wall time and peak resident memory (its process tree included).

Peak RSS is the largest of
  * ``VmHWM`` (the kernel's high-water mark) of any process of the tree, and
  * the largest *sum* of ``VmRSS`` over the live process tree,
both seen by a sampler that reads ``/proc/PID/status`` of the process and its descendants
every 10 ms (VmHWM is monotonic, so only the last few ms before exit can be missed).

``ru_maxrss`` from ``wait4`` is recorded but NOT used: Linux starts a child's ``maxrss`` at the
high-water mark of the parent's memory at fork/vfork time (it is carried over at ``exec``), so
a parent that once mapped gigabytes would inflate every later child. We also reset this
process's high-water mark (``/proc/self/clear_refs``) before each command to limit that.

RSS counts file pages that a process maps (``RssFile``: memory-mapped safetensors shards
are counted while mapped and touched) as well as its own memory (``RssAnon``). The sampler
also records the peak of each part, so a report can tell "allocated" from "mapped page cache".

Usage as a tool::

    python bench/rss.py -- CMD ARGS...      # prints a JSON line with wall_s and peak bytes
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

KIB = 1024


@dataclasses.dataclass
class Measurement:
    """What one command run cost."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_rss: int  # bytes; max of sampled VmHWM of any tree member and sampled tree sum
    peak_rss_sampled: int  # bytes; largest sampled sum of VmRSS over the tree
    peak_anon: int  # bytes; largest sampled sum of RssAnon
    peak_file: int  # bytes; largest sampled sum of RssFile (+RssShmem)
    ru_maxrss: int  # bytes; from wait4 (informative only, see module doc)
    user_s: float
    sys_s: float
    samples: int
    log: str | None = None

    def ok(self) -> bool:
        """True if the command exited with status 0."""
        return self.returncode == 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` over all its threads (``/proc/PID/task/*/children``)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def read_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` in bytes (empty if the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0]) * KIB
    except OSError:
        pass
    return out


class _Sampler(threading.Thread):
    """Polls the process tree of ``pid`` until stopped, keeping the peaks."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.peak_rss = self.peak_anon = self.peak_file = self.peak_hwm = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            rss = anon = file = 0
            for p in process_tree(self.pid):
                st = read_status(p)
                rss += st.get("VmRSS", 0)
                anon += st.get("RssAnon", 0)
                file += st.get("RssFile", 0) + st.get("RssShmem", 0)
                self.peak_hwm = max(self.peak_hwm, st.get("VmHWM", 0))
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_file = max(self.peak_file, file)
            self.samples += 1
            self.stop.wait(self.interval)


def _reset_hiwater() -> None:
    """Reset this process's VmHWM to its current RSS (so children do not inherit a stale peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def measure(
    cmd: list[str],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    interval: float = 0.01,
    timeout: float | None = None,
) -> Measurement:
    """Run ``cmd`` to completion; return its :class:`Measurement`.

    stdout and stderr go to ``log`` (appended) when given, else to this process's stderr.
    A command that outlives ``timeout`` seconds is killed (its return code is then negative).
    """
    _reset_hiwater()
    out = open(log, "ab") if log else None
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out or sys.stderr, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd)
        sampler = _Sampler(proc.pid, interval)
        sampler.start()
        timer = None
        if timeout:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    finally:
        if out:
            out.close()
    maxrss = ru.ru_maxrss * KIB
    return Measurement(
        cmd=[str(c) for c in cmd],
        returncode=proc.returncode,
        wall_s=wall,
        peak_rss=max(sampler.peak_rss, sampler.peak_hwm) or maxrss,  # ru_maxrss if never sampled
        peak_rss_sampled=sampler.peak_rss,
        peak_anon=sampler.peak_anon,
        peak_file=sampler.peak_file,
        ru_maxrss=maxrss,
        user_s=ru.ru_utime,
        sys_s=ru.ru_stime,
        samples=sampler.samples,
        log=str(log) if log else None,
    )


def main(argv: list[str] | None = None) -> int:
    """``python bench/rss.py -- CMD...``: run CMD, print its measurement as JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        print("usage: python bench/rss.py -- CMD [ARGS...]", file=sys.stderr)
        return 2
    m = measure(args)
    print(json.dumps(m.to_dict()))
    return m.returncode


if __name__ == "__main__":
    sys.exit(main())
