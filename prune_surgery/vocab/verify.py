"""Check the vocabulary-pruning guarantee on a held-out corpus.

For each tokenizer present in both folders (tokenizer.json, tokenizer.model), every line is
encoded by the original and by the pruned tokenizer:

- *covered* lines (all original ids kept) must give exactly the mapped original ids;
- lossless tokenizers (byte fallback, byte-level BPE) must decode every line to the same text
  as the original does, covered or not;
- no id may reach past the kept vocabulary or the output's ``vocab_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prune_surgery.errors import TokenizerError
from prune_surgery.vocab.corpus import ProgressCallback, iter_batches, iter_texts
from prune_surgery.vocab.encoders import Encoder, load_encoders
from prune_surgery.vocab.files import read_optional_json
from prune_surgery.vocab.keepfile import id_map, load_keep_vocab


@dataclass
class VocabFigures:
    """What one tokenizer does to the held-out corpus before and after pruning."""

    tokenizer: str
    lines: int = 0
    covered_lines: int = 0
    identical_lines: int = 0
    covered_mismatches: int = 0
    decode_mismatches: int = 0
    out_of_range: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    lossless: bool = False
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the guarantee holds on every line."""
        lossless_ok = self.decode_mismatches == 0 or not self.lossless
        return self.covered_mismatches == 0 and self.out_of_range == 0 and lossless_ok

    def share(self, part: int) -> float:
        """``part`` divided by the number of lines (0 when there are none)."""
        return part / self.lines if self.lines else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON-ready values, derived figures included."""
        data = asdict(self)
        data.update(
            ok=self.ok,
            identical_share=self.share(self.identical_lines),
            covered_share=self.share(self.covered_lines),
            tokens_per_line_before=self.share(self.tokens_before),
            tokens_per_line_after=self.share(self.tokens_after),
        )
        return data


def _note(figures: VocabFigures, message: str) -> None:
    if len(figures.examples) < 5:
        figures.examples.append(message)


def compare_batch(
    figures: VocabFigures, old: Encoder, new: Encoder, texts: Sequence[str], mapping: dict[int, int], limit: int
) -> None:
    """Add one batch of lines to ``figures``."""
    for text, before, after in zip(texts, old.encode_batch(texts), new.encode_batch(texts), strict=True):
        figures.lines += 1
        figures.tokens_before += len(before)
        figures.tokens_after += len(after)
        if any(i < 0 or i >= limit for i in after):
            figures.out_of_range += 1
            _note(figures, f"id out of range in {text[:60]!r}")
            continue
        covered = all(i in mapping for i in before)
        if covered:
            figures.covered_lines += 1
            if [mapping[i] for i in before] == after:
                figures.identical_lines += 1
            else:
                figures.covered_mismatches += 1
                _note(figures, f"covered line tokenized differently: {text[:60]!r}")
        if new.decode(after) != old.decode(before):
            figures.decode_mismatches += 1
            _note(figures, f"decodes differently: {text[:60]!r}")


def output_vocab_limit(out: Path, kept: Sequence[int]) -> int:
    """The smallest id no token may reach: the kept count, or the output's vocab_size if smaller."""
    cfg = read_optional_json(out / "config.json")
    size = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    return min(len(kept), size) if isinstance(size, int) else len(kept)


def vocab_figures(
    src: Path,
    out: Path,
    corpus: Sequence[Path],
    text_field: str = "text",
    keep_vocab: Path | None = None,
    progress: ProgressCallback | None = None,
) -> list[VocabFigures]:
    """Figures for every tokenizer the source and output share (the ``vocab verify`` API).

    The id map comes from ``out/prune_surgery.json`` (``keep.vocab``) unless ``keep_vocab``
    names another file.
    """
    src, out = Path(src), Path(out)
    kept = load_keep_vocab(keep_vocab if keep_vocab is not None else out / "prune_surgery.json")
    mapping = id_map(kept)
    limit = output_vocab_limit(out, kept)
    old_encoders = {enc.name: enc for enc in load_encoders(src)}
    new_encoders = {enc.name: enc for enc in load_encoders(out)}
    missing = sorted(set(old_encoders) - set(new_encoders))
    if missing:
        raise TokenizerError(f"{out} lacks {', '.join(missing)}, which {src} has; rerun the pruning")
    pairs = [(old_encoders[name], new_encoders[name]) for name in old_encoders]
    figures = [VocabFigures(old.name, lossless=old.lossless) for old, _ in pairs]
    for batch in iter_batches(iter_texts(corpus, text_field, progress), 512):
        for fig, (old, new) in zip(figures, pairs, strict=True):
            compare_batch(fig, old, new, batch, mapping, limit)
    return figures
