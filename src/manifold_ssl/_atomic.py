"""One atomic write for every file this package writes: a temporary file beside the target,
flushed and fsynced, then renamed over it, so that a crash, an interrupt or a full disk leaves
either the old file or the new one, never half of one.

Why by hand: the standard library has the pieces (``tempfile``, ``os.replace``) but no helper
that fsyncs and cleans up on failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "atomic_write_text"]


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", shared: bool = False, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file to write ``path`` through; on a clean exit it replaces ``path``
    (flushed and fsynced first), on an error it is removed and ``path`` is left as it was.

    The temporary file is ``<name>.tmp``, so a crashed writer's leftover is overwritten by the
    next write; ``shared`` (a cache several processes may fill at once) adds the process id.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + (f".{os.getpid()}.tmp" if shared else ".tmp"))
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as f:
        f.write(text)
