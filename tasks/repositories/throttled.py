"""``ThrottledRepository``: a bandwidth cap on the bytes that cross to and from the repository.

A wrapper like the retrying one, so it caps every kind of repository alike (local, SFTP, S3),
assembled by ``factory.open_repository`` when the stack file sets ``repository.max_mib_per_second``.
It sits under the retries, on the stored (compressed, encrypted) bytes: what crosses the wire.
Every repository opened in one process with the same settings shares one ``TokenBucket``, so the
cap holds for a whole run, whatever number of streams its tasks open in parallel (a worker near
the data, on another machine, has its own).
"""
from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from tasks.repositories.base import ObjectInfo, Repository, Unnamed

MIB = 1024 * 1024


class TokenBucket:
    """``rate`` bytes per second, shared by threads; a burst of at most one second's bytes.

    A taker reserves its bytes at once (the balance may go negative) and then sleeps until the
    balance it left would have refilled: concurrent streams share the rate fairly, in order."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self._lock = threading.Lock()
        self._balance = rate
        self._at = clock()

    def take(self, size: int) -> None:
        with self._lock:
            now = self.clock()
            self._balance = min(self.rate, self._balance + (now - self._at) * self.rate) - size
            self._at = now
            wait = -self._balance / self.rate
        if wait > 0:
            self.sleep(wait)


_buckets: dict[tuple[str, float], TokenBucket] = {}
_buckets_lock = threading.Lock()


def shared_bucket(url: str, mib_per_second: float) -> TokenBucket:
    """The process's one bucket for this repository and rate."""
    with _buckets_lock:
        return _buckets.setdefault((url, mib_per_second), TokenBucket(mib_per_second * MIB))


class ThrottledRepository(Repository):
    """Every stored byte passes the bucket: streams of ``put`` and ``get``, and small objects."""

    def __init__(self, inner: Repository, bucket: TokenBucket):
        self.inner, self.bucket = inner, bucket
        self.url = inner.url

    def _paced(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.bucket.take(len(chunk))
            yield chunk

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        return self.inner.put(key, self._paced(chunks))

    @property
    def names_after(self) -> bool:  # type: ignore[override]
        return self.inner.names_after

    def put_unnamed(self, near: str, chunks: Iterable[bytes]) -> AbstractContextManager[Unnamed]:
        return self.inner.put_unnamed(near, self._paced(chunks))

    def put_bytes(self, key: str, data: bytes) -> int:
        self.bucket.take(len(data))
        return self.inner.put_bytes(key, data)

    @contextmanager
    def get(self, key: str) -> Iterator[Iterator[bytes]]:
        with self.inner.get(key) as chunks:
            yield self._paced(chunks)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, data)

    def clean_temporary(self, older_than: float) -> builtins.list[str]:
        return self.inner.clean_temporary(older_than)

    def close(self) -> None:
        self.inner.close()
