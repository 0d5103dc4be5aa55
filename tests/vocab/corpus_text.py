"""Text the vocabulary tests train and count on: English prose, code, accented and non-Latin words.

Lines are built deterministically from the word lists below (seeded RNG), so every run sees the
same corpus; ``held_out_lines`` uses another seed and adds lines with characters that never
occur in training (byte fallback / byte-level territory).
"""

from __future__ import annotations

import random

SUBJECTS = [
    "The model",
    "A small tokenizer",
    "Our engineer",
    "The streaming engine",
    "Every shard",
    "The vocabulary",
    "This function",
    "The old checkpoint",
    "A careful reviewer",
    "The training loop",
    "The cat",
    "My neighbour",
    "The quick brown fox",
    "An attention head",
    "The byte fallback",
    "Each merge rule",
]
VERBS = [
    "reads",
    "writes",
    "prunes",
    "counts",
    "keeps",
    "drops",
    "encodes",
    "decodes",
    "checks",
    "compresses",
    "streams",
    "renames",
    "loads",
    "splits",
    "merges",
    "verifies",
    "jumps over",
    "remembers",
    "ignores",
]
OBJECTS = [
    "the embedding rows",
    "every safetensors header",
    "the lazy dog",
    "a thousand tokens",
    "the merge table",
    "the rare words",
    "its own corpus",
    "the held-out lines",
    "the special tokens",
    "twelve layers",
    "the config file",
    "the pieces in order",
    "a gzip stream",
    "the JSONL records",
    "the logits",
]
ENDINGS = [".", "!", "?", " again.", " twice.", " (quickly).", " without loading the model.", " as expected."]
NUMBERS = ["0", "1", "7", "42", "128", "2048", "3.14", "1e-5", "15000", "65536"]
CODE = [
    "def prune(model, keep):",
    "    return [row for i, row in enumerate(model) if i in keep]",
    "for i in range(len(tokens)):",
    "    counts[tokens[i]] += 1",
    "import numpy as np",
    "x = np.zeros((4, 8), dtype=np.float32)",
    'if __name__ == "__main__":',
    "    main()",
    "class Tokenizer:",
    "    def encode(self, text: str) -> list[int]:",
    'print(f"kept {len(keep)} of {vocab_size} ids")',
    'with open(path, "rb") as f: header = f.read(8)',
    "assert new_ids == [mapping[i] for i in old_ids]",
    "let total: usize = shards.iter().map(|s| s.len()).sum();",
    "SELECT id, text FROM corpus WHERE lang = 'en';",
    '{"bos_token_id": 1, "eos_token_id": [2, 32000]}',
]
UNICODE_WORDS = [
    "café",
    "naïve",
    "déjà vu",
    "Straße",
    "über",
    "Ökonomie",
    "mañana",
    "niño",
    "crème brûlée",
    "façade",
    "Ελλάδα",
    "λόγος",
    "Москва",
    "привет",
    "спасибо",
    "東京",
    "中文",
    "数据",
    "→",
    "≤",
    "€",
    "£",
    "°C",
    "—",
]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.3:
        words.append(f"in {rng.choice(NUMBERS)} steps")
    if rng.random() < 0.3:
        words.append(f"near {rng.choice(UNICODE_WORDS)}")
    return " ".join(words) + rng.choice(ENDINGS)


def _line(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.55:
        return " ".join(_sentence(rng) for _ in range(rng.randint(1, 2)))
    if roll < 0.8:
        return rng.choice(CODE)
    words = rng.sample(UNICODE_WORDS, 3)
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {words[0]}, {words[1]} and {words[2]}."


def training_lines(count: int = 500, seed: int = 0) -> list[str]:
    """The training corpus (tokenizers are trained on it and counting runs on it)."""
    rng = random.Random(seed)
    return [_line(rng) for _ in range(count)]


#: Characters absent from the training text: they only survive through byte fallback / byte-level.
UNSEEN = ["🙂 emoji time 🚀", "ひらがなとカタカナ", "한국어 문장", "Ünïcödé ŧëxŧ ©®", "שלום עולם", "math: ∮ ∂x ≠ ∞"]


def held_out_lines(count: int = 200, seed: int = 1) -> list[str]:
    """Held-out text: new combinations of known words, plus lines with never-seen characters."""
    rng = random.Random(seed)
    lines = [_line(rng) for _ in range(count)]
    lines += [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {text}." for text in UNSEEN]
    lines += ["Zebras quizzically vex jovial wizards.", "xylophone kumquat pterodactyl"]
    return lines


def domain_lines(count: int = 500, seed: int = 0) -> list[str]:
    """The counting corpus: the plain-ASCII English prose of the training corpus (no code, no unicode).

    Counting on a narrower domain than the tokenizer was trained on is the realistic case: held-out
    prose is then covered by the kept vocabulary while code and non-Latin text fall back to bytes.
    """
    subjects = tuple(SUBJECTS)
    return [line for line in training_lines(count, seed) if line.startswith(subjects) and line.isascii()]
