"""``data.path`` per split, and the rule that no two splits read the same files.

``data.path`` is one pattern with ``{split}`` (``shards/{split}-{000000..000127}.tar``), or a
mapping from split to pattern where the splits have their own ranges or places (1,024
training shards, 8 validation shards: ``{train: tr-{0000..1023}.tar, val: va-{0..7}.tar}``),
local, ``http(s)://`` or ``pipe:``. :func:`split_path` gives a split's pattern;
:func:`check_disjoint` refuses a split that reads files of the training split (a pattern
without ``{split}`` names the same shards for every split: the test accuracy would be measured
on the training images).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["DataPath", "check_disjoint", "path_problem", "patterns", "read_path", "split_path"]

#: ``data.path``: a path or pattern, or a mapping from split name to pattern.
DataPath = str | Mapping[str, str]


def split_path(path: DataPath, split: str) -> str:
    """The pattern of ``split``: ``{split}`` replaced in a pattern, or the mapping's entry (a
    FileNotFoundError naming the split when it has none)."""
    if isinstance(path, str):
        return path.replace("{split}", split)
    if split not in path:
        raise FileNotFoundError(
            f"data.path names no {split!r} split (it has {sorted(path)}): add "
            f"'{split}: <pattern>' to the mapping"
        )
    return path[split]


def patterns(path: DataPath) -> list[str]:
    """Every pattern ``path`` holds (one, or the mapping's values)."""
    return [path] if isinstance(path, str) else list(path.values())


def check_disjoint(split: str, files: Iterable[str], train: Iterable[str]) -> None:
    """Refuse a ``split`` that reads files (or URLs) of the training split: a run never
    evaluates on the images it trained on."""
    shared = sorted(set(files) & set(train))
    if shared:
        listed = ", ".join(shared[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
        raise ValueError(
            f"data.path: the {split!r} split reads {len(shared)} of the training split's files "
            f"({listed}), so its numbers would be measured on training images; give each split "
            "its own files: {split} in the pattern, or a mapping "
            f"--data.path='{{train: <pattern>, {split}: <pattern>}}'"
        )


def path_problem(value: object) -> str | None:
    """The check of ``data.path``: None, a non-empty string, or a mapping from split names to
    non-empty strings that has a ``train`` entry."""
    if value is None or (isinstance(value, str) and value):
        return None
    if isinstance(value, Mapping) and value:
        if "train" not in value:
            return f"a mapping with a 'train' entry (got the splits {sorted(value)})"
        bad = [k for k, v in value.items() if not isinstance(v, str) or not v]
        return (
            f"a mapping from split to pattern (not {bad[0]!r}: {value[bad[0]]!r})" if bad else None
        )
    return "a path, a pattern with {split}, or a mapping {train: <pattern>, test: <pattern>}"


_MAPPING = re.compile(r"\{\s*[A-Za-z_][\w-]*\s*:\s.*\}", re.S)


def read_path(text: str) -> DataPath:
    """``data.path`` as typed on the command line: the text itself, or a mapping when it reads
    as one (``{train: a-{0..3}.tar, test: b-0.tar}``: YAML would not take the braces inside
    its values). Entries are split at the commas outside braces, each at its first ``: ``."""
    body = text.strip()
    if not _MAPPING.fullmatch(body):
        return text
    entries, depth, start = [], 0, 1
    for i, c in enumerate(body[1:-1], 1):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            entries.append(body[start:i])
            start = i + 1
    entries.append(body[start:-1])
    mapping: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"expected {{split: pattern, ...}}, got {text!r}")
        mapping[name.strip()] = value.strip().strip("'\"")
    return mapping
