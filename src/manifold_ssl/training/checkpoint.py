"""Atomic checkpoints: write to a temporary file, fsync, rename. A crash mid-write leaves the
previous checkpoint intact; files are read back with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_file

__all__ = ["load_checkpoint", "resume_command", "save_checkpoint"]


def resume_command(run_dir: str | os.PathLike[str], *overrides: str) -> str:
    """The command that continues the run ``run_dir`` from its last checkpoint (with
    ``overrides``, keys a resume may change): what every stop that leaves one prints (a stop
    condition, an interrupt, an error)."""
    return " ".join([f"manifold-ssl pretrain --resume {run_dir}", *overrides])


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically. A failed write (a full disk, an interrupt) removes
    its temporary file and leaves the previous checkpoint in place; a full disk is reported as
    such, with the path."""
    path = Path(path)
    try:
        with atomic_file(path, "wb") as f:
            torch.save(state, f)
    except BaseException as err:
        if _disk_full(err):
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while writing the checkpoint {path}; the previous "
                "checkpoint is kept. Free some space and resume",
            ) from err
        raise
    return path


def _disk_full(err: BaseException) -> bool:
    """torch.save reports ENOSPC as a RuntimeError ("unexpected pos …") from its zip writer."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(err, RuntimeError) and "unexpected pos" in str(err)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a manifold-ssl checkpoint (no model/config entries)")
    return state


def keep_checkpoint(folder: Path, name: str, limit: int = 0) -> Path:
    """Keep ``folder/last.pt`` as ``folder/name`` too (a hard link, else a copy; atomically);
    then remove all but the newest ``limit`` ``epoch-<N>.pt`` (0: none removed)."""
    src, dst = folder / "last.pt", folder / name
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here: a copy
        with atomic_file(tmp, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 22)
    os.replace(tmp, dst)
    if limit:
        kept = sorted(folder.glob("epoch-*.pt"))  # zero-padded: name order is epoch order
        for old in kept[: max(0, len(kept) - limit)]:
            old.unlink(missing_ok=True)
    return dst
