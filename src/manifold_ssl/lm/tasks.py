"""Language-model tasks that need no download: generated arithmetic word problems (the analogue of
GSM8K in Matrix-SSL App. B, scored by exact match of the final number) and any text file
(scored in bits per character). Character-level: the vocabulary is the characters of the data.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CharVocab", "Problem", "arithmetic_problems", "text_splits"]

_NAMES = ("Ann", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun")
_THINGS = ("apples", "pens", "books", "coins", "shells", "cards", "stamps", "marbles")


@dataclass(frozen=True)
class Problem:
    question: str  # "Q: ...?\nA: "
    answer: str  # the final number

    @property
    def text(self) -> str:
        return f"{self.question}{self.answer}\n"


def _problem(rng: random.Random, steps: int) -> Problem:
    """A word problem of ``steps`` operations (add, take away, double) on a count kept
    non-negative; the answer is the final count."""
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    count = rng.randint(2, 9)
    words = [f"{name} has {count} {thing}."]
    for _ in range(steps):
        op = rng.choice(("add", "sub", "double") if count < 40 else ("sub",))
        if op == "add":
            n = rng.randint(1, 9)
            count += n
            words.append(f"Then {name} gets {n} more.")
        elif op == "sub" and count > 0:
            n = rng.randint(1, min(9, count))
            count -= n
            words.append(f"Then {name} gives away {n}.")
        else:
            count *= 2
            words.append(f"Then {name} doubles them.")
    question = "Q: " + " ".join(words) + f" How many {thing} does {name} have?\nA: "
    return Problem(question, str(count))


def arithmetic_problems(n: int, seed: int, steps: tuple[int, int] = (1, 3)) -> list[Problem]:
    """``n`` distinct problems of ``steps[0]``–``steps[1]`` operations, from ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < n:
        p = _problem(rng, rng.randint(*steps))
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


_MAX_TEXT = 256 << 20  # characters of text a character-level model here reads (256 MiB)


def text_splits(path: str | Path, val_fraction: float = 0.1) -> tuple[str, str]:
    """A text file (or ``.gz``) as (train, held-out) text: the last ``val_fraction`` is held
    out."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--text {file} does not exist")
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rb") as f:
        head = f.read(1 << 16)
        if b"\0" in head:
            raise ValueError(f"--text {file} is binary data, not text (a NUL byte in its start)")
        data = head + f.read(_MAX_TEXT + 1 - len(head))
    if len(data) > _MAX_TEXT:
        raise ValueError(f"--text {file} is longer than {_MAX_TEXT:,} bytes; give a smaller file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--text {file} is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from None
    if len(text) < 1000:
        raise ValueError(f"--text {file} has {len(text)} characters; at least 1,000 are needed")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


class CharVocab:
    """Characters ↔ ids; characters outside the vocabulary map to the first one."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)
