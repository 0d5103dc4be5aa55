"""BPE merge closure: keep every token a kept token is built from.

A BPE tokenizer builds a token by merging adjacent symbols, highest priority first (the
merge rank in tokenizer.json, the piece score in SentencePiece).  Inside one output token the
merges happen exactly as they would on that token's characters alone, so the *tree* of a token
is found by running BPE on its characters.  If every node of the tree of every kept token is
kept, then every merge the original tokenizer performs on covered text is still available and
is still the best one available, so the pruned tokenizer produces the same tokens.  Dropping a
merge parent (as naive pruning does) makes kept tokens unreachable and changes tokenization.

When the tree cannot be found by simulation (``continuing_subword_prefix`` or
``end_of_word_suffix`` in tokenizer.json), both parents of *every* merge producing a kept token
are kept instead: a superset, so the guarantee still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sentencepiece import sentencepiece_model_pb2

from prune_surgery.vocab.files import (
    TokenizerFiles,
    hf_model_ids,
    load_spm_proto,
    load_tokenizer_json,
    model_type,
)

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece

#: Priority of merging two adjacent symbols (lower first), or None when they do not merge.
Priority = Callable[[str, str], "float | None"]


def run_bpe(symbols: list[str], priority: Priority) -> tuple[list[str], list[str]]:
    """Greedy BPE on ``symbols``: lowest priority first, leftmost on ties.

    Returns the symbols created by merges (in merge order) and the final symbols.
    """
    symbols = list(symbols)
    created: list[str] = []
    while len(symbols) > 1:
        best: float | None = None
        best_at = -1
        for i in range(len(symbols) - 1):
            p = priority(symbols[i], symbols[i + 1])
            if p is not None and (best is None or p < best):
                best, best_at = p, i
        if best is None:
            break
        merged = symbols[best_at] + symbols[best_at + 1]
        symbols[best_at : best_at + 2] = [merged]
        created.append(merged)
    return created, symbols


def parse_merge(entry: str | list[str]) -> tuple[str, str]:
    """A tokenizer.json merge, either ``"a b"`` or ``["a", "b"]``, as a pair."""
    if isinstance(entry, str):
        left, _, right = entry.partition(" ")
        return left, right
    return str(entry[0]), str(entry[1])


@dataclass
class BPEModel:
    """What the closure needs to know about one BPE tokenizer."""

    name: str
    ids: dict[str, int]  # mergeable token -> id
    priority: Priority | None  # None: use ``parents`` (every merge producing a token)
    parents: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _cache: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._tokens = {i: t for t, i in self.ids.items()}

    def needed(self, token_id: int) -> frozenset[int]:
        """Ids of the tokens ``token_id`` is built from (its merge tree, base characters included)."""
        if token_id in self._cache:
            return self._cache[token_id]
        token = self._tokens.get(token_id)
        nodes: set[str] = set()
        if token is not None and len(token) > 1:
            if self.priority is not None:
                created, final = run_bpe(list(token), self.priority)
                nodes.update(token)
                nodes.update(created)
                if final != [token]:  # unreachable by merges alone: fall back to all merge parents
                    nodes.update(p for pair in self.parents.get(token, ()) for p in pair)
            else:
                nodes.update(p for pair in self.parents.get(token, ()) for p in pair)
        result = frozenset(self.ids[n] for n in nodes if n in self.ids and n != token)
        self._cache[token_id] = result
        return result


def spm_bpe_model(proto: sentencepiece_model_pb2.ModelProto) -> BPEModel | None:
    """The merge structure of a SentencePiece BPE model (None for Unigram models)."""
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        return None
    mergeable = (_Piece.NORMAL, _Piece.UNUSED)
    ids = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in mergeable}
    scores = {p.piece: p.score for p in proto.pieces if p.type in mergeable}

    def priority(left: str, right: str) -> float | None:
        score = scores.get(left + right)
        return None if score is None else -score

    return BPEModel("tokenizer.model", ids, priority)


def hf_bpe_model(data: dict) -> BPEModel | None:
    """The merge structure of a tokenizer.json BPE model (None for other model types)."""
    if model_type(data) != "BPE":
        return None
    model = data["model"]
    added = {a["content"] for a in data.get("added_tokens") or [] if a.get("special")}
    ids = {t: i for t, i in hf_model_ids(data).items() if t not in added}
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    ranks: dict[tuple[str, str], int] = {}
    parents: dict[str, list[tuple[str, str]]] = {}
    for rank, entry in enumerate(model.get("merges") or []):
        left, right = parse_merge(entry)
        ranks.setdefault((left, right), rank)
        result = left + right[len(prefix) :] if prefix else left + right
        parents.setdefault(result, []).append((left, right))
    if prefix or suffix:
        return BPEModel("tokenizer.json", ids, None, parents)

    def priority(left: str, right: str) -> float | None:
        return ranks.get((left, right))

    return BPEModel("tokenizer.json", ids, priority, parents)


def bpe_models(files: TokenizerFiles) -> list[BPEModel]:
    """The BPE tokenizers of a folder (empty for Unigram / WordPiece only)."""
    models: list[BPEModel] = []
    if files.spm is not None:
        spm = spm_bpe_model(load_spm_proto(files.spm))
        if spm is not None:
            models.append(spm)
    if files.hf_json is not None:
        hf = hf_bpe_model(load_tokenizer_json(files.hf_json))
        if hf is not None:
            models.append(hf)
    return models


def close(kept: Iterable[int], models: Iterable[BPEModel]) -> set[int]:
    """The smallest superset of ``kept`` that holds the merge tree of each of its tokens."""
    models = list(models)
    closed = set(kept)
    todo = list(closed)
    while todo:
        token_id = todo.pop()
        for model in models:
            for needed in model.needed(token_id):
                if needed not in closed:
                    closed.add(needed)
                    todo.append(needed)
    return closed


def violations(kept: Iterable[int], models: Iterable[BPEModel], limit: int = 5) -> list[tuple[str, int, int]]:
    """Up to ``limit`` (tokenizer, kept id, missing id) triples where a merge parent was dropped."""
    kept_set = set(kept)
    found: list[tuple[str, int, int]] = []
    for model in models:
        for token_id in sorted(kept_set):
            for needed in sorted(model.needed(token_id) - kept_set):
                found.append((model.name, token_id, needed))
                if len(found) >= limit:
                    return found
    return found
