"""Tar streams: compress on the way into the repository, check members on the way out.

A node only runs plain ``tar -cf -`` / ``tar -xf -``; compression, hashing and the per-file
inventory happen here, in one pass over the stream, so nothing is read twice and no archive is
ever written to a node's disk. Reading a tar stream member by member also lets us refuse an unsafe
member (absolute path, ``..``, link out, device) *before* a single byte of it reaches the node.
"""
from __future__ import annotations

import bz2
import hashlib
import io
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

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


class _Blocks:
    """A tar stream's chunks, read by exact sizes (headers) or passed on as they come (file data):
    a byte is copied only when a chunk is split, so walking costs little more than the stream."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buf: bytes = b""
        self._pos = 0
        self.end = b""  # the end-of-archive block, once read

    def _next(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf, self._pos = chunk, 0
                return True
        return False

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the stream's end."""
        pieces = []
        while n and (self._pos < len(self._buf) or self._next()):
            piece = self._buf[self._pos:self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            pieces.append(piece)
        return b"".join(pieces)

    def pass_on(self, n: int) -> Iterator[bytes]:
        """The next ``n`` bytes, in the chunks they came in (whole chunks are not copied)."""
        while n:
            if self._pos == len(self._buf) and not self._next():
                raise tarfile.ReadError("unexpected end of data")
            piece = self._buf[self._pos:self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            yield piece

    def rest(self) -> Iterator[bytes]:
        if self._pos < len(self._buf):
            yield self._buf[self._pos:]
        self._buf, self._pos = b"", 0
        yield from self._chunks


BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)
#: Headers whose data is more header (pax, GNU long names): the member is the next header.
EXTENDED = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK}
MAX_EXTENDED = 1 << 20


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _header(block: bytes) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as exc:
        raise tarfile.ReadError(f"invalid tar header: {exc}") from exc


def _member(headers: bytes) -> tarfile.TarInfo:
    """One member from all its header blocks (pax and long-name records applied by tarfile)."""
    with tarfile.open(fileobj=io.BytesIO(headers + ZERO_BLOCK * 2), mode="r:") as tar:
        member = tar.next()
    if member is None:
        raise tarfile.ReadError("invalid tar header")
    return member


def _member_headers(blocks: _Blocks, pax_globals: list[bytes], first: bool) -> tuple[bytes, bytes] | None:
    """The next member's header blocks, and the pax global records of the members before it
    (they still apply); None at the end."""
    block = blocks.read(BLOCK)
    if block == ZERO_BLOCK or (not block and not first):  # the end (its blocks may be missing)
        blocks.end = block
        return None
    if len(block) < BLOCK:
        raise tarfile.ReadError("empty file" if first and not block else "unexpected end of data")
    before = b"".join(pax_globals)
    raw = [block]
    info = _header(block)
    while info.type in EXTENDED:
        if info.size > MAX_EXTENDED:
            raise tarfile.ReadError(f"a {info.size}-byte extended header: more than any name needs")
        data = blocks.read(_padded(info.size))
        nxt = blocks.read(BLOCK)
        if len(data) < _padded(info.size) or len(nxt) < BLOCK:
            raise tarfile.ReadError("unexpected end of data")
        if info.type == tarfile.XGLTYPE:
            pax_globals.append(raw[-1] + data)
        raw += [data, nxt]
        info = _header(nxt)
    return b"".join(raw), before


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
    tarfile parses the headers; file data passes through as it came (tarfile's stream mode
    copied every byte several times: 1.6 CPU-s per GB).
    """
    blocks, pax_globals = _Blocks(chunks), list[bytes]()
    first = True
    while (found := _member_headers(blocks, pax_globals, first)) is not None:
        first = False
        headers, earlier_globals = found
        member = _member(earlier_globals + headers)
        if check:
            check_member(member)
        if member.sparse is not None or member.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchive(f"member {member.name!r} is a sparse file, which archives here never hold")
        stats.raw_size += len(headers)
        yield headers
        size = member.size if member.isfile() or member.type not in tarfile.SUPPORTED_TYPES else 0
        name = posixpath.normpath(member.name)
        h = hashlib.sha256() if member.isfile() and stats.digests else None
        keep = member.isfile() and stats.keep is not None and stats.keep(name)
        if member.isfile():
            stats.files += 1
            stats.sizes[name] = member.size
        for piece in blocks.pass_on(size):
            if h is not None:
                h.update(piece)
            if keep:
                stats.kept[name] = stats.kept.get(name, b"") + piece
            stats.raw_size += len(piece)
            yield piece
        for piece in blocks.pass_on(_padded(size) - size):
            stats.raw_size += len(piece)
            yield piece
        if inventory:
            stats.entries.append(FileEntry(
                path=name, size=member.size, mode=member.mode, uid=member.uid, gid=member.gid,
                owner=member.uname, group=member.gname, sha256=h.hexdigest() if h is not None else None))
    if blocks.end:  # the end-of-archive block and whatever follows it
        stats.raw_size += BLOCK
        yield blocks.end
    for chunk in blocks.rest():
        stats.raw_size += len(chunk)
        yield chunk


def pack(tar_chunks: Iterable[bytes], kind: Compression, stats: TarStats, *,
         inventory: bool = False) -> Iterator[bytes]:
    """Compress a node's tar stream, filling ``stats`` (raw size, files, inventory) as it goes."""
    return compress(walk_tar(tar_chunks, stats, inventory=inventory), kind)


def unpack(chunks: Iterable[bytes], kind: Compression, stats: TarStats) -> Iterator[bytes]:
    """Decompress an archive into a checked tar stream: unsafe members raise UnsafeArchive."""
    return walk_tar(decompress(chunks, kind), stats, check=True)
