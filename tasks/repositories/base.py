"""The Repository interface: put a stream, get a stream, stat, list, delete, plus the two
small primitives locks and prune need: an exclusive create and the removal of temporary leftovers.

Keys are relative POSIX paths (``<backup-id>/cassandra/n1/thehive/edgestore-….tar.zst``).
``put`` is atomic in every implementation: a reader sees the whole object or none of it.
"""
from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

#: Objects hold incident data: readable by the repository's owner only (umask may narrow further).
FILE_MODE, DIR_MODE = 0o600, 0o700

_KEY_PART = re.compile(r"^[A-Za-z0-9%][A-Za-z0-9._+=@,%-]*\Z")


class RepositoryError(Exception):
    """A definite failure (permission denied, bad key…): retrying will not help.

    ``transient`` is the one classification the retry layers read (``tasks/retry.py``).
    """

    transient = False


class TransientRepositoryError(RepositoryError):
    """A passing fault (connection reset, 5xx, throttling): the operation may be retried."""

    transient = True


class RetriesExhausted(RepositoryError):
    """A transient fault outlasted ``RetryingRepository``'s attempts: definite from here on, so
    the task around the call does not retry it a second time."""


class ObjectNotFound(RepositoryError):
    pass


def validate_key(key: str) -> str:
    """Refuse keys that could escape the repository root or collide with temporary names."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.match(p) for p in parts):
        raise RepositoryError(f"invalid object key {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass(frozen=True)
class Unnamed:
    """An object written under a temporary name, waiting for its key (``Repository.put_unnamed``)."""

    written: int  # bytes written
    #: give the object its key, atomically (an object there already is replaced)
    name_as: Callable[[str], None]


class Repository(ABC):
    """A store of immutable objects addressed by key."""

    url: str  # where it is, for reports (never contains a secret)
    #: ``put_unnamed`` works here: an object's key can be chosen once its bytes are written
    names_after: bool = False

    @abstractmethod
    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the stream atomically under ``key``; return the number of bytes written."""

    @abstractmethod
    def get(self, key: str) -> AbstractContextManager[Iterator[bytes]]:
        """Open ``key`` for reading as a stream of chunks; ObjectNotFound if absent."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size of ``key``, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no particular order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if no object has that key; True if this call made it.

        Exclusive among concurrent callers on any machine: of several racing calls exactly one
        returns True. The lock (``tasks/lock.py``) is built on it.
        """

    @abstractmethod
    def clean_temporary(self, older_than: float) -> builtins.list[str]:
        """Remove temporary leftovers of interrupted writes (temp files, pending multipart
        uploads) started more than ``older_than`` seconds ago; return what was removed."""

    def put_unnamed(self, near: str, chunks: Iterable[bytes]) -> AbstractContextManager[Unnamed]:
        """Write the stream under a temporary name beside ``near`` (a key prefix), for an object
        whose key comes from its bytes (a content name): the caller names it (``name_as``) or
        leaves it, and it is removed on exit. Only where ``names_after``."""
        raise NotImplementedError(f"{type(self).__name__} needs an object's key before its bytes")

    def close(self) -> None:  # noqa: B027 - optional: backends that hold nothing need not close
        pass

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_bytes(self, key: str) -> bytes:
        with self.get(key) as chunks:
            return b"".join(chunks)

    def put_bytes(self, key: str, data: bytes) -> int:
        return self.put(key, [data])
