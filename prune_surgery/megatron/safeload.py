"""Load and save Megatron rank files without ever running pickled code.

Rank files are torch pickles.  They are opened with ``torch.load(weights_only=True,
mmap=True)``: tensors stay memory-mapped, and only an allowlist of classes may be named —
``argparse.Namespace`` (Megatron's ``args``), numpy arrays (the RNG state of training
checkpoints), and inert stand-ins for Megatron enums and TransformerEngine's ``BytesIO``
extra state, which record a value and do nothing else.  Anything else is refused before
it is constructed.  Files we write hold only tensors, plain values and a Namespace of
plain values.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, PruneSurgeryError


class EnumStandIn:
    """Takes the place of a Megatron enum member: keeps its value, runs nothing."""

    qualname = "enum"

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<{self.qualname} {self.value!r}>"


class OpaqueStandIn:
    """Takes the place of an opaque object (TransformerEngine's BytesIO extra state): drops it."""

    def __setstate__(self, state: Any) -> None:
        """Discard the pickled state."""


#: Megatron enums that appear in `args` or in the rerun-state of training checkpoints
MEGATRON_ENUMS = (
    "megatron.core.enums.ModelType",
    "megatron.core.enums.Fp8Recipe",
    "megatron.core.transformer.enums.AttnBackend",
    "megatron.core.transformer.enums.AttnMaskType",
    "megatron.core.transformer.enums.AttnType",
    "megatron.core.transformer.enums.LayerType",
    "megatron.core.transformer.enums.ModelType",
    "megatron.core.transformer.enums.CudaGraphScope",
    "megatron.core.rerun_state_machine.RerunMode",
    "megatron.core.rerun_state_machine.RerunState",
    "megatron.core.rerun_state_machine.RerunDiagnostic",
    "megatron.model.enums.AttnMaskType",
    "megatron.model.enums.LayerType",
    "megatron.model.enums.AttnType",
    "megatron.legacy.model.enums.AttnMaskType",
)


def _stand_in(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[1], (EnumStandIn,), {"qualname": qualname, "__module__": __name__})


def allowed_globals() -> list[Any]:
    """Everything a rank file may name, as accepted by ``torch.serialization.safe_globals``."""
    import numpy as np

    allowed: list[Any] = [argparse.Namespace, (OpaqueStandIn, "_io.BytesIO")]
    allowed += [(_stand_in(name), name) for name in MEGATRON_ENUMS]
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    reconstruct = core.multiarray._reconstruct
    allowed += [(reconstruct, "numpy._core.multiarray._reconstruct"), (reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.uint8)]
    return allowed


def _allowed_names(allowed: list[Any]) -> set[str]:
    names = set()
    for item in allowed:
        names.add(item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}")
    return names


def load_rank_file(path: Path) -> dict[str, Any]:
    """The content of one rank file, tensors memory-mapped; refuses any class not allowlisted."""
    import torch

    allowed = allowed_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - only used to word the message
            unsafe = []
        names = sorted(set(unsafe) - _allowed_names(allowed)) or ["an unsupported pickle construct"]
        raise CheckpointError(
            f"{path}: refused to load, it names {', '.join(names)}, which is not on the allowlist "
            "(prune-surgery never runs pickled code); re-save the checkpoint with only tensors, "
            "plain values and an argparse Namespace"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged zip or pickle fails in many ways inside torch.load
        raise CheckpointError(
            f"{path}: not a readable torch zip checkpoint ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]}); "
            "re-save it with torch.save (zip format, the default since torch 1.6)"
        ) from None
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: a Megatron rank file holds a dict, this one holds {type(content).__name__}")
    return content


def plain(value: Any) -> bool:
    """Whether `value` is a plain value that may be written into `args`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return False


def save_rank_file(path: Path, content: dict[str, Any]) -> None:
    """Write one rank file: tensors must own their storage exactly (no views of larger tensors)."""
    import torch

    def check(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.storage_offset() or value.untyped_storage().nbytes() != value.numel() * value.element_size():
                raise PruneSurgeryError(f"internal error: {where} is a view; clone it before saving")
        elif isinstance(value, dict):
            for key, item in value.items():
                check(item, f"{where}.{key}")
        elif isinstance(value, argparse.Namespace):
            bad = [k for k, v in vars(value).items() if not plain(v)]
            if bad:
                raise PruneSurgeryError(f"internal error: args.{bad[0]} is not a plain value")
        elif not plain(value):
            raise PruneSurgeryError(f"internal error: {where} is not a plain value ({type(value).__name__})")

    check(content, "checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
