"""One table's snapshot folder stored component by component (incremental mode).

The node lists the folder's files (``find``). A file a kept backup listed with the same inode
and mtime takes that backup's content name unread. The others are read back to back by one
``cat`` per group of about 64 MiB (split again by their listed sizes), each compressed on its own
and named by the SHA-256 of its bytes as they arrive; a content stored already is dropped then
(tasks/content_store.py). Where a name is needed before the bytes (S3, encryption), the node
hashes them first (``openssl dgst``), a few groups per command ahead of their reading, so that
only components not stored yet cross the wire, each checked against its hash. A big table's
groups go over several streams at once. The table's list of components is written last, as
``<backup-id>/cassandra/<node>/<keyspace>/<table_dir>.parts.json``.
The fingerprint is the archive's (tasks/table_archive.py), from the same sizes and Digest.crc32s.
"""
from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from tasks import layout
from tasks.archive import Compression
from tasks.content_store import FILES_PER_READ, Component, RunStore
from tasks.hosts import CommandFailed, Host
from tasks.manifest import ObjectEntry
from tasks.repositories import Repository
from tasks.table_archive import DATA, DIGEST, fingerprint_lines
from tasks.transfer import store


class SnapshotListingError(RuntimeError):
    transient = False


def _relative(root: str, path: str) -> str:
    if not path.startswith(root + "/"):
        raise SnapshotListingError(f"{path} is not under {root}")
    return path[len(root) + 1:]


class SnapshotChanged(SnapshotListingError):
    """A file went between the listing and its hashing: the task's retry lists the folder again."""

    transient = True


@dataclass(frozen=True)
class Listed:
    """A file of a snapshot folder: its size, identity (``<inode>:<mtime>``) and content name
    ("" unless a kept backup listed the same file under the same identity)."""

    size: int
    ident: str
    name: str = ""


def list_components(host: Host, root: str,
                    known: Callable[[str, int, str], str | None] = lambda *_: None) -> dict[str, Listed]:
    """Every regular file under the snapshot folder ``root``, by relative path, from one walk:
    its size, identity and, when ``known(path, size, ident)`` recognises it from a kept backup,
    its content name. The others are hashed as they arrive, or on the node ahead of their
    sending where the name is needed first (``hash_files``; tasks/content_store.py)."""
    return {path: Listed(size, ident, known(path, size, ident) or "")
            for path, (size, ident) in sorted(_walk(host, root).items())}


def hash_files(host: Host, root: str, paths: list[str]) -> dict[str, str]:
    """SHA-256 of the named files (relative to ``root``), computed on the node. A snapshot does
    not change, but a file can go between the walk and its hashing (a clear racing with us):
    that fails the table as transient, and its task's retry lists the folder again."""
    hashes = _hashes(host, root, paths)
    if gone := [p for p in paths if p not in hashes]:
        raise SnapshotChanged(f"{host.name}: {', '.join(gone[:5])} under {root} went between its "
                              "listing and its hashing")
    return hashes


def _gone_as_changed(chunks: Iterator[bytes], host: Host, root: str, paths: list[str]) -> Iterator[bytes]:
    """A ``cat`` that failed because a file went since the listing (as in ``hash_files``) fails
    the table as transient, so that its retry lists the folder again."""
    try:
        yield from chunks
    except CommandFailed:
        if gone := [p for p in paths if p not in _present(host, root, paths)]:
            raise SnapshotChanged(f"{host.name}: {', '.join(gone[:5])} under {root} went between "
                                  "its listing and its reading") from None
        raise


def _present(host: Host, root: str, paths: list[str]) -> set[str]:
    return {_relative(root, line) for line in _find_files(host, root, paths, ["-print"], timeout=600)}


def _walk(host: Host, root: str) -> dict[str, tuple[int, str]]:
    files = {}
    listing = host.run(host.privileged(["find", root, "-type", "f", "-printf", "%P\\t%s\\t%i:%T@\\n"]),
                       timeout=600)
    for line in listing.text.splitlines():
        path, size, ident = line.rsplit("\t", 2)
        files[path] = (int(size), ident)
    return files


#: SHA-256 of the files named after it, one ``<hex> <space or *><path>`` line each: OpenSSL's
#: when the node has it (it uses the CPU's SHA extensions: 4.4x coreutils' ``sha256sum`` here,
#: which otherwise reads a big table for longer than sending it takes), else ``sha256sum``.
SHA256_FILES = ('if command -v openssl >/dev/null 2>&1; then exec openssl dgst -sha256 -r -- "$@"; fi; '
                'exec sha256sum -- "$@"')


def _hashes(host: Host, root: str, paths: list[str]) -> dict[str, str]:
    """SHA-256 of the named files, computed on the node; a file gone meanwhile is left out."""
    hashes = {}
    for i in range(0, len(paths), FILES_PER_READ):
        for line in _find_files(host, root, paths[i:i + FILES_PER_READ],
                                ["-exec", "sh", "-c", SHA256_FILES, "sha256", "{}", "+"], timeout=3600):
            hashes[_relative(root, _hashed_path(host, root, line))] = line[:64]
    return hashes


def _find_files(host: Host, root: str, paths: list[str], action: list[str], timeout: float) -> list[str]:
    """The lines of ``find``'s ``action`` over those of ``paths`` (relative to ``root``) that are
    still regular files; the others are left out."""
    named = [posixpath.join(root, p) for p in paths]
    out = host.run(host.privileged(["find", *named, "-maxdepth", "0", "-type", "f", *action]),
                   timeout=timeout, check=False)
    return out.text.splitlines()


def _hashed_path(host: Host, root: str, line: str) -> str:
    """The path of a hash line. A line of another shape (``sha256sum`` escapes a name holding a
    backslash or a newline) is refused: a snapshot's names are Cassandra's, never such."""
    if not re.fullmatch(r"[0-9a-f]{64} [ *].+", line):
        raise SnapshotListingError(f"{host.name}: unexpected hash line for a file under {root}: {line!r}")
    return line[66:]


def digest_files(host: Host, root: str) -> dict[str, str]:
    """The content of each top-level ``*-Digest.crc32`` (a few bytes each), by file name."""
    out = host.run(host.privileged(["find", root, "-maxdepth", "1", "-type", "f", "-name", f"*{DIGEST}",
                                    "-exec", "grep", "-H", "", "--", "{}", "+"]), timeout=600, check=False)
    found = {}
    for line in out.text.splitlines():
        path, _, content = line.partition(f"{DIGEST}:")
        found[posixpath.basename(path) + DIGEST] = content.strip()
    return found


def fingerprint(components: dict[str, Listed], crcs: dict[str, str]) -> tuple[int, str]:
    """(SSTables, fingerprint) of a folder, as ``tasks.table_archive`` computes them."""
    lines = [f"{f.size} {crcs.get(path[: -len(DATA)] + DIGEST) or '-'}"
             for path, f in components.items() if "/" not in path and path.endswith(DATA)]
    return len(lines), fingerprint_lines(lines)


def table_entry(host: Host, repo: Repository, run: RunStore, *, backup_id: str, node: str, keyspace: str,
                table: str, table_dir: str, root: str, compression: Compression,
                streams: int = 1, open_repo: Callable[[], Repository] | None = None) -> ObjectEntry:
    """Store every component of the snapshot folder ``root`` not stored yet, then the table's
    list; return the manifest's entry of the table. ``streams`` > 1: the new files go over that
    many streams at once, each with a connection of its own from ``open_repo``."""
    t0 = time.monotonic()
    components = list_components(host, root, lambda path, size, ident: run.named.get(
        (node, table_dir, path, size, ident)))
    crcs = digest_files(host, root)
    listed = [Component(path, f.size, "", f.ident, name=f.name) for path, f in components.items()]

    @contextmanager
    def read_all(paths: list[str]) -> Iterator[Iterator[bytes]]:
        with host.stream_from(host.privileged(["cat", "--", *[posixpath.join(root, p) for p in paths]]),
                              timeout=3600) as chunks:
            yield _gone_as_changed(chunks, host, root, paths)

    parts = run.put_all(repo, listed, compression, read_all, streams, open_repo,
                        hash_paths=partial(hash_files, host, root))
    key = layout.table_parts_key(backup_id, node, keyspace, table_dir)
    stored = store(repo, key, [json.dumps([p.model_dump() for p in parts], separators=(",", ":")).encode()])
    sstables, fp = fingerprint(components, crcs)
    return ObjectEntry(
        key=key, size=stored.size, sha256=stored.sha256, component="cassandra",
        node=node, keyspace=keyspace, table=table, table_dir=table_dir, compression=compression,
        raw_size=sum(f.size for f in components.values()), files=len(components),
        seconds=round(time.monotonic() - t0, 3), sstables=sstables, fingerprint=fp, parts=parts)
