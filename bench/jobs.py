"""The benchmark's checkpoint shapes and pruning jobs (full size and ``--small``)."""

from __future__ import annotations

import dataclasses

import make_checkpoint as mc
import mergekit_bench


@dataclasses.dataclass(frozen=True)
class Job:
    """A pruning job, as prune-surgery CLI options (None: that space is not pruned)."""

    hidden: int | None = None
    heads: int | None = None
    ffn: int | None = None
    drop: tuple[int, ...] = ()
    kv_heads: int | None = None  # MHA models: prune kv heads with the query heads

    def args(self) -> list[str]:
        """The CLI options of this job."""
        out: list[str] = []
        for flag, value in (("--hidden-size", self.hidden), ("--num-attention-heads", self.heads),
                            ("--num-key-value-heads", self.kv_heads), ("--intermediate-size", self.ffn)):
            if value is not None:
                out += [flag, str(value)]
        if self.drop:
            out += ["--drop-layers", drop_text(self.drop)]
        return out

    def depth_only(self) -> Job:
        """The same job without width pruning."""
        return Job(drop=self.drop)


def drop_text(layers: tuple[int, ...]) -> str:
    """(4, 7, 10, 11, 12) -> ``4,7,10-12``."""
    runs = mergekit_bench.ranges(list(layers))
    return ",".join(str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in runs)


def profile(small: bool) -> dict:
    """Checkpoint shapes and jobs of the full benchmark, or of the ``--small`` smoke run."""
    if small:
        main = mc.Shape(layers=4, hidden=256, ffn=688, heads=8, kv_heads=8, vocab=1000, shard_size=1_000_000)
        big = mc.Shape(layers=8, hidden=512, ffn=1792, heads=16, kv_heads=4, vocab=4096,
                       shard_size=2_000_000, sparse=True)
        return {"main": main, "job": Job(192, 6, 512, (2,), kv_heads=6), "big": big,
                "big_job": Job(128, 4, 256, tuple(range(2, 8)))}
    main = mc.Shape(layers=24, hidden=2560, ffn=6912, heads=20, kv_heads=20, vocab=32000)
    big = mc.Shape(layers=80, hidden=8192, ffn=28672, heads=64, kv_heads=8, vocab=128256,
                   shard_size=5_000_000_000, sparse=True)
    return {"main": main, "job": Job(1920, 15, 5184, (20, 21), kv_heads=15), "big": big,
            "big_job": Job(1024, 8, 2048, tuple(range(4, 80)))}
