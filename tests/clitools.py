"""Running the command line in tests: a subprocess, and the one-line-error check."""

from __future__ import annotations

import subprocess
import sys


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`python -m prune_surgery ARGS`, captured."""
    return subprocess.run([sys.executable, "-m", "prune_surgery", *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2, no traceback, exactly one `error:` line naming `words`."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
