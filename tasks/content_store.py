"""Content-addressed SSTable components: their names, what is already stored, store-if-missing.

docs/FORMAT.md, "Incremental mode". A component is named by the SHA-256 the node computed of it
(``sha256sum``) or, in an encrypted repository, by ``HMAC-SHA256(Kc, that digest)``: so a component
already stored is recognised without reading it across the wire, and the repository cannot test
guesses of content without the key. Never by file name: a generation's names repeat across nodes.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from tasks import layout
from tasks.archive import Compression, compress
from tasks.manifest import Manifest, SSTablePart, complete_manifests
from tasks.repositories import Repository
from tasks.repositories.encrypting import EncryptingRepository
from tasks.transfer import store


class ContentMismatch(RuntimeError):
    """A component's bytes are not those the node hashed: it changed while read."""

    transient = True


def content_name(repo: Repository, sha256_hex: str) -> str:
    """The content name of a component whose SHA-256 is ``sha256_hex``, for this repository."""
    inner = repo
    while not isinstance(inner, EncryptingRepository) and hasattr(inner, "inner"):
        inner = inner.inner  # a wrapper around the encrypting one (none today): look through it
    if isinstance(inner, EncryptingRepository):
        return inner.keyring.current.content_name(bytes.fromhex(sha256_hex))
    return sha256_hex


@dataclass(frozen=True)
class Known:
    """A stored component as a kept manifest records it."""

    stored_size: int
    stored_sha256: str


def manifest_parts(manifest: Manifest) -> Iterator[SSTablePart]:
    for entry in manifest.objects:
        yield from entry.parts or []


def known_components(repo: Repository, ignore: frozenset[str] = frozenset()) -> tuple[dict[str, Known], bool]:
    """Every component key the readable complete manifests (but ``ignore``) reference, with its
    stored size and hash; False when a manifest could not be read (its references are unknown)."""
    known: dict[str, Known] = {}
    manifests, readable = complete_manifests(repo, ignore)
    for m in manifests:
        for part in manifest_parts(m):
            known[part.key] = Known(part.stored_size, part.stored_sha256)
    return known, readable


class RunStore:
    """What one backup run stored or found, shared by its table tasks (threads of one process),
    so a component two tables share is sent once and recorded with the same stored hash."""

    _runs: dict[str, RunStore] = {}
    _runs_lock = threading.Lock()

    def __init__(self, known: dict[str, Known]):
        self.known = dict(known)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    @classmethod
    def open(cls, run_id: str, known: dict[str, Known]) -> RunStore:
        with cls._runs_lock:
            cls._runs[run_id] = cls(known)
            return cls._runs[run_id]

    @classmethod
    def of(cls, run_id: str, repo: Repository) -> RunStore:
        """The run's store; built from the manifests when the run did not open one (a retried
        task in another process)."""
        with cls._runs_lock:
            found = cls._runs.get(run_id)
        return found or cls.open(run_id, known_components(repo)[0])

    @classmethod
    def close(cls, run_id: str) -> None:
        with cls._runs_lock:
            cls._runs.pop(run_id, None)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def put(self, repo: Repository, *, path: str, size: int, sha256: str, compression: Compression,
            read: Callable[[], AbstractContextManager[Iterator[bytes]]]) -> SSTablePart:
        """The component ``path`` (``size`` bytes, SHA-256 ``sha256`` as the node computed it),
        sent only when not stored yet; ``read()`` opens its bytes (a context manager of chunks)."""
        name = content_name(repo, sha256)
        key = layout.sstable_key(name, compression)
        with self._key_lock(key):
            known = self.known.get(key)
            if known is not None:
                info = repo.stat(key)
                if info is not None and info.size == known.stored_size:
                    return SSTablePart(path=path, size=size, name=name, key=key, compression=compression,
                                       stored_size=known.stored_size, stored_sha256=known.stored_sha256)
            with read() as chunks:
                stored = store(repo, key, compress(_checked(chunks, path, size, sha256), compression))
            self.known[key] = Known(stored.size, stored.sha256)
            return SSTablePart(path=path, size=size, name=name, key=key, compression=compression,
                               stored_size=stored.size, stored_sha256=stored.sha256, added=True)


def _checked(chunks: Iterable[bytes], path: str, size: int, sha256: str) -> Iterator[bytes]:
    """The component's bytes, failing at the end when they are not those the node hashed
    (the repository write then never completes)."""
    digest, seen = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        seen += len(chunk)
        yield chunk
    if seen != size or digest.hexdigest() != sha256:
        raise ContentMismatch(f"{path}: read {seen} bytes with SHA-256 {digest.hexdigest()[:16]}…, "
                              f"the node said {size} bytes, {sha256[:16]}…")
