"""llama.cpp's converter, fetched from PyPI at run time and cached outside the project.

The ``llama-cpp-python`` sdist vendors llama.cpp; its ``convert_hf_to_gguf.py``, the
``conversion/`` package it imports and ``gguf-py/`` (the writer) are extracted from the pinned
sdist (checked against its sha256) into ``$PRUNE_SURGERY_CACHE`` (default
``~/.cache/prune-surgery``)``/llama-cpp-python-<version>/``.  ``PRUNE_SURGERY_LLAMA_CPP`` may
name a llama.cpp checkout to use instead.  Nothing of llama.cpp is part of this repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..calibrate.realmodel import cache_root  # one cache folder for the project
from ..errors import SourceError

#: The pinned sdist: llama-cpp-python 0.3.36 vendors llama.cpp at commit 0c1e57098.
PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098"
#: What is extracted from ``vendor/llama.cpp/`` of the sdist.
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
SCRIPT = "convert_hf_to_gguf.py"




def _is_converter(folder: Path) -> bool:
    return (folder / SCRIPT).is_file() and (folder / "conversion" / "__init__.py").is_file()


def _download_sdist(into: Path) -> Path:
    """pip-download the pinned sdist (hash-checked) into `into`; return its path."""
    requirements = into / "requirements.txt"
    requirements.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(requirements), "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(into.glob("*.tar.gz"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceError(
            f"could not download {PACKAGE}=={VERSION} from PyPI for llama.cpp's converter ({last}); connect to PyPI, "
            "or set PRUNE_SURGERY_LLAMA_CPP to a llama.cpp checkout that has convert_hf_to_gguf.py"
        )
    return found[0]


def _extract(sdist: Path, target: Path) -> None:
    """Extract the converter's files from the sdist into `target` (only regular files, no escapes)."""
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 3)  # llama_cpp_python-X/vendor/llama.cpp/<rest>
            if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"] or not member.isfile():
                continue
            rest = parts[3]
            if ".." in rest.split("/") or not any(rest == m or (m.endswith("/") and rest.startswith(m)) for m in MEMBERS):
                continue
            path = target / rest
            path.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)


def converter_dir() -> Path:
    """The folder holding ``convert_hf_to_gguf.py``: a given checkout, the cache, or a fresh fetch."""
    given = os.environ.get("PRUNE_SURGERY_LLAMA_CPP")
    if given:
        if not _is_converter(Path(given)):
            raise SourceError(f"PRUNE_SURGERY_LLAMA_CPP={given} has no {SCRIPT} and conversion/; point it at a llama.cpp checkout")
        return Path(given)
    target = cache_root() / f"{PACKAGE}-{VERSION}"
    if _is_converter(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        staging = Path(tmp) / "converter"
        _extract(_download_sdist(Path(tmp)), staging)
        if not _is_converter(staging):
            raise SourceError(f"{PACKAGE}=={VERSION} has no vendor/llama.cpp/{SCRIPT}; report this to prune-surgery")
        try:
            os.replace(staging, target)
        except OSError:  # fetched at the same time by another process
            if not _is_converter(target):
                raise
    return target


if __name__ == "__main__":  # `make gguf-converter`: fetch it ahead of time
    print(converter_dir())
