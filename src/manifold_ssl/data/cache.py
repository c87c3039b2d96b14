"""The decoded-data cache under ``<root>/cache``: file names that identify a source, atomic
writes, and the removal of an edited source's stale versions. Used by the datasets
(:mod:`manifold_ssl.data.datasets`) and the file indexes (:mod:`manifold_ssl.data.files`)."""

from __future__ import annotations

import glob
import hashlib
import re
from pathlib import Path

import torch

from .._atomic import atomic_file

__all__ = ["cache_prefix", "remove_stale", "save_cache"]


def cache_prefix(label: str, where: str) -> str:
    """``<label>-<hash of where>-``: the start of a cache file's name, safe in any file system
    (a pattern's braces and globs removed), the same for every version of one source."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_.") or "data"
    return f"{safe}-{hashlib.sha1(where.encode()).hexdigest()[:6]}-"


def save_cache(blob: object, cache: Path, content: str) -> None:
    """``torch.save`` ``blob`` to ``cache`` atomically; then remove the caches of the same
    source and options with another ``content`` fingerprint (an edited data set's)."""
    with atomic_file(cache, "wb", shared=True) as f:
        torch.save(blob, f)
    remove_stale(cache, content)


def remove_stale(cache: Path, content: str) -> None:
    """Remove the siblings of ``cache`` whose name differs only in the ``content`` hash."""
    if not content:  # a packaged data set: one version
        return
    head, sep, tail = cache.name.rpartition(content)
    if not sep:
        return
    for old in cache.parent.glob(f"{glob.escape(head)}{'?' * len(content)}{glob.escape(tail)}"):
        if old != cache:
            old.unlink(missing_ok=True)
