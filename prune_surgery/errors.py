"""Error types: one per kind of mistake, each carrying a message a user can act on.

Every error raised on purpose by prune-surgery derives from :class:`PruneSurgeryError`.
The CLI prints ``error: <message>`` on one line and exits with status 2; the Python API
lets the exception propagate.  Messages say what is wrong *and* how to fix it.
"""

from __future__ import annotations


class PruneSurgeryError(Exception):
    """Base class of every deliberate prune-surgery error (exit status 2 in the CLI)."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        """The one-line message shown to the user."""
        return str(self)


class CheckpointError(PruneSurgeryError):
    """The source checkpoint is malformed: bad header, truncated shard, bad index.json."""


class ArchitectureError(PruneSurgeryError):
    """The model family is unknown, or its tensors do not match the architecture table."""


class SpecError(PruneSurgeryError):
    """The requested pruning cannot be done: bad target sizes, bad kept indices, bad options."""


class OutputError(PruneSurgeryError):
    """The output location is unusable: exists and is not empty, lies inside the source, ..."""


class SourceError(PruneSurgeryError):
    """The source cannot be fetched: repo or revision not found, no access, server unreachable."""


class TokenizerError(PruneSurgeryError):
    """The tokenizer cannot be read or rewritten for vocabulary pruning."""


class ConversionError(PruneSurgeryError):
    """An output cannot become a GGUF: llama.cpp's converter does not know its architecture or tokenizer."""
