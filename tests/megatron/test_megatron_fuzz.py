"""Fuzzed Megatron rank files (torch zip pickles): a pruning run succeeds or gives one deliberate error.

Bytes of one rank's ``model_optim_rng.pt`` are flipped (anywhere, or inside its pickle), spliced or cut;
the run must end in success or a one-line PruneSurgeryError, leave the source unchanged and write no
OUT on failure.  PRUNE_SURGERY_FUZZ examples (default 40), as in tests/test_fuzz.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prune_surgery as ps
from prune_surgery.errors import PruneSurgeryError
from prune_surgery.megatron.export import export_hf

EXAMPLES = int(os.environ.get("PRUNE_SURGERY_FUZZ", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
                suppress_health_check=list(HealthCheck))
SPEC = ps.PruneSpec(sizes={"hidden_size": 48, "intermediate_size": 64}, drop_layers=(1,))


def digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def megatron_source(llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meg") / "tp2"
    export_hf(llama(False, "float32"), out, tp=2)
    return out


def test_fuzz_megatron_rank_files(megatron_source: Path) -> None:
    ranks = sorted(p.relative_to(megatron_source).as_posix() for p in megatron_source.rglob("*.pt"))
    tried = {"ok": 0, "error": 0}

    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(shutil.copytree(megatron_source, Path(tmp) / "src"))
            rank = src / data.draw(st.sampled_from(ranks))
            raw = bytearray(rank.read_bytes())
            pickle_at = raw.find(b"data.pkl")
            how = data.draw(st.sampled_from(["flip", "flip-pickle", "splice", "cut"]))
            if how.startswith("flip"):
                low = pickle_at + 8 if how == "flip-pickle" and pickle_at >= 0 else 0
                for _ in range(data.draw(st.integers(1, 6))):
                    raw[data.draw(st.integers(low, min(len(raw) - 1, low + 4096)))] = data.draw(st.integers(0, 255))
            elif how == "splice":
                at = data.draw(st.integers(0, len(raw)))
                raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
            else:
                raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
            rank.write_bytes(bytes(raw))
            before = digest(src)
            out = Path(tmp) / "out"
            try:
                ps.run(src, out, SPEC)
            except PruneSurgeryError as exc:
                assert "\n" not in exc.message
                assert not out.exists()
                tried["error"] += 1
            else:
                tried["ok"] += 1
            assert digest(src) == before

    case()
    print(f"\nfuzz Megatron rank files: {sum(tried.values())} cases ({tried['ok']} succeeded, {tried['error']} one-line errors)")
    assert sum(tried.values()) >= min(EXAMPLES, 10)
