"""prune-surgery: prune LLM checkpoints to any configuration by rewriting them, never loading them."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import inspect, open_source, plan, run  # noqa: E402
from .errors import (  # noqa: E402
    ArchitectureError, CheckpointError, OutputError, PruneSurgeryError, SourceError, SpecError, TokenizerError,
)
from .plan import Plan  # noqa: E402
from .spec import PruneSpec, load_spec_file, spec_from_dict  # noqa: E402

__all__ = [
    "__version__", "inspect", "open_source", "plan", "run", "Plan", "PruneSpec", "load_spec_file", "spec_from_dict",
    "PruneSurgeryError", "CheckpointError", "ArchitectureError", "SpecError", "OutputError", "SourceError", "TokenizerError",
]
