"""A Megatron checkpoint folder: find it, read its ranks (memory-mapped), write a new one.

Layout (per-rank ``torch`` format, pipeline-parallel size 1)::

    ROOT/latest_checkpointed_iteration.txt        "1" (or "release")
    ROOT/iter_0000001/mp_rank_00/model_optim_rng.pt  {"args", "checkpoint_version", "iteration", "model"}
    ROOT/prune_surgery_hf.json                    unpadded vocab size, HF layer ids (ours)
    ROOT/hf_files/                                the source's config.json and tokenizer files (ours)

Megatron ignores the last two; `import` uses them to rebuild the exact Hugging Face folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dtypes import raw_dtype
from ..errors import ArchitectureError, CheckpointError, SpecError
from .layout import (
    EXTRA_STATES,
    LAYER_ROLES,
    SegmentReader,
    Shapes,
    parse_name,
    rank_segments,
    take_range,
    vocab_reader,
    write_name,
)
from .distmeta import is_dist_folder
from .safeload import load_rank_file, plain

if TYPE_CHECKING:
    import torch

TRACKER = "latest_checkpointed_iteration.txt"
SIDE_FILE = "prune_surgery_hf.json"
HF_DIR = "hf_files"
RANK_FILE = "model_optim_rng.pt"
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")
TORCH_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_SIGNED = {2: np.int16, 4: np.int32}


def dtype_name(tensor: torch.Tensor) -> str:
    """The safetensors dtype name of a torch tensor (F32, BF16 or F16)."""
    for name, attr in TORCH_DTYPES.items():
        if str(tensor.dtype) == f"torch.{attr}":
            return name
    raise CheckpointError(f"Megatron tensor of dtype {tensor.dtype} is not supported (F32, BF16 and F16 are)")


def to_raw(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's elements as unsigned ints of the same width (no copy for mapped tensors)."""
    import torch

    dtype = dtype_name(tensor)
    signed = {2: torch.int16, 4: torch.int32}[tensor.element_size()]
    return tensor.view(signed).numpy().view(raw_dtype(dtype))


def from_raw(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """A torch tensor owning a fresh copy of raw elements, viewed as `dtype`."""
    import torch

    owned = np.array(raw, copy=True, order="C").view(_SIGNED[raw.dtype.itemsize])
    return torch.from_numpy(owned).view(getattr(torch, TORCH_DTYPES[dtype]))


@dataclass(frozen=True)
class Location:
    """Where the rank files of one iteration live."""

    root: Path
    iteration: int | str  # an int, or "release"
    rank_files: list[Path]  # for torch_dist: [the folder with .metadata]
    dist: bool = False  # a torch_dist checkpoint


def _dist_location(path: Path) -> Location | None:
    """A torch_dist folder given directly (an iter_ folder, NeMo 2's weights/ or the NeMo root)."""
    if is_dist_folder(path / "weights") and not is_dist_folder(path):
        return Location(path, 0, [path / "weights"], dist=True)
    if not is_dist_folder(path):
        return None
    if re.fullmatch(r"iter_\d{7}|release", path.name):
        return Location(path.parent, "release" if path.name == "release" else int(path.name[5:]), [path], dist=True)
    return Location(path.parent if path.name == "weights" else path, 0, [path], dist=True)


def locate(path: Path) -> Location:
    """Find the iteration folder and its rank files under `path` (the root or an iter_ folder)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; give a Megatron checkpoint folder")
    direct = _dist_location(path)
    if direct is not None:
        return direct
    root, iteration = path, None
    tracker = path / TRACKER
    if tracker.is_file():
        text = tracker.read_text().strip()
        iteration = "release" if text == "release" else int(text) if text.isdigit() else None
        if iteration is None:
            raise CheckpointError(f"{tracker} holds {text!r}, not an iteration number or 'release'")
    elif re.fullmatch(r"iter_\d{7}|release", path.name):
        root, iteration = path.parent, "release" if path.name == "release" else int(path.name[5:])
    else:
        found = sorted(p.name for p in path.glob("iter_*") if p.is_dir())
        if len(found) != 1:
            raise CheckpointError(f"{path}: no {TRACKER} and {len(found)} iter_* folders; add the tracker file or name the iter_ folder")
        iteration = int(found[0][5:])
    folder = root / ("release" if iteration == "release" else f"iter_{iteration:07d}")
    ranks: dict[int, Path] = {}
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _RANK_DIR.match(child.name)
        if match and match.group(2) not in (None, "000"):
            raise ArchitectureError(f"{folder}: pipeline-parallel checkpoints (PP > 1) are not supported; convert to PP=1 first")
        if match:
            ranks[int(match.group(1))] = child / RANK_FILE
    if not ranks and is_dist_folder(folder):
        return Location(root, iteration, [folder], dist=True)
    if not ranks:
        raise CheckpointError(f"{folder}: no mp_rank_* folders and no torch_dist metadata.json; not a Megatron checkpoint")
    if sorted(ranks) != list(range(len(ranks))):
        raise CheckpointError(f"{folder}: tensor-parallel ranks {sorted(ranks)} are not 0..{len(ranks) - 1}; the checkpoint is incomplete")
    for file in ranks.values():
        if not file.is_file() and (file.parent / "distrib_optim.pt").is_file():
            raise CheckpointError(f"{file.parent} holds only distributed-optimizer state (distrib_optim.pt), no model "
                                  "weights; give the folder with model_optim_rng.pt")
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; the checkpoint is incomplete")
    return Location(root, iteration, [ranks[i] for i in range(len(ranks))])


def is_megatron_checkpoint(path: Path) -> bool:
    """Whether `path` is a Megatron checkpoint folder (checks names only).

    A folder with Megatron's tracker file counts even when it cannot be read, so that reading
    it reports what is wrong instead of treating it as a Hugging Face folder.
    """
    try:
        locate(Path(path))
    except (CheckpointError, ArchitectureError, OSError, ValueError):
        return (Path(path) / TRACKER).is_file()
    return True


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


@dataclass
class MegatronCheckpoint:
    """Every rank of one Megatron checkpoint, its sizes, and our side information."""

    location: Location
    shapes: Shapes
    vocab: int  # unpadded vocabulary size
    tied: bool
    eps: float
    spec: str  # "te", "local" or "legacy"
    args: dict[str, Any]  # the plain values of rank 0's args
    side: dict[str, Any]
    ranks: list[dict[tuple[str, int | None], torch.Tensor]] = field(repr=False)

    @property
    def tp(self) -> int:
        """Tensor-parallel size."""
        return len(self.ranks)

    def raw(self, rank: int, role: str, layer: int | None = None) -> np.ndarray:
        """Raw elements of one rank's tensor (memory-mapped)."""
        return to_raw(self.ranks[rank][(role, layer)])

    def dtype(self, role: str, layer: int | None = None) -> str:
        """The dtype name of a tensor (the same on every rank)."""
        return dtype_name(self.ranks[0][(role, layer)])

    def reader(self, role: str, layer: int | None = None) -> SegmentReader:
        """Whole-model segments of `role`, read across ranks (vocab rows past `vocab` are padding)."""
        if role in ("input_norm", "mlp_norm", "final_norm"):
            weight = self.norm(role, layer)
            return lambda _seg, _start, _end: weight
        pieces = [rank_segments(role, self.raw(r, role, layer)) for r in range(self.tp)]
        if role in ("embedding", "output"):
            return vocab_reader([p[0] for p in pieces], self.vocab)
        axis = 1 if role in ("proj", "fc2") else 0
        return lambda seg, start, end: take_range([p[seg] for p in pieces], axis, start, end)

    def norm(self, role: str, layer: int | None = None) -> np.ndarray:
        """A replicated norm weight; every rank must hold the same bytes."""
        first = self.raw(0, role, layer)
        for r in range(1, self.tp):
            if not np.array_equal(first, self.raw(r, role, layer)):
                raise CheckpointError(f"{role} of layer {layer} differs between TP ranks 0 and {r}; the checkpoint is inconsistent")
        return first


def _arg(args: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if args.get(name) is not None:
            return args[name]
    return default


def read_checkpoint(path: Path, vocab_size: int | None = None) -> MegatronCheckpoint:
    """Open every rank file of the checkpoint at `path` (tensors memory-mapped) and validate it.

    `vocab_size` overrides the unpadded vocabulary size recorded at export (without a record,
    every embedding row counts as a token).
    """
    location = locate(Path(path))
    if location.dist:
        from .dist import read_dist

        return read_dist(location, vocab_size)
    ranks: list[dict[tuple[str, int | None], Any]] = []
    args: dict[str, Any] = {}
    spec = "te"
    for number, file in enumerate(location.rank_files):
        content = load_rank_file(file)
        if "model" not in content:
            what = "virtual-pipeline (model0, model1...) checkpoints are not supported" if "model0" in content else "it has no 'model' entry"
            raise CheckpointError(f"{file}: {what}")
        if number == 0:
            raw_args = content.get("args")
            if raw_args is None:
                raise CheckpointError(f"{file} has no 'args'; the model sizes cannot be known without them")
            if not isinstance(raw_args, dict) and not hasattr(raw_args, "__dict__"):
                raise CheckpointError(f"{file}: 'args' is a {type(raw_args).__name__}, not a Namespace")
            args = {k: v for k, v in (raw_args if isinstance(raw_args, dict) else vars(raw_args)).items() if plain(v)}
        tensors: dict[tuple[str, int | None], Any] = {}
        for key, value in _flatten(content["model"]).items():
            parsed = parse_name(key)
            if parsed is None:
                continue
            if not hasattr(value, "dtype"):
                raise CheckpointError(f"{file}: {key} is not a tensor")
            if parsed in tensors:
                raise CheckpointError(f"{file}: {key} duplicates another name for {parsed[0]} of layer {parsed[1]}")
            tensors[parsed] = value
            spec = "legacy" if key.startswith("language_model.") else "te" if key.endswith("layer_norm_weight") else spec
            if key.endswith("input_layernorm.weight") and key.startswith("decoder."):
                spec = "local"
        ranks.append(tensors)
    tp = len(ranks)
    if _arg(args, "tensor_model_parallel_size", default=tp) != tp:
        raise CheckpointError(f"args say TP={args['tensor_model_parallel_size']} but the folder holds {tp} ranks")
    heads = int(_arg(args, "num_attention_heads", default=0))
    hidden = int(_arg(args, "hidden_size", default=0))
    if not heads or not hidden or "embedding" not in [role for role, _ in ranks[0]]:
        raise CheckpointError(f"{location.rank_files[0]}: args lack num_attention_heads/hidden_size or the model has no embedding")
    groups = int(_arg(args, "num_query_groups", default=heads)) if args.get("group_query_attention", True) else heads
    shapes = Shapes(
        layers=int(_arg(args, "num_layers", default=0)), hidden=hidden,
        ffn=int(_arg(args, "ffn_hidden_size", default=4 * hidden)), heads=heads, groups=groups,
        head_dim=int(_arg(args, "kv_channels", default=hidden // heads)),
        padded_vocab=int(ranks[0][("embedding", None)].shape[0]) * tp,
    )
    tied = ("output", None) not in ranks[0]
    if "untie_embeddings_and_output_weights" in args and bool(args["untie_embeddings_and_output_weights"]) == tied:
        raise CheckpointError("args.untie_embeddings_and_output_weights does not match the presence of output_layer.weight")
    side_path = location.root / SIDE_FILE
    side = json.loads(side_path.read_text()) if side_path.is_file() else {}
    ckpt = MegatronCheckpoint(
        location, shapes, int(vocab_size or side.get("vocab_size", shapes.padded_vocab)), tied,
        float(_arg(args, "norm_epsilon", "layernorm_epsilon", default=1e-5)), spec, args, side, ranks,
    )
    _validate(ckpt)
    return ckpt


def _validate(ckpt: MegatronCheckpoint) -> None:
    shapes, tp = ckpt.shapes, ckpt.tp
    expected: set[tuple[str, int | None]] = {("embedding", None), ("final_norm", None)}
    expected |= {(role, i) for i in range(shapes.layers) for role in LAYER_ROLES}
    if not ckpt.tied:
        expected.add(("output", None))
    for number, tensors in enumerate(ckpt.ranks):
        missing, extra = sorted(expected - set(tensors), key=str), sorted(set(tensors) - expected, key=str)
        if missing or extra:
            what = f"lacks {missing[0][0]} of layer {missing[0][1]}" if missing else f"has {extra[0][0]} of layer {extra[0][1]} beyond num_layers={shapes.layers}"
            raise CheckpointError(f"TP rank {number} {what}; the checkpoint does not match its args")
        for (role, layer), tensor in tensors.items():
            want = shapes.rank_shape(role, tp)
            if tuple(tensor.shape) != want:
                raise CheckpointError(
                    f"TP rank {number}: {role} of layer {layer} has shape {tuple(tensor.shape)}, expected {want} "
                    "from args (SwiGLU LLaMA-style GPT); the checkpoint does not match its args"
                )
    if not 0 < ckpt.vocab <= shapes.padded_vocab:
        raise SpecError(f"vocab_size {ckpt.vocab} must be between 1 and the padded vocabulary {shapes.padded_vocab}")


def write_tracker(folder: Path, iteration: int | str) -> Path:
    """Write the tracker file and return the iteration folder (created)."""
    (folder / TRACKER).write_text(f"{iteration}\n" if iteration == "release" else f"{int(iteration)}\n")
    sub = folder / ("release" if iteration == "release" else f"iter_{int(iteration):07d}")
    sub.mkdir(parents=True, exist_ok=True)
    return sub


def rank_path(iteration_folder: Path, rank: int) -> Path:
    """Where rank `rank`'s file goes (PP=1 naming)."""
    return iteration_folder / f"mp_rank_{rank:02d}" / RANK_FILE


def copy_side(src_root: Path, out: Path, side: dict[str, Any]) -> None:
    """Copy `hf_files/` from a source checkpoint and write the (updated) side JSON."""
    src_hf = src_root / HF_DIR
    if src_hf.is_dir():
        (out / HF_DIR).mkdir(exist_ok=True)
        for file in sorted(src_hf.iterdir()):
            if file.is_file():
                (out / HF_DIR / file.name).write_bytes(file.read_bytes())
    if side:
        (out / SIDE_FILE).write_text(json.dumps(side, indent=1) + "\n")


def rank_model(shapes: Shapes, spec: str, tied: bool, tensor: Callable[[str, int | None], torch.Tensor]) -> dict[str, Any]:
    """One rank's mcore state dict in `spec` layout; `tensor(role, layer)` makes each (owned) tensor.

    Tensors are made one at a time in state-dict order; `_extra_state` entries are None,
    which both Megatron's local linears and TransformerEngine modules accept.
    """
    spec = "te" if spec == "legacy" else spec
    model: dict[str, Any] = {write_name("embedding", spec): tensor("embedding", None)}
    for i in range(shapes.layers):
        for role in LAYER_ROLES:
            model[write_name(role, spec, i)] = tensor(role, i)
        for module in EXTRA_STATES[spec]:
            model[f"decoder.layers.{i}.{module}._extra_state"] = None
    model[write_name("final_norm", spec)] = tensor("final_norm", None)
    if not tied:
        model[write_name("output", spec)] = tensor("output", None)
    model["output_layer._extra_state"] = None  # the output layer module exists even when tied
    return model
