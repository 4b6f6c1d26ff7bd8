"""Tar streams: compress on the way into the repository, check members on the way out.

A node only runs plain ``tar -cf -`` / ``tar -xf -``; compression, hashing and the per-file
inventory happen here, in one pass over the stream, so nothing is read twice and no archive is
ever written to a node's disk. Reading a tar stream member by member also lets us refuse an unsafe
member (absolute path, ``..``, link out, device) *before* a single byte of it reaches the node.
"""
from __future__ import annotations

import bz2
import hashlib
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import BinaryIO, Literal, cast

import zstandard

Compression = Literal["zstd", "gzip", "bzip2", "none"]
EXTENSIONS: dict[str, str] = {"zstd": ".tar.zst", "gzip": ".tar.gz", "bzip2": ".tbz", "none": ".tar"}
CHUNK = 1024 * 1024


class UnsafeArchive(ValueError):
    """An archive member could escape the target folder or is not a plain file/folder."""


def compressor(kind: Compression):
    """An object with ``compress(bytes)`` and ``flush()`` for the chosen format."""
    if kind == "zstd":
        # Level 1, one thread per stream (streams already run in parallel): against level 3 with
        # every core, 0.6x the CPU and 19 vs 214 MiB per stream for ~2 % more bytes on SSTables,
        # which LZ4 has mostly compressed already (benchmarks/compression.py).
        return zstandard.ZstdCompressor(level=1, threads=0).compressobj()
    if kind == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 31)
    if kind == "bzip2":
        return bz2.BZ2Compressor(9)
    if kind == "none":
        return _Identity()
    raise ValueError(f"unknown compression {kind!r}")


def decompressor(kind: Compression):
    if kind == "zstd":
        return zstandard.ZstdDecompressor().decompressobj()
    if kind == "gzip":
        return zlib.decompressobj(47)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    if kind == "none":
        return _Identity()
    raise ValueError(f"unknown compression {kind!r}")


def compression_of(key: str) -> Compression:
    """The format of an archive from its name (ours, or the reference scripts' ``.tbz``)."""
    for kind, ext in EXTENSIONS.items():
        if key.endswith(ext):
            return kind  # type: ignore[return-value]
    if key.endswith((".tar.bz2", ".tbz2")):
        return "bzip2"
    raise ValueError(f"{key}: not a known archive name ({', '.join(EXTENSIONS.values())})")


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    decompress = compress

    def flush(self) -> bytes:
        return b""


def compress(chunks: Iterable[bytes], kind: Compression) -> Iterator[bytes]:
    c = compressor(kind)
    for chunk in chunks:
        out = c.compress(chunk)
        if out:
            yield out
    tail = c.flush()
    if tail:
        yield tail


def decompress(chunks: Iterable[bytes], kind: Compression) -> Iterator[bytes]:
    d = decompressor(kind)
    for chunk in chunks:
        out = d.decompress(chunk)
        if out:
            yield out


@dataclass
class FileEntry:
    path: str
    size: int
    mode: int
    uid: int
    gid: int
    owner: str
    group: str
    sha256: str | None  # None for folders


@dataclass
class TarStats:
    """What passed through a tar stream: raw size, and every member when an inventory is kept."""

    raw_size: int = 0
    files: int = 0
    entries: list[FileEntry] = field(default_factory=list)
    #: files whose whole content is kept in ``kept`` (small ones: Cassandra's ``*-Digest.crc32``)
    keep: Callable[[str], bool] | None = None
    kept: dict[str, bytes] = field(default_factory=dict)
    #: hash each regular file for the inventory (off where no one reads the digests: staging)
    digests: bool = True
    #: every regular file's size, by normalised path
    sizes: dict[str, int] = field(default_factory=dict)

    def inventory(self) -> list[dict]:
        return [asdict(e) for e in self.entries]


class _Tee:
    """A file-like reader over chunks that keeps what was read, by absolute offset, until taken.

    tarfile reads ahead in 10 KiB records, so "what was read" may include the next member's
    header; ``take(upto)`` hands on only the bytes before an offset we have vouched for.
    """

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pending = bytearray()
        self._pending_start = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf.extend(next(self._chunks))
            except StopIteration:
                break
        n = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._pending.extend(out)
        return out

    def take(self, upto: int | None = None) -> bytes:
        n = len(self._pending) if upto is None else max(0, min(len(self._pending), upto - self._pending_start))
        out = bytes(self._pending[:n])
        del self._pending[:n]
        self._pending_start += n
        return out

    def rest(self) -> Iterator[bytes]:
        if self._buf:
            yield bytes(self._buf)
            self._buf.clear()
        yield from self._chunks


def _inside(path: str) -> bool:
    normalized = posixpath.normpath(path)
    return not (path.startswith("/") or normalized == ".." or normalized.startswith("../"))


def check_member(member: tarfile.TarInfo) -> None:
    """Relative files and folders that stay inside the target; links only when they point
    inside it too (as Python's ``data`` extraction filter decides); never devices or fifos."""
    name = member.name
    if not _inside(name):
        raise UnsafeArchive(f"member {name!r} would be written outside the target folder")
    if member.issym():
        target = posixpath.join(posixpath.dirname(name), member.linkname)
        if member.linkname.startswith("/") or not _inside(target):
            raise UnsafeArchive(f"member {name!r} is a link to {member.linkname!r}, outside the "
                                "target folder")
    elif member.islnk():
        if not _inside(member.linkname):
            raise UnsafeArchive(f"member {name!r} is a hard link to {member.linkname!r}, outside "
                                "the target folder")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"member {name!r} is a special file; archives may only hold files, "
                            "folders and links inside them")


def walk_tar(chunks: Iterable[bytes], stats: TarStats, *, inventory: bool = False,
             check: bool = False) -> Iterator[bytes]:
    """Re-yield an uncompressed tar stream byte for byte while reading it member by member.

    With ``check``, a member's header is yielded only after ``check_member`` accepted it, so an
    unsafe member never reaches the consumer. Fills ``stats`` (raw size, files, inventory).
    """
    tee = _Tee(chunks)

    def flush(upto: int | None = None) -> Iterator[bytes]:
        data = tee.take(upto)
        if data:
            stats.raw_size += len(data)
            yield data

    with tarfile.open(fileobj=cast(BinaryIO, tee), mode="r|") as tar:
        for member in tar:
            yield from flush(member.offset)  # the previous members, already vouched for
            if check:
                check_member(member)
            digest = None
            if member.isfile():
                stats.files += 1
                f = tar.extractfile(member)
                assert f is not None  # a regular file
                h = hashlib.sha256() if stats.digests else None
                name = posixpath.normpath(member.name)
                stats.sizes[name] = member.size
                keep = stats.keep is not None and stats.keep(name)
                for block in iter(partial(f.read, CHUNK), b""):
                    if h is not None:
                        h.update(block)
                    if keep:
                        stats.kept[name] = stats.kept.get(name, b"") + block
                    yield from flush(member.offset_data + f.tell())
                digest = h.hexdigest() if h is not None else None
            if inventory:
                stats.entries.append(FileEntry(
                    path=posixpath.normpath(member.name), size=member.size, mode=member.mode,
                    uid=member.uid, gid=member.gid, owner=member.uname, group=member.gname,
                    sha256=digest))
    yield from flush()
    for chunk in tee.rest():
        stats.raw_size += len(chunk)
        yield chunk


def pack(tar_chunks: Iterable[bytes], kind: Compression, stats: TarStats, *,
         inventory: bool = False) -> Iterator[bytes]:
    """Compress a node's tar stream, filling ``stats`` (raw size, files, inventory) as it goes."""
    return compress(walk_tar(tar_chunks, stats, inventory=inventory), kind)


def unpack(chunks: Iterable[bytes], kind: Compression, stats: TarStats) -> Iterator[bytes]:
    """Decompress an archive into a checked tar stream: unsafe members raise UnsafeArchive."""
    return walk_tar(decompress(chunks, kind), stats, check=True)
