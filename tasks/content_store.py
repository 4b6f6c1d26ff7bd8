"""Content-addressed SSTable components: their names, what is already stored, store-if-missing.

docs/FORMAT.md, "Incremental mode". A component is named by the SHA-256 of its bytes or, in an
encrypted repository, by ``HMAC-SHA256(Kc, that digest)``, so that the repository cannot test
guesses of content without the key. Never by file name: a generation's names repeat across nodes.
A file a kept backup listed (same inode and mtime) takes that backup's name unread. A new file is
hashed as it arrives and named after its write, where the repository allows it (local, SFTP); on
S3 and under encryption the key is needed first, so the node hashes it before it is sent.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from functools import partial

from tasks import layout
from tasks.archive import Compression, compress
from tasks.manifest import Digest, Manifest, SSTablePart, complete_manifests
from tasks.repositories import Repository
from tasks.repositories.encrypting import EncryptingRepository
from tasks.transfer import store


class ContentMismatch(RuntimeError):
    """A component's bytes are not those the node hashed: it changed while read."""

    transient = True


def _encrypting(repo: Repository) -> EncryptingRepository | None:
    inner = repo
    while not isinstance(inner, EncryptingRepository) and hasattr(inner, "inner"):
        inner = inner.inner  # a wrapper around the encrypting one (none today): look through it
    return inner if isinstance(inner, EncryptingRepository) else None


def content_name(repo: Repository, sha256_hex: str) -> str:
    """The content name of a component whose SHA-256 is ``sha256_hex``, for this repository."""
    if (encrypting := _encrypting(repo)) is not None:
        return encrypting.keyring.current.content_name(bytes.fromhex(sha256_hex))
    return sha256_hex


def content_key_id(repo: Repository) -> str | None:
    """The id of the key whose ``Kc`` names this run's components; None: plain SHA-256 names."""
    encrypting = _encrypting(repo)
    return encrypting.keyring.current.key_id if encrypting is not None else None


@dataclass(frozen=True)
class Component:
    """A file of a snapshot folder as the node listed it: relative path, size, SHA-256 ("" until
    hashed)."""

    path: str
    size: int
    sha256: str
    ident: str | None = None  # <inode>:<mtime>, recorded for the next backups (FileId)
    #: its content name when a kept backup listed the same file: looked up, not hashed (hashed
    #: and sent only if its object is gone)
    name: str = ""


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
    manifests, readable = complete_manifests(repo, ignore)
    return _known(manifests), readable


def _known(manifests: Iterable[Manifest]) -> dict[str, Known]:
    return {part.key: Known(part.stored_size, part.stored_sha256) for m in manifests for part in manifest_parts(m)}


#: A file as a node listed it: (node, table folder, path in the snapshot, size, inode:mtime).
FileId = tuple[str, str, str, int, str]


def _named_files(repo: Repository, manifests: Iterable[Manifest]) -> dict[FileId, str]:
    """The content name of every file the kept backups listed with its inode and mtime, from
    the backups whose names this run's key makes (all, without encryption; after a key
    rotation none, until a backup under the new key: its first one stores everything anew)."""
    key_id = content_key_id(repo)
    return {(e.node or "", e.table_dir or "", p.path, p.size, p.ident): p.name
            for m in manifests if m.content_key_id == key_id
            for e in m.objects for p in e.parts or [] if p.ident}


class RunStore:
    """What one backup run stored or found, shared by its table tasks (threads of one process),
    so a component two tables share is sent once and recorded with the same stored hash."""

    _runs: dict[str, RunStore] = {}
    _runs_lock = threading.Lock()

    def __init__(self, known: dict[str, Known], named: dict[FileId, str] | None = None):
        self.known = dict(known)
        #: content names of the files kept backups listed, by identity: an unchanged file is
        #: not hashed again
        self.named = dict(named or {})
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    @classmethod
    def from_repository(cls, repo: Repository) -> RunStore:
        """What the readable complete manifests stored, read once for a whole run."""
        manifests, _ = complete_manifests(repo, frozenset())
        return cls(_known(manifests), _named_files(repo, manifests))

    @classmethod
    def open(cls, run_id: str, repo: Repository) -> RunStore:
        with cls._runs_lock:
            cls._runs[run_id] = cls.from_repository(repo)
            return cls._runs[run_id]

    @classmethod
    def of(cls, run_id: str, repo: Repository) -> RunStore:
        """The run's store; built from the manifests when the run did not open one (a retried
        task in another process)."""
        with cls._runs_lock:
            found = cls._runs.get(run_id)
        return found or cls.open(run_id, repo)

    @classmethod
    def close(cls, run_id: str) -> None:
        with cls._runs_lock:
            cls._runs.pop(run_id, None)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def put(self, repo: Repository, *, path: str, size: int, sha256: str, compression: Compression,
            read: Callable[[], AbstractContextManager[Iterator[bytes]]], ident: str | None = None) -> SSTablePart:
        """The component ``path`` (``size`` bytes, SHA-256 ``sha256`` as the node computed it,
        identity ``ident``), sent only when not stored yet; ``read()`` opens its bytes (a context
        manager of chunks)."""
        c = Component(path, size, sha256, ident)
        key = self._key(repo, c, compression)
        with self._key_lock(key):
            if found := self._stored(repo, c, compression):
                return found
            with read() as chunks:
                return self._send(repo, c, compression, chunks)

    def put_all(self, repo: Repository, components: Sequence[Component], compression: Compression,
                read_all: Callable[[list[str]], AbstractContextManager[Iterator[bytes]]],
                streams: int = 1, open_repo: Callable[[], Repository] | None = None,
                hash_paths: HashPaths | None = None) -> list[SSTablePart]:
        """``put`` for every component, the ones not stored yet read by ``read_all(paths)``:
        their bytes back to back, in that order (one command on the node per group of files
        instead of one per file; tasks/table_parts.py).

        Components listed without their SHA-256 (``sha256 == ""``) are sent first and named by
        the SHA-256 of their bytes as they arrive, where the repository can name an object after
        its bytes (``names_after``: local and SFTP), so the node reads each new file once.
        Elsewhere (S3, and the keyed name of an encrypted object, bound into the object) they are
        hashed by ``hash_paths`` ahead of their group's sending (``_HashAhead``): the node hashes
        the next groups while one is on the wire, not the whole table before its first byte.

        ``streams`` > 1 with ``open_repo`` (a connection of its own per stream): that many
        groups are hashed and sent at once, so that one big table does not bound the run.

        A component another table of the run is sending right now (the same content: every
        SSTable's ``TOC.txt``, say) is left to that table and recorded once it is stored."""
        listed = list(components)  # each unhashed one replaced once its group is hashed
        hash_first = not repo.names_after
        if hash_first and hash_paths is None and any(not c.sha256 for c in listed):
            raise ValueError("components without their SHA-256 need hash_paths here")
        parts: dict[int, SSTablePart] = {}
        claimed: list[threading.Lock] = []
        busy: list[int] = []
        guard = threading.Lock()

        def claim(r: Repository, group: list[tuple[int, Component]]) -> list[tuple[int, Component]]:
            """The group's components this table sends: the others are stored already (recorded
            now) or being sent by another table (recorded at the end)."""
            mine = []
            for i, c in group:
                lock = self._key_lock(self._key(r, c, compression))
                if not lock.acquire(blocking=False):
                    with guard:
                        busy.append(i)
                elif found := self._stored(r, c, compression):
                    lock.release()
                    with guard:
                        parts[i] = found
                else:
                    with guard:
                        claimed.append(lock)
                    mine.append((i, c))
            return mine

        ahead: _HashAhead | None = None

        def hash_then_send(r: Repository, group: list[tuple[int, Component]]) -> dict[int, SSTablePart]:
            if hash_first and not group[0][1].sha256:
                assert ahead is not None
                hashes = ahead.of([c.path for _, c in group])
                group = [(i, replace(c, sha256=hashes[c.path])) for i, c in group]
                for i, c in group:
                    listed[i] = c
                group = claim(r, group)
            return self._send_group(r, group, compression, read_all) if group else {}

        for i, c in enumerate(listed):  # known by name alone: stored, or hashed and sent below
            if c.name and not c.sha256:
                if found := self._stored(repo, c, compression):
                    parts[i] = found
                else:
                    listed[i] = replace(c, name="")
        try:
            ready = claim(repo, [(i, c) for i, c in enumerate(listed) if c.sha256])
            groups = read_groups(ready) + read_groups(
                [(i, c) for i, c in enumerate(listed) if not c.sha256 and i not in parts])
            groups.sort(key=lambda g: -sum(c.size for _, c in g))  # the longest first
            if hash_first and hash_paths is not None and any(not g[0][1].sha256 for g in groups):
                ahead = _HashAhead([g for g in groups if not g[0][1].sha256], hash_paths)
            if streams > 1 and open_repo is not None and len(groups) > 1:
                parts.update(_at_once(groups, hash_then_send, streams, open_repo))
            else:
                for group in groups:
                    parts.update(hash_then_send(repo, group))
        finally:
            if ahead is not None:
                ahead.stop()
            for lock in claimed:
                lock.release()
        for i in busy:  # stored by now by the table that held it; if that one failed, sent here
            c = listed[i]
            parts[i] = self.put(repo, path=c.path, size=c.size, sha256=c.sha256, compression=compression,
                                read=partial(read_all, [c.path]), ident=c.ident)
        return [parts[i] for i in range(len(listed))]

    def _send_group(self, repo: Repository, group: list[tuple[int, Component]], compression: Compression,
                    read_all: Callable[[list[str]], AbstractContextManager[Iterator[bytes]]]
                    ) -> dict[int, SSTablePart]:
        """One ``read_all`` of the group's files, split again by their sizes, each sent (and
        named after its bytes when not hashed)."""
        sent = {}
        with read_all([c.path for _, c in group]) as chunks:
            stream = Concatenated(chunks)
            for i, c in group:
                send = self._send if c.sha256 else self._send_unnamed
                sent[i] = send(repo, c, compression, stream.take(c.size))
            stream.finish()
        return sent

    def _name(self, repo: Repository, c: Component) -> str:
        return c.name or content_name(repo, c.sha256)

    def _key(self, repo: Repository, c: Component, compression: Compression) -> str:
        return layout.sstable_key(self._name(repo, c), compression)

    def _stored(self, repo: Repository, c: Component, compression: Compression) -> SSTablePart | None:
        """The part of ``c`` when a kept backup or this run stored it (and it is still there)."""
        name = self._name(repo, c)
        key = layout.sstable_key(name, compression)
        known = self.known.get(key)
        if known is None:
            return None
        info = repo.stat(key)
        if info is None or info.size != known.stored_size:
            return None
        return SSTablePart(path=c.path, size=c.size, name=name, key=key, compression=compression,
                           stored_size=known.stored_size, stored_sha256=known.stored_sha256, ident=c.ident)

    def _send(self, repo: Repository, c: Component, compression: Compression,
              chunks: Iterable[bytes]) -> SSTablePart:
        name = content_name(repo, c.sha256)
        key = layout.sstable_key(name, compression)
        stored = store(repo, key, compress(_checked(chunks, c.path, c.size, c.sha256), compression))
        self.known[key] = Known(stored.size, stored.sha256)
        return SSTablePart(path=c.path, size=c.size, name=name, key=key, compression=compression,
                           stored_size=stored.size, stored_sha256=stored.sha256, added=True, ident=c.ident)

    def _send_unnamed(self, repo: Repository, c: Component, compression: Compression,
                      chunks: Iterable[bytes]) -> SSTablePart:
        """A component no kept backup listed, written first, then named by the SHA-256 of the
        bytes that arrived; dropped when that content is stored already (in a kept backup, or by
        another table meanwhile: under the key's lock, so one object and one stored hash)."""
        plain, stored = Digest(), Digest()
        with repo.put_unnamed(layout.SSTABLES_PREFIX,
                              stored.through(compress(plain.through(chunks), compression))) as unnamed:
            if plain.size != c.size:  # never named
                raise ContentMismatch(f"{c.path}: read {plain.size} bytes, the node listed {c.size}")
            if unnamed.written != stored.size:
                raise OSError(f"{repo.url}: wrote {unnamed.written} bytes of {stored.size} for {c.path}")
            c = replace(c, sha256=plain.sha256)
            name = content_name(repo, c.sha256)
            key = layout.sstable_key(name, compression)
            with self._key_lock(key):
                if found := self._stored(repo, c, compression):
                    return found
                unnamed.name_as(key)
                self.known[key] = Known(stored.size, stored.sha256)
        return SSTablePart(path=c.path, size=c.size, name=name, key=key, compression=compression,
                           stored_size=stored.size, stored_sha256=stored.sha256, added=True, ident=c.ident)


#: Files read by one ``cat`` at most (its argument list stays far below the node's ARG_MAX) ...
FILES_PER_READ = 256
#: ... and bytes: a table's new files are read in groups of about this size, which parallel
#: streams share out (tasks/table_parts.py); a bigger file is a group of its own.
GROUP_BYTES = 64 << 20


def read_groups(files: list[tuple[int, Component]]) -> list[list[tuple[int, Component]]]:
    """The files in their order, cut into groups of at most FILES_PER_READ files and, unless one
    file alone is bigger, GROUP_BYTES bytes."""
    groups: list[list[tuple[int, Component]]] = []
    size = 0
    for item in files:
        if not groups or len(groups[-1]) >= FILES_PER_READ or size + item[1].size > GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item[1].size
    return groups


#: SHA-256 of files named by their paths, computed on their node (tasks/table_parts.hash_files).
HashPaths = Callable[[list[str]], dict[str, str]]


class _HashAhead:
    """The node hashes the groups' files in the order they are sent, in a thread of its own,
    ahead of their sending: the first group alone, so that it goes out at once, then twice as
    many groups per command each time (at most ``MAX_GROUPS_PER_HASH``), so that a table of many
    groups costs a few commands (each one a round trip to the node), not one per group."""

    def __init__(self, groups: list[list[tuple[int, Component]]], hash_paths: HashPaths):
        self._cond = threading.Condition()
        self._hashes: dict[str, str] = {}
        self._error: BaseException | None = None
        self._stopped = self._done = False
        self._thread = threading.Thread(target=self._run, args=(groups, hash_paths), name="hash-ahead", daemon=True)
        self._thread.start()

    def _run(self, groups: list[list[tuple[int, Component]]], hash_paths: HashPaths) -> None:
        try:
            i, n = 0, 1
            while i < len(groups) and not self._stopped:
                got = hash_paths([c.path for group in groups[i:i + n] for _, c in group])
                with self._cond:
                    self._hashes.update(got)
                    self._cond.notify_all()
                i, n = i + n, min(2 * n, MAX_GROUPS_PER_HASH)
        except BaseException as exc:  # handed to the stream that waits for these files
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def of(self, paths: list[str]) -> dict[str, str]:
        """The SHA-256 of ``paths`` once the node hashed them; the hashing's error if it failed first."""
        with self._cond:
            self._cond.wait_for(lambda: self._done or all(p in self._hashes for p in paths))
            if missing := [p for p in paths if p not in self._hashes]:
                raise self._error or RuntimeError(f"not hashed: {', '.join(missing[:5])}")
            return {p: self._hashes[p] for p in paths}

    def stop(self) -> None:
        self._stopped = True
        self._thread.join()


#: Groups hashed by one command at most (about 1 GiB: the hashing stays ahead of the sending).
MAX_GROUPS_PER_HASH = 16


def _at_once(groups: list[list[tuple[int, Component]]],
             work_on: Callable[[Repository, list[tuple[int, Component]]], dict[int, SSTablePart]],
             streams: int, open_repo: Callable[[], Repository]) -> dict[int, SSTablePart]:
    """``streams`` threads, each with its own repository connection (SFTP and S3 clients are not
    shared between threads), taking the groups in turn; after a failure no group is started."""
    todo = list(groups)
    lock, failed = threading.Lock(), threading.Event()
    sent: dict[int, SSTablePart] = {}

    def work() -> None:
        try:
            with open_repo() as repo:
                while not failed.is_set():
                    with lock:
                        if not todo:
                            return
                        group = todo.pop(0)
                    done = work_on(repo, group)
                    with lock:
                        sent.update(done)
        except BaseException:
            failed.set()
            raise

    n = min(streams, len(todo))
    with ThreadPoolExecutor(n) as pool:
        for future in [pool.submit(work) for _ in range(n)]:
            future.result()
    return sent


class Concatenated:
    """Files sent back to back (one ``cat``), taken in turn by their known sizes. A short or long
    stream surfaces as a content mismatch (``_checked``) or at ``finish``."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buf = b""

    def take(self, size: int) -> Iterator[bytes]:
        left = size
        while left:
            if not self._buf:
                self._buf = next(self._chunks, b"")
                if not self._buf:
                    return
            piece, self._buf = self._buf[:left], self._buf[left:]
            left -= len(piece)
            yield piece

    def finish(self) -> None:
        """Read to the end (a failed command raises there); bytes beyond the files are an error."""
        extra = len(self._buf) + sum(len(chunk) for chunk in self._chunks)
        if extra:
            raise ContentMismatch(f"{extra} bytes more than the files' listed sizes: a file grew while read")


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
