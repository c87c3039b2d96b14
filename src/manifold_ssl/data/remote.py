"""WebDataset shards from anywhere: local files, ``http(s)://`` URLs and ``pipe:`` commands
(``pipe:aws s3 cp s3://bucket/shard-000000.tar -``, ``pipe:gsutil cat gs://...``), read
sequentially, one sample (``<key>.<ext>`` members grouped by key) at a time.

Written here rather than taken from ``webdataset.gopen``: that opens ``http(s)`` through a
``curl`` subprocess (absent on some clusters' compute nodes, and its failures arrive as a
short read); this module reads HTTP with the standard library, with a timeout, and reports a
failed command with its exit status and standard error, so that a vanished shard is a clear
error (or a counted skip), never a hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .._atomic import atomic_file
from .paths import DataPath, patterns, split_path
from .tars import TailReader, file_end_problem

__all__ = ["ShardError", "fetch_shards", "is_remote", "open_shard", "shard_samples", "shard_urls"]


class ShardError(OSError):
    """A shard that cannot be read (or is truncated) under ``data.shard_errors=raise``. A run it
    stops resumes past it with ``--data.shard_errors=skip`` (a key a resume may change)."""

    def __init__(self, message: str) -> None:
        hint = "data.shard_errors=skip"  # present when re-raised from a loader's worker
        super().__init__(message if hint in message else f"{message} ({hint} skips such shards)")


#: Seconds a shard's server may stay silent before the read fails (never a hang).
TIMEOUT_S = 60.0


def is_remote(path: DataPath | None) -> bool:
    """Whether ``data.path`` names shards read sequentially (a URL or a command; of a
    mapping, any split's)."""
    remote = ("http://", "https://", "pipe:")
    return bool(path) and any(p.startswith(remote) for p in patterns(path))  # type: ignore[arg-type]


def shard_urls(pattern: DataPath, split: str) -> list[str]:
    """The shards of ``split``: its pattern (:func:`~.paths.split_path`) brace expanded
    (``{000..099}``)."""
    from braceexpand import braceexpand

    urls = list(braceexpand(split_path(pattern, split)))
    if not urls:
        raise ValueError(f"data.path {pattern!r} names no shard")
    return urls


@contextlib.contextmanager
def open_shard(url: str, timeout: float = TIMEOUT_S) -> Iterator[IO[bytes]]:
    """A binary stream of the shard ``url`` (``http(s)://``, ``pipe:COMMAND`` or a path); an
    OSError naming the shard when it cannot be read to its end (HTTP status, the command's exit
    status and standard error, a missing file, a silent server)."""
    if url.startswith("pipe:"):
        with _command(url) as stream:
            yield stream
        return
    if url.startswith(("http://", "https://")):
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as err:
            raise OSError(f"shard {url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise OSError(f"shard {url}: {getattr(err, 'reason', err)}") from None
        with response:
            yield response
        return
    path = Path(url).expanduser()
    if not path.is_file():
        raise OSError(f"shard {url}: no such file")
    with path.open("rb") as f:
        yield f


@contextlib.contextmanager
def _command(url: str) -> Iterator[IO[bytes]]:
    """The standard output of the command ``pipe:COMMAND``; its failure (a non-zero exit
    status, with its standard error) is the shard's error, also when it surfaces first as an
    unreadable stream. A reader that stops early ends the command."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            try:
                yield proc.stdout
                proc.stdout.read()  # to its end: the command's status is the shard's
            except GeneratorExit:
                proc.kill()
                raise
            except Exception:
                proc.stdout.close()
                if proc.wait() > 0:  # failed by itself (not by the closed pipe): the cause
                    raise _failed(url, proc.returncode, err) from None
                raise
            if proc.wait():
                raise _failed(url, proc.returncode, err)
        finally:
            proc.stdout.close()
            proc.wait()


def _failed(url: str, status: int, err: IO[bytes]) -> OSError:
    err.seek(0)
    text = err.read().decode(errors="replace").strip()[-300:]
    return OSError(f"shard {url}: the command exited with status {status}: {text}")


def shard_samples(url: str, timeout: float = TIMEOUT_S) -> Iterator[dict[str, bytes]]:
    """The samples of the shard ``url`` in its order: ``{"__key__": key, ext: data, ...}``
    (all bytes),
    the members ``<key>.<ext>`` that follow each other grouped (WebDataset's convention: the
    key is the name up to the first dot of its last path component). A truncated or corrupt
    shard raises OSError naming it."""
    try:
        with open_shard(url, timeout) as raw:
            stream = TailReader(raw)
            tar = tarfile.open(fileobj=stream, mode="r|*")  # type: ignore[call-overload]
            key: str | None = None
            sample: dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, _, ext = name.partition(".")
                k = f"{folder}/{stem}" if folder else stem
                if k != key and sample:
                    yield {"__key__": (key or "").encode(), **sample}
                    sample = {}
                key = k
                data = tar.extractfile(member)
                sample[ext] = data.read() if data is not None else b""
            # a shard cut at a member boundary reads as a shorter one: it must end as tar ends
            problem = (
                stream.problem(tar) if getattr(tar.fileobj, "comptype", "tar") == "tar" else None
            )
            if problem:
                raise OSError(f"shard {url}: {problem}")
            if sample:
                yield {"__key__": (key or "").encode(), **sample}
    except tarfile.TarError as err:
        raise OSError(f"shard {url}: not a readable tar stream ({err})") from None
    except OSError as err:  # a read that failed midway (a connection reset, a timeout)
        if str(err).startswith(f"shard {url}"):
            raise
        raise OSError(f"shard {url}: {err or type(err).__name__}") from None


def fetch_shards(
    urls: list[str], folder: str | os.PathLike[str], errors: str = "raise"
) -> tuple[list[str], list[str]]:
    """Copy the shards ``urls`` into ``folder`` once, each named by a hash of its URL and kept
    only whole (read to its end, and ending as a tar ends: :mod:`.tars`), for the
    random-access readers. Returns the copies' paths (in the order of ``urls``) and the errors
    of the shards skipped: a shard that cannot be read raises an OSError naming it, or with
    ``errors="skip"`` is left out, its error returned."""
    copies, skipped = [], []
    for url in urls:
        target = Path(folder) / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.tar"
        if not target.is_file():
            try:
                with open_shard(url) as stream, atomic_file(target, "wb", shared=True) as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
                    out.flush()
                    problem = _copy_problem(out.name)
                    if problem:
                        raise OSError(f"shard {url}: {problem}")
            except (OSError, http.client.HTTPException) as err:
                if errors != "skip":
                    raise ShardError(str(err)) from None
                skipped.append(str(err) if str(err).startswith("shard") else f"shard {url}: {err}")
                continue
        copies.append(str(target))
    return copies, skipped


def _copy_problem(path: str) -> str | None:
    """Why the tar file ``path`` is not whole (cut inside a member, or at a boundary), if it
    is not."""
    try:
        with tarfile.open(path) as tar:
            for _ in tar:
                pass
            return file_end_problem(tar)
    except tarfile.TarError as err:
        return f"not a readable tar ({err})"
