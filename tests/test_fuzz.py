"""Fuzzed inputs: every case ends in success or one deliberate error, never a crash, hang or memory blow-up.

Each input kind starts from a valid tiny checkpoint and lets hypothesis damage one file: the
safetensors header (as JSON, and as raw bytes), the data section, the index, config.json, a keep
file, a spec file, the keep-vocab file and tokenizer.json.  Every case plans and runs the job in
process: it must succeed, or raise a PruneSurgeryError whose message is one line (what the CLI
prints as ``error: ...`` with exit 2); the source is never modified; OUT exists only after success;
no case runs past a 20 s alarm or traces more than 64 MiB.  The Megatron pickles have a fuzz test in
tests/megatron/test_megatron_fuzz.py.

Cases per kind: PRUNE_SURGERY_FUZZ (default 40) examples, derandomized so CI is reproducible;
``PRUNE_SURGERY_FUZZ=2000 pytest tests/test_fuzz.py -s`` is the longer, randomized run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prune_surgery as ps
from models import tree_digest
from prune_surgery.errors import PruneSurgeryError
from prune_surgery.spec import read_spec_file, spec_from_dict

EXAMPLES = int(os.environ.get("PRUNE_SURGERY_FUZZ", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
                suppress_health_check=list(HealthCheck))
MEMORY_LIMIT = 16 << 20  # the run streams in 64 KiB blocks: a few MiB at most
SPEC = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 24, "drop_layers": "1"}
TRIED: dict[str, dict[str, int]] = {}
PEAKS: list[int] = []

HIDDEN, FFN, LAYERS, VOCAB, HEADS, KV = 32, 48, 3, 40, 4, 2
CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=HIDDEN, intermediate_size=FFN,
              num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV, vocab_size=VOCAB,
              head_dim=HIDDEN // HEADS, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def shapes() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    kv = KV * HIDDEN // HEADS
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (kv, HIDDEN),
                    p + "self_attn.v_proj.weight": (kv, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                    p + "mlp.gate_proj.weight": (FFN, HIDDEN), p + "mlp.up_proj.weight": (FFN, HIDDEN),
                    p + "mlp.down_proj.weight": (HIDDEN, FFN), p + "input_layernorm.weight": (HIDDEN,),
                    p + "post_attention_layernorm.weight": (HIDDEN,)})
    out.update({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    return out


def encode(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def headers_and_data() -> list[tuple[str, dict[str, Any], bytes]]:
    """Two shards (with an index): file name, header, data section."""
    rng = np.random.default_rng(0)
    names = list(shapes().items())
    split = len(names) // 2
    shards = []
    for number, part in enumerate((names[:split], names[split:]), 1):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        data = b""
        for name, shape in part:
            blob = (rng.standard_normal(shape, dtype=np.float32) * 0.1).tobytes()
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(data), len(data) + len(blob)]}
            data += blob
        shards.append((f"model-{number:05d}-of-00002.safetensors", header, data))
    return shards


def tokenizer_files() -> dict[str, bytes]:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>"}
    return {"tokenizer.json": tok.to_str().encode(), "tokenizer_config.json": json.dumps(config).encode()}


def write_source(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def valid_files() -> dict[str, bytes]:
    shards = headers_and_data()
    files = {name: encode(header, data) for name, header, data in shards}
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": sum(len(d) for _, _, d in shards)}, "weight_map": {
        t: name for name, header, _ in shards for t in header if t != "__metadata__"}}).encode()
    files["config.json"] = json.dumps(CONFIG).encode()
    files.update(tokenizer_files())
    return files


@contextlib.contextmanager
def bounded(seconds: int = 20) -> Iterator[None]:
    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a fuzz case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        PEAKS.append(peak)
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        assert peak < MEMORY_LIMIT, f"a fuzz case traced {peak} bytes"


def check_case(kind: str, files: dict[str, bytes], spec: Callable[[Path], ps.PruneSpec] | None = None) -> None:
    """Plan and run the job on a source made of `files`; only success or a one-line deliberate error."""
    counts = TRIED.setdefault(kind, {"ok": 0, "error": 0})
    with tempfile.TemporaryDirectory() as tmp:
        src = write_source(Path(tmp) / "src", files)
        before = tree_digest(src)
        out = Path(tmp) / "out"
        try:
            with bounded():
                the_spec = spec(Path(tmp)) if spec else spec_from_dict(SPEC)
                ps.plan(src, the_spec)
                ps.run(src, out, the_spec, note=lambda line: None, block_bytes=64 << 10)
        except PruneSurgeryError as exc:
            assert "\n" not in exc.message and exc.message, exc.message
            assert not out.exists(), f"{kind}: OUT written although the run failed: {exc.message}"
            counts["error"] += 1
        else:
            assert out.is_dir()
            counts["ok"] += 1
        assert tree_digest(src) == before, f"{kind}: the source was modified"
        left = {p.name for p in Path(tmp).iterdir()} - {"src", "out", "keep.json", "spec.yaml", "keep-vocab.json"}
        assert not left, f"{kind}: temporary files left next to OUT: {sorted(left)}"


def report(kind: str) -> None:
    counts = TRIED[kind]
    print(f"\nfuzz {kind}: {sum(counts.values())} cases ({counts['ok']} succeeded, {counts['error']} one-line errors)")
    assert sum(counts.values()) >= min(EXAMPLES, 10)


# -- strategies -------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(-3, 3 * HIDDEN), st.sampled_from([0, -1, 2**31, 2**32 + 7, 2**63, 2**64, 10**30, -(2**63)]),
                    st.integers(-(2**70), 2**70))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                    st.sampled_from(["F32", "BF16", "F8_E4M3", "I64", "BOOL", "../x", "", "llama", "model.safetensors"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                      max_leaves=10)
TENSOR_NAMES = st.sampled_from(sorted(shapes()))


def mutate_tree(data: st.DataObject, tree: Any, depth: int = 0) -> Any:
    """Replace, delete or add one node somewhere in a JSON tree."""
    if isinstance(tree, dict) and tree and depth < 4 and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(tree, key=str)))
        action = data.draw(st.sampled_from(["descend", "replace", "delete", "add"]))
        tree = dict(tree)
        if action == "descend":
            tree[key] = mutate_tree(data, tree[key], depth + 1)
        elif action == "replace":
            tree[key] = data.draw(VALUES)
        elif action == "delete":
            del tree[key]
        else:
            tree[data.draw(st.text(max_size=8))] = data.draw(VALUES)
        return tree
    if isinstance(tree, list) and tree and depth < 4 and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(tree) - 1))
        tree = list(tree)
        tree[index] = mutate_tree(data, tree[index], depth + 1)
        return tree
    return data.draw(VALUES)


# -- the input kinds -----------------------------------------------------------------------------
def test_fuzz_safetensors_header_json() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        shards = headers_and_data()
        number = data.draw(st.integers(0, 1))
        name, header, payload = shards[number]
        tensor = data.draw(st.sampled_from(sorted(header)))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "whole", "entry"]))
        header = json.loads(json.dumps(header))
        if field == "whole":
            header = mutate_tree(data, header)
        elif field == "entry":
            header[tensor] = mutate_tree(data, header[tensor])
        elif field == "shape":
            header[tensor][field] = data.draw(st.lists(NUMBERS, max_size=4) | VALUES)
        elif field == "data_offsets":
            header[tensor][field] = data.draw(st.lists(NUMBERS, min_size=2, max_size=2) | VALUES)
        else:
            header[tensor] = {**header[tensor], field: data.draw(SCALARS)} if isinstance(header[tensor], dict) else header[tensor]
        files = valid_files()
        files[name] = encode(header, payload) if isinstance(header, dict) else json.dumps(header).encode()
        check_case("safetensors header (JSON)", files)

    case()
    report("safetensors header (JSON)")


def test_fuzz_safetensors_header_bytes() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        files = valid_files()
        name = data.draw(st.sampled_from(sorted(n for n in files if n.endswith(".safetensors"))))
        raw = bytearray(files[name])
        (length,) = struct.unpack("<Q", raw[:8])
        how = data.draw(st.sampled_from(["length", "flip", "splice", "cut"]))
        if how == "length":
            raw[:8] = struct.pack("<Q", data.draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, length + 64))))
        elif how == "flip":
            for _ in range(data.draw(st.integers(1, 8))):
                at = data.draw(st.integers(8, 8 + length - 1))
                raw[at] = data.draw(st.integers(0, 255))
        elif how == "splice":
            at = data.draw(st.integers(8, 8 + length))
            raw[at:at] = data.draw(st.binary(max_size=16))
        else:
            raw = raw[: data.draw(st.integers(0, 8 + length + 16))]
        files[name] = bytes(raw)
        check_case("safetensors header (bytes)", files)

    case()
    report("safetensors header (bytes)")


def test_fuzz_safetensors_data_section() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        files = valid_files()
        name = data.draw(st.sampled_from(sorted(n for n in files if n.endswith(".safetensors"))))
        raw = files[name]
        (length,) = struct.unpack("<Q", raw[:8])
        size = data.draw(st.one_of(st.integers(8 + length, len(raw) + 64), st.just(len(raw) - 1), st.just(len(raw) + 1)))
        raw = raw[:size] + bytes(max(0, size - len(raw)))
        files[name] = data.draw(st.sampled_from([raw, raw[:size] + b"\xff" * 4]))
        check_case("safetensors data section", files)

    case()
    report("safetensors data section")


def test_fuzz_index() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        files = valid_files()
        index = json.loads(files["model.safetensors.index.json"])
        how = data.draw(st.sampled_from(["tree", "file", "raw"]))
        if how == "tree":
            index = mutate_tree(data, index)
        elif how == "file":
            key = data.draw(TENSOR_NAMES)
            index["weight_map"][key] = data.draw(st.sampled_from(["../model-00001-of-00002.safetensors", "/etc/passwd", "",
                                                                   "model-00003-of-00002.safetensors", "config.json",
                                                                   "sub/../model-00001-of-00002.safetensors", "a\\b"]) | VALUES)
        files["model.safetensors.index.json"] = (data.draw(st.binary(max_size=40)) if how == "raw"
                                                 else json.dumps(index).encode())
        check_case("model.safetensors.index.json", files)

    case()
    report("model.safetensors.index.json")


CONFIG_KEYS = sorted(CONFIG) + ["max_window_layers", "layer_types", "rope_scaling", "text_config"]


def test_fuzz_config() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        files = valid_files()
        config: Any = dict(CONFIG)
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from(CONFIG_KEYS))
            if data.draw(st.booleans()) and key in config:
                del config[key]
            else:
                config[key] = data.draw(VALUES)
        if data.draw(st.integers(0, 9)) == 0:
            config = data.draw(VALUES)
        files["config.json"] = json.dumps(config).encode()
        check_case("config.json", files)

    case()
    report("config.json")


def _valid_keep() -> dict[str, Any]:
    return {"layers": [0, 2], "hidden": list(range(0, HIDDEN, 2)),
            "heads": {str(i): [0, 2] for i in (0, 2)}, "ffn": {str(i): list(range(24)) for i in (0, 2)}}


def test_fuzz_keep_file() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        keep = mutate_tree(data, _valid_keep())
        wrapped = data.draw(st.sampled_from(["bare", "record"]))
        text = json.dumps({"keep": keep} if wrapped == "record" else keep).encode()
        if data.draw(st.integers(0, 9)) == 0:
            text = data.draw(st.binary(max_size=30))

        def spec(tmp: Path) -> ps.PruneSpec:
            (tmp / "keep.json").write_bytes(text)
            return spec_from_dict({"keep": tmp / "keep.json"})

        check_case("keep file", valid_files(), spec)

    case()
    report("keep file")


SPEC_KEYS = ["drop_layers", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "method", "seed", "balance", "max_shard_size", "norm_rescale", "keep",
             "hidden_size_remain", "num_attention_heads_remain", "ffn_hidden_size_remain", "pad_vocab_to_multiple_of",
             "num_experts", "unknown_option"]


def test_fuzz_spec_file() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        body: Any = {key: data.draw(VALUES | st.sampled_from(["1,2", "0-1", "5GB", "-3", "random", "magnitude", "1e30"]))
                     for key in data.draw(st.lists(st.sampled_from(SPEC_KEYS), max_size=4, unique=True))}
        how = data.draw(st.sampled_from(["json", "yaml", "raw"]))
        if how == "raw":
            text = data.draw(st.binary(max_size=40))
        else:
            import yaml

            text = (json.dumps(body) if how == "json" else yaml.safe_dump(body, allow_unicode=True)).encode()

        def spec(tmp: Path) -> ps.PruneSpec:
            (tmp / "spec.yaml").write_bytes(text)
            return spec_from_dict(read_spec_file(tmp / "spec.yaml"))

        check_case("spec file", valid_files(), spec)

    case()
    report("spec file")


def test_fuzz_keep_vocab_and_tokenizer() -> None:
    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        files = valid_files()
        kept: Any = {"vocab": sorted(set(data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=4, max_size=VOCAB))) | {0, 1, 2, 3})}
        target = data.draw(st.sampled_from(["keep-vocab", "tokenizer.json", "tokenizer_config.json"]))
        if target == "keep-vocab":
            kept = mutate_tree(data, {"keep": kept} if data.draw(st.booleans()) else kept)
        else:
            tree = json.loads(files[target])
            files[target] = json.dumps(mutate_tree(data, tree)).encode()
        text = json.dumps(kept).encode()

        def spec(tmp: Path) -> ps.PruneSpec:
            (tmp / "keep-vocab.json").write_bytes(text)
            return spec_from_dict({"keep_vocab": tmp / "keep-vocab.json", "drop_layers": "1"})

        check_case("keep-vocab + tokenizer files", files, spec)

    case()
    report("keep-vocab + tokenizer files")


def test_the_fuzzed_base_case_is_valid(tmp_path: Path) -> None:
    """The unmutated source prunes, and the keep-vocab job rewrites its tokenizer (so the fuzz reaches it)."""
    src = write_source(tmp_path / "src", valid_files())
    ps.run(src, tmp_path / "out", spec_from_dict(SPEC))
    kept = sorted(set(range(0, VOCAB, 2)) | {1, 3})
    (tmp_path / "kv.json").write_text(json.dumps({"vocab": kept}))
    ps.run(src, tmp_path / "vocab", spec_from_dict({"keep_vocab": tmp_path / "kv.json"}))
    assert json.loads((tmp_path / "vocab" / "config.json").read_text())["vocab_size"] == len(kept)
    assert len(json.loads((tmp_path / "vocab" / "tokenizer.json").read_text())["model"]["vocab"]) == len(kept)


def _valid_scores() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A scores file for the fuzzed model, as `prune-surgery calibrate` writes one (numpy only)."""
    from prune_surgery.calibrate.scorefile import config_hash

    rng = np.random.default_rng(0)
    tables: dict[str, np.ndarray] = {}
    for layer in range(LAYERS):
        for space, units in (("hidden", HIDDEN), ("heads", HEADS), ("ffn", FFN)):
            for stat in ("abs", "sq", "win_sq"):
                tables[f"{space}/{layer}/{stat}"] = rng.random(units)
            tables[f"{space}/{layer}/tokens"] = np.array([64.0])
    tables["layers/all/influence"] = rng.random(LAYERS)
    tables["layers/all/tokens"] = np.full(LAYERS, 64.0)
    tables["layers/all/angular"] = rng.random((LAYERS + 1, LAYERS + 1))
    provenance = {"config_hash": config_hash(CONFIG), "data_hash": "0" * 64, "windows": 4, "seq_len": 16, "tokens": 64,
                  "source": {"path": "src"}, "version": ps.__version__}
    return tables, provenance


def test_fuzz_scores_file() -> None:
    from safetensors.numpy import save

    from prune_surgery.calibrate.scorefile import FORMAT

    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        tables, provenance = _valid_scores()
        what = data.draw(st.sampled_from(["table", "drop", "provenance", "metadata", "bytes"]))
        metadata = {"format": FORMAT, "provenance": json.dumps(provenance)}
        if what == "table":
            key = data.draw(st.sampled_from(sorted(tables)))
            shape = data.draw(st.lists(st.integers(0, 40), min_size=0, max_size=2))
            fill = data.draw(st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e308]))
            tables[key] = np.full(shape, fill, dtype=data.draw(st.sampled_from([np.float64, np.float32, np.int64])))
        elif what == "drop":
            for key in data.draw(st.lists(st.sampled_from(sorted(tables)), max_size=6)):
                tables.pop(key, None)
        elif what == "provenance":
            metadata["provenance"] = json.dumps(mutate_tree(data, provenance))
        elif what == "metadata":
            metadata = mutate_tree(data, metadata)
            metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
        blob = save(tables, metadata=metadata)
        if what == "bytes":
            at = data.draw(st.integers(0, len(blob) - 1))
            blob = blob[:at] + data.draw(st.binary(min_size=0, max_size=16)) + blob[at + 1 :]

        def spec(tmp: Path) -> ps.PruneSpec:
            (tmp / "keep.json").write_bytes(blob)  # (the name check_case allows next to OUT)
            return spec_from_dict({**SPEC, "method": "activation", "scores": str(tmp / "keep.json")})

        check_case("scores file", valid_files(), spec)

    case()
    report("scores file")
