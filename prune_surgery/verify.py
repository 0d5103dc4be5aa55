"""Check an output folder after the fact: `prune-surgery verify OUT`.

Every shard header is parsed and validated again, the index is compared with the shards' real
contents, config.json must describe every tensor's shape (a keep-everything plan of OUT is
built, which claims every tensor and checks every axis against the config), and every shard's
sha256 must equal the one `prune_surgery.json` recorded when the run wrote it.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import OutputError, PruneSurgeryError

CHUNK = 1 << 20  # one reused buffer per hashing thread: far below the stream's own block budget


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read into one reused 1 MiB buffer (hashlib releases the GIL on it)."""
    digest, buffer = hashlib.sha256(), bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def shard_digests(folder: Path, files: list[str], workers: int = 2) -> dict[str, str]:
    """{file: sha256} of the named files in `folder`, hashed `workers` at a time."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files) or 1))) as pool:
        return dict(zip(files, pool.map(lambda name: file_sha256(folder / name), files)))


def _record(out: Path, problems: list[str]) -> dict[str, str] | None:
    """The shard digests prune_surgery.json recorded, or None (with the reason in `problems`)."""
    path = out / "prune_surgery.json"
    if not path.is_file():
        problems.append("no prune_surgery.json: shard digests cannot be checked (not a prune-surgery output?)")
        return None
    try:
        recorded = json.loads(path.read_text()).get("sha256")
    except (ValueError, AttributeError, UnicodeDecodeError):
        problems.append("prune_surgery.json is not a valid JSON object")
        return None
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        problems.append("prune_surgery.json records no sha256 of its shards (written by an older version?)")
        return None
    return recorded


def verify_output(out: Path) -> list[str]:
    """Everything that differs from a sound output, one line each (empty when OUT is sound)."""
    from . import api
    from .checkpoint import read_shard_header
    from .storage import LocalStorage

    out = Path(out)
    if not out.is_dir():
        raise OutputError(f"{out} is not a folder; give the OUT folder of a finished run")
    problems: list[str] = []
    storage = LocalStorage(out)
    shards = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors" and p.is_file())
    for name in shards:
        try:
            read_shard_header(storage, name)
        except PruneSurgeryError as exc:
            problems.append(exc.message)
    if not problems:
        try:  # the index against the shards, then config.json against every tensor's shape
            api.plan(out)
        except PruneSurgeryError as exc:
            problems.append(exc.message)
    recorded = _record(out, problems)
    if recorded is not None:
        for name in sorted(set(recorded) - set(shards)):
            problems.append(f"{name} is recorded in prune_surgery.json but missing from {out}")
        for name in sorted(set(shards) - set(recorded)):
            problems.append(f"{name} is not one of the shards prune_surgery.json recorded")
        present = sorted(set(recorded) & set(shards))
        for name, digest in shard_digests(out, present).items():
            if digest != recorded[name]:
                problems.append(f"{name}: sha256 {digest[:16]}... differs from the recorded {recorded[name][:16]}...")
    return problems
