"""Write a LLaMA-shaped Hugging Face checkpoint folder of random bf16 weights, fast, without torch.

The folder looks like what ``save_pretrained`` writes for a ``LlamaForCausalLM``:
``config.json``, ``generation_config.json``, ``model-0000K-of-0000N.safetensors`` shards
(or a single ``model.safetensors``) and ``model.safetensors.index.json``.

Generation speed matters more than randomness quality: a pool of a few million random
normal bf16 values is drawn once and every tensor is written as a run of that pool starting
at a random offset (the pool length is prime, so rows of a tensor differ from each other).
RMSNorm weights are ones, as after initialisation.

``--sparse`` writes the real headers and leaves every tensor's data as a hole (``truncate``),
so a 141 GB Llama-3-70B-shaped checkpoint costs a few kilobytes of disk; its weights read
as zeros.

A marker file ``bench_checkpoint.json`` records the shape; :func:`ensure_checkpoint` reuses a
folder whose marker matches and whose files have the expected sizes.

Usage::

    python bench/make_checkpoint.py OUT --layers 24 --hidden 2560 --ffn 6912 --heads 20 \
        --vocab 32000 [--kv-heads 20] [--shard-size 2GB] [--sparse] [--validate]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np

MARKER = "bench_checkpoint.json"
POOL_ELEMENTS = 4_194_301  # prime, ~8 MiB of bf16
BF16_ONE = 0x3F80


@dataclasses.dataclass(frozen=True)
class Shape:
    """The size of a LLaMA-shaped model and how it is laid out on disk."""

    layers: int = 24
    hidden: int = 2560
    ffn: int = 6912
    heads: int = 20
    kv_heads: int = 20
    vocab: int = 32000
    shard_size: int = 2_000_000_000
    tied: bool = False
    sparse: bool = False
    seed: int = 0

    @property
    def head_dim(self) -> int:
        """Rows of q/k/v per head."""
        return self.hidden // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, in ``state_dict`` order."""
        h, hd = self.hidden, self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "self_attn.q_proj.weight", (self.heads * hd, h)),
                (p + "self_attn.k_proj.weight", (self.kv_heads * hd, h)),
                (p + "self_attn.v_proj.weight", (self.kv_heads * hd, h)),
                (p + "self_attn.o_proj.weight", (h, self.heads * hd)),
                (p + "mlp.gate_proj.weight", (self.ffn, h)),
                (p + "mlp.up_proj.weight", (self.ffn, h)),
                (p + "mlp.down_proj.weight", (h, self.ffn)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,)),
            ]
        out.append(("model.norm.weight", (h,)))
        if not self.tied:
            out.append(("lm_head.weight", (self.vocab, h)))
        return out

    def total_bytes(self) -> int:
        """Bytes of tensor data (bf16)."""
        return sum(2 * int(np.prod(s)) for _, s in self.tensors())

    def parameters(self) -> int:
        """Number of parameters."""
        return self.total_bytes() // 2

    def config(self) -> dict:
        """The ``config.json`` of this model."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.ffn,
            "max_position_embeddings": 4096,
            "mlp_bias": False,
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "bfloat16",
            "dtype": "bfloat16",
            "use_cache": True,
            "vocab_size": self.vocab,
        }


def parse_size(text: str) -> int:
    """Parse ``2GB``, ``500MB``, ``1GiB`` or a plain byte count (decimal units as in HF)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 2GB, 500MB, 123456")
    base = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * base**power)


def split_shards(shape: Shape) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Group tensors into shards greedily in state-dict order, as ``save_pretrained`` does."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in shape.tensors():
        nbytes = 2 * int(np.prod(dims))
        if shards[-1] and size + nbytes > shape.shard_size:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """File names of ``count`` shards."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def header_bytes(tensors: list[tuple[str, tuple[int, ...]]]) -> tuple[bytes, list[tuple[str, int, int]]]:
    """The safetensors header (length prefix + JSON padded to 8) and (name, begin, end) layout.

    Tensors are laid out sorted by name, as the ``safetensors`` library does for one dtype.
    """
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    layout = []
    offset = 0
    for name, dims in sorted(tensors):
        nbytes = 2 * int(np.prod(dims))
        meta[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
        layout.append((name, offset, offset + nbytes))
        offset += nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, layout


def random_pool(seed: int, std: float = 0.02) -> np.ndarray:
    """Twice the pool of random normal bf16 bit patterns, so any window of POOL_ELEMENTS is contiguous."""
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal(POOL_ELEMENTS, dtype=np.float32) * np.float32(std)
    bits = (f32.view(np.uint32) >> 16).astype(np.uint16)  # truncate to bf16
    return np.concatenate([bits, bits])


def write_tensor(fh, pool: np.ndarray, elements: int, rng: np.random.Generator, ones: bool) -> None:
    """Append ``elements`` bf16 values to ``fh`` from the pool (or ones for norm weights)."""
    if ones:
        fh.write(np.full(elements, BF16_ONE, dtype=np.uint16).tobytes())
        return
    start = int(rng.integers(POOL_ELEMENTS))
    while elements:
        n = min(elements, POOL_ELEMENTS)
        fh.write(memoryview(pool[start : start + n]).cast("B"))
        elements -= n
        start = (start + n) % POOL_ELEMENTS


def expected_files(shape: Shape) -> dict[str, int]:
    """Every safetensors file of the checkpoint and its size in bytes."""
    shards = split_shards(shape)
    out = {}
    for fname, tensors in zip(shard_names(len(shards)), shards, strict=True):
        head, layout = header_bytes(tensors)
        out[fname] = len(head) + layout[-1][2]
    return out


def write_checkpoint(out: Path, shape: Shape) -> Path:
    """Write the checkpoint folder ``out`` (replaced if present) and return it."""
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shards = split_shards(shape)
    names = shard_names(len(shards))
    pool = None if shape.sparse else random_pool(shape.seed)
    rng = np.random.default_rng(shape.seed + 1)
    weight_map: dict[str, str] = {}
    for fname, tensors in zip(names, shards, strict=True):
        head, layout = header_bytes(tensors)
        dims = dict(tensors)
        with open(tmp / fname, "wb") as fh:
            fh.write(head)
            if shape.sparse:
                fh.truncate(len(head) + layout[-1][2])
            else:
                for name, _, _ in layout:
                    elements = int(np.prod(dims[name]))
                    write_tensor(fh, pool, elements, rng, ones=name.endswith("norm.weight"))
        weight_map.update({name: fname for name, _ in tensors})
    if len(names) > 1:
        index = {
            "metadata": {"total_size": shape.total_bytes(), "total_parameters": shape.parameters()},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    gen = {"bos_token_id": 1, "eos_token_id": 2, "_from_model_config": True}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (tmp / MARKER).write_text(json.dumps(dataclasses.asdict(shape), indent=2) + "\n")
    tmp.rename(out)
    return out


def is_cached(out: Path, shape: Shape) -> bool:
    """True if ``out`` holds a finished checkpoint of exactly ``shape``."""
    try:
        if json.loads((out / MARKER).read_text()) != dataclasses.asdict(shape):
            return False
        return all((out / f).stat().st_size == n for f, n in expected_files(shape).items())
    except (OSError, ValueError):
        return False


def ensure_checkpoint(out: Path, shape: Shape, log=print) -> tuple[Path, bool]:
    """Write the checkpoint unless a matching one is cached; return (folder, generated?)."""
    if is_cached(out, shape):
        log(f"checkpoint: reusing {out} ({shape.total_bytes() / 2**30:.2f} GiB)")
        return out, False
    t0 = time.perf_counter()
    write_checkpoint(out, shape)
    kind = "sparse " if shape.sparse else ""
    log(f"checkpoint: wrote {kind}{out} ({shape.total_bytes() / 2**30:.2f} GiB) "
        f"in {time.perf_counter() - t0:.1f} s")
    return out, True


def validate(folder: Path, shape: Shape) -> int:
    """Open every shard with the official ``safetensors.safe_open``; check names, shapes, dtypes.

    Returns the number of tensors checked; raises ``AssertionError`` on a mismatch.
    """
    from safetensors import safe_open

    expected = dict(shape.tensors())
    index_path = folder / "model.safetensors.index.json"
    weight_map = json.loads(index_path.read_text())["weight_map"] if index_path.exists() else None
    seen = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            assert f.metadata() == {"format": "pt"}, path
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sl = f.get_slice(name)
                assert sl.get_dtype() == "BF16", (name, sl.get_dtype())
                assert tuple(sl.get_shape()) == expected[name], (name, sl.get_shape())
                assert weight_map is None or weight_map[name] == path.name, name
                seen += 1
    assert seen == len(expected), (seen, len(expected))
    return seen


def add_shape_arguments(p: argparse.ArgumentParser) -> None:
    """The shape options shared by the CLI of this module."""
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--ffn", type=int, default=6912)
    p.add_argument("--heads", type=int, default=20)
    p.add_argument("--kv-heads", type=int, default=None, help="default: same as --heads")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shard-size", type=parse_size, default=parse_size("2GB"))
    p.add_argument("--tied", action="store_true", help="tie lm_head to embed_tokens")
    p.add_argument("--sparse", action="store_true", help="real headers, data left as holes")
    p.add_argument("--seed", type=int, default=0)


def shape_from_args(a: argparse.Namespace) -> Shape:
    """Build a :class:`Shape` from parsed arguments."""
    if a.hidden % a.heads:
        raise SystemExit("--hidden must be a multiple of --heads")
    kv = a.kv_heads or a.heads
    if a.heads % kv:
        raise SystemExit("--heads must be a multiple of --kv-heads")
    return Shape(a.layers, a.hidden, a.ffn, a.heads, kv, a.vocab, a.shard_size, a.tied, a.sparse, a.seed)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    add_shape_arguments(p)
    p.add_argument("--force", action="store_true", help="rewrite even if a matching one exists")
    p.add_argument("--validate", action="store_true", help="then open it with safetensors.safe_open")
    a = p.parse_args(argv)
    shape = shape_from_args(a)
    if a.force and a.out.exists():
        shutil.rmtree(a.out)
    ensure_checkpoint(a.out, shape)
    if a.validate:
        print(f"validated {validate(a.out, shape)} tensors with safetensors.safe_open")


if __name__ == "__main__":
    main()
