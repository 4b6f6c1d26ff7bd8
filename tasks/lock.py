"""An exclusive lock kept in the repository itself, beside the data (as restic does).

Two runs writing or restoring the same repository at once — a scheduled backup during a restore,
a prune during a backup — must never overlap, whatever machine or Prefect deployment starts them.
The lock is an object ``locks/<id>.json``; it is refreshed while held, and a lock not refreshed for
``stale_after`` seconds (a crashed run) is ignored and removed by the next taker.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from collections.abc import Iterator

from config.model import Stack
from tasks.repositories import Repository, open_repository

PREFIX = "locks/"
STALE_AFTER = 30 * 60
REFRESH_EVERY = 5 * 60


class RepositoryLocked(RuntimeError):
    """Another run holds the repository."""


def _read(repo: Repository, key: str) -> dict | None:
    try:
        return json.loads(repo.get_bytes(key))
    except Exception:
        return None  # vanished or half-visible: not a live lock


def live_locks(repo: Repository, now: float, stale_after: float = STALE_AFTER) -> dict[str, dict]:
    live = {}
    for obj in repo.list(PREFIX):
        lock = _read(repo, obj.key)
        if lock is None:
            continue
        if now - lock.get("refreshed", 0) > stale_after:
            repo.delete(obj.key)  # a crashed holder's lock
            continue
        live[obj.key] = lock
    return live


def acquire(repo: Repository, purpose: str, *, stale_after: float = STALE_AFTER) -> str:
    """Write our lock, then check again that it is the only live one (two may race)."""
    now = time.time()
    holders = live_locks(repo, now, stale_after)
    if holders:
        raise RepositoryLocked(_describe(repo, holders))
    key = f"{PREFIX}lock-{uuid.uuid4().hex}.json"
    body = {"purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(),
            "created": now, "refreshed": now}
    repo.put_bytes(key, json.dumps(body).encode())
    others = {k: v for k, v in live_locks(repo, time.time(), stale_after).items() if k != key}
    if others:
        repo.delete(key)
        raise RepositoryLocked(_describe(repo, others))
    return key


def _describe(repo: Repository, holders: dict[str, dict]) -> str:
    return f"{repo.url} is locked by " + "; ".join(
        f"{v.get('purpose')} on {v.get('host')} pid {v.get('pid')} since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(v.get('created', 0)))} UTC ({k})"
        for k, v in holders.items())


@contextmanager
def repository_lock(stack: Stack, purpose: str) -> Iterator[str]:
    """Hold the repository's lock for the duration of the block, refreshing it meanwhile."""
    with open_repository(stack) as repo:
        key = acquire(repo, purpose)
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(REFRESH_EVERY):
            with open_repository(stack) as r:
                body = _read(r, key) or {}
                body["refreshed"] = time.time()
                r.put_bytes(key, json.dumps(body).encode())

    thread = threading.Thread(target=refresh, daemon=True, name="repository-lock-refresh")
    thread.start()
    try:
        yield key
    finally:
        stop.set()
        thread.join(timeout=60)
        with open_repository(stack) as repo:
            repo.delete(key)
