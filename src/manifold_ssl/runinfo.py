"""What every run directory records (version, git hash, environment, time), its lock, and how
its metrics log is read back."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import __version__
from ._atomic import atomic_write_text


def git_hash() -> str | None:
    """The commit of the source tree this package runs from, ``+dirty`` if modified."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(seed: int | None = None) -> dict[str, Any]:
    return {
        "manifold_ssl_version": __version__,
        "git_hash": git_hash(),
        "seed": seed,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_threads": torch.get_num_threads(),
    }


def make_run_dir(root: str | os.PathLike[str], name: str) -> Path:
    """A new directory ``root/name-YYYYmmdd-HHMMSS[-N]``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        path = Path(f"{base}-{n}")
        n += 1
    path.mkdir(parents=True)
    return path


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class RunInUse(ValueError):
    """A run directory another process holds (:func:`run_lock`)."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while a process writes to it: a second writer (two
    ``--resume`` of one run) gets a clear error instead of interleaving steps and overwriting
    checkpoints. The lock dies with its process, so a killed run leaves none behind."""
    path = Path(run_dir) / ".lock"
    handle = open(path, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunInUse(
                f"run directory {run_dir} is in use by {owner}; wait for it to finish or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. A torn last line (a process killed mid-write) is
    skipped with a warning; a corrupt line elsewhere is an error naming the file and line."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                warnings.warn(f"{path}: skipping its incomplete last line ({err})", stacklevel=2)
                continue
            raise ValueError(f"{path}, line {number}, is not JSON: {err}") from None
    return records
