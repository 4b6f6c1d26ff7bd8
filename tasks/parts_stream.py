"""A table's components, fetched from the repository, as one tar stream (incremental restores).

Restore stages what a table archive would hold (tasks/staging.py): the components are read one
after the other, decompressed, checked against the size and SHA-256 the node recorded (through
the content name: plain, or keyed with an encrypted repository), and framed as a pax tar at the
folder's root, so the node's ``tar -xf`` and everything after it are the same for both modes.
"""
from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tasks.archive import TarStats, compression_of, decompress, unpack, walk_tar
from tasks.content_store import content_name
from tasks.manifest import ObjectEntry, SSTablePart
from tasks.repositories import Repository

BLOCK = 512


class ComponentCorrupt(RuntimeError):
    """A stored component does not hold the bytes its name and size promise."""

    transient = False


def parts_tar(repo: Repository, parts: Iterable[SSTablePart]) -> Iterator[bytes]:
    """Components of a table (incremental mode) as one uncompressed tar stream."""
    for part in parts:
        info = tarfile.TarInfo(part.path)
        info.size, info.mode, info.type = part.size, 0o644, tarfile.REGTYPE
        yield info.tobuf(tarfile.PAX_FORMAT)
        digest, seen = hashlib.sha256(), 0
        with repo.get(part.key) as chunks:
            for chunk in decompress(chunks, part.compression):  # type: ignore[arg-type]
                digest.update(chunk)
                seen += len(chunk)
                if seen > part.size:
                    raise ComponentCorrupt(f"{part.key}: longer than the {part.size} bytes of {part.path}")
                yield chunk
        if seen != part.size or content_name(repo, digest.hexdigest()) != part.name:
            raise ComponentCorrupt(f"{part.key}: does not hold {part.path} ({seen} of {part.size} "
                                   "bytes, or another content)")
        if part.size % BLOCK:
            yield b"\0" * (BLOCK - part.size % BLOCK)
    yield b"\0" * (2 * BLOCK)


@contextmanager
def table_tar(repo: Repository, entry: ObjectEntry, stats: TarStats) -> Iterator[Iterator[bytes]]:
    """A table's files as one checked, uncompressed tar stream, whichever way it is stored (an
    archive, or components): for readers that unpack a table, e.g. a node rebuild."""
    if entry.parts is not None:
        yield walk_tar(parts_tar(repo, entry.parts), stats, check=True)
    else:
        with repo.get(entry.key) as chunks:
            yield unpack(chunks, compression_of(entry.key), stats)
