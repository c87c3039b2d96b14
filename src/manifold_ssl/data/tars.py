"""Whether a tar archive is whole: it must end with its end-of-archive marker.

Python's ``tarfile`` ends an archive silently where a header is missing or cut short (it
raises only for a cut inside a member's data), so a shard truncated at a member boundary, or
inside a header, reads as a shorter shard: fewer images, no error. POSIX tar ends every
archive with zero blocks; after the last member that :mod:`tarfile` read, the next 512-byte
block must be zeros. :func:`end_problem` checks that on the bytes after the last member, for
a shard read in order (:class:`TailReader` keeps them) or a file read by random access
(:func:`file_end_problem`).
"""

from __future__ import annotations

import http.client
import tarfile
from typing import IO

__all__ = ["BLOCK", "TailReader", "end_problem", "file_end_problem"]

BLOCK = 512  # tar's block: headers, data padding and the end-of-archive marker
#: Bytes a :class:`TailReader` keeps: more than any blocking factor pads an archive with
#: (GNU tar: 20 blocks; 256 at most in practice).
KEEP = 1 << 20


def end_problem(offset: int, tail: bytes) -> str | None:
    """Why an archive whose last readable member ends at byte ``offset`` is not whole, given
    ``tail``, its bytes from ``offset`` on (all of them, or at least :data:`BLOCK`); None
    when they open with the end-of-archive marker (a zero block)."""
    if len(tail) < BLOCK:
        return (
            f"truncated: it ends at byte {offset + len(tail)}, after its last whole member at "
            f"byte {offset}, with no end-of-archive marker"
        )
    if tail[:BLOCK].strip(b"\0"):
        return f"corrupt: the header at byte {offset} cannot be read"
    return None


class TailReader:
    """A binary stream read through, keeping its last :data:`KEEP` bytes and counting all
    (what :func:`end_problem` needs of a shard read in order)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.count, self.kept = stream, 0, bytearray()

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.stream.read(size)
        except http.client.HTTPException as err:  # a response cut short (IncompleteRead)
            raise OSError(f"{type(err).__name__}: {err}") from None
        self.count += len(data)
        self.kept += data
        if len(self.kept) > 2 * KEEP:
            del self.kept[: len(self.kept) - KEEP]
        return data

    def problem(self, tar: tarfile.TarFile) -> str | None:
        """:func:`end_problem` of ``tar``, read through this stream to its last member: the
        rest of the stream is read first."""
        while self.read(1 << 20):
            pass
        offset = tar.offset
        start = self.count - len(self.kept)
        if offset < start:  # more than KEEP bytes tarfile did not read: not padding
            return f"corrupt: {self.count - offset} unreadable bytes after byte {offset}"
        return end_problem(offset, bytes(self.kept[offset - start : offset - start + BLOCK]))


def file_end_problem(tar: tarfile.TarFile) -> str | None:
    """:func:`end_problem` of ``tar``, opened from a seekable file and iterated to its end."""
    fileobj = tar.fileobj
    assert fileobj is not None
    fileobj.seek(tar.offset)
    return end_problem(tar.offset, fileobj.read(BLOCK))
