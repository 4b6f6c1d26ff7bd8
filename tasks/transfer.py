"""Move a stream into the repository, measuring size, SHA-256 and throughput on the way."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.manifest import Digest
from tasks.repositories import Repository


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    sha256: str
    seconds: float


def store(repo: Repository, key: str, chunks: Iterable[bytes]) -> Stored:
    """Stream ``chunks`` into ``repo`` under ``key``; the digest is of the bytes stored."""
    digest = Digest()
    started = time.monotonic()
    written = repo.put(key, digest.through(chunks))
    if written != digest.size:
        raise OSError(f"{repo.url}/{key}: wrote {written} bytes of {digest.size}")
    return Stored(key, digest.size, digest.sha256, time.monotonic() - started)


def verify(repo: Repository, key: str, size: int, sha256: str) -> str | None:
    """Re-read one object; return what is wrong with it, or None when it matches."""
    info = repo.stat(key)
    if info is None:
        return f"{key}: missing"
    if info.size != size:
        return f"{key}: size {info.size}, expected {size}"
    digest = Digest()
    with repo.get(key) as chunks:
        for _ in digest.through(chunks):
            pass
    if digest.sha256 != sha256:
        return f"{key}: SHA-256 {digest.sha256}, expected {sha256}"
    return None
