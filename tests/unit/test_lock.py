"""The repository lock on a real local repository: exclusive, stale locks taken over."""
from __future__ import annotations

import json
import time

import pytest

from tasks.lock import PREFIX, RepositoryLocked, acquire, live_locks
from tasks.repositories.local import LocalRepository


def test_second_taker_is_refused_with_the_holder_named(tmp_path):
    repo = LocalRepository(tmp_path)
    key = acquire(repo, "hot-backup")
    with pytest.raises(RepositoryLocked, match="locked by hot-backup on"):
        acquire(repo, "restore")
    repo.delete(key)
    repo.delete(acquire(repo, "restore"))
    assert not list(repo.list(PREFIX))


def test_stale_lock_of_a_crashed_run_is_removed(tmp_path):
    repo = LocalRepository(tmp_path)
    old = time.time() - 3600
    repo.put_bytes(f"{PREFIX}lock-dead.json", json.dumps(
        {"purpose": "hot-backup", "created": old, "refreshed": old}).encode())
    key = acquire(repo, "restore", stale_after=1800)
    assert list(live_locks(repo, time.time())) == [key]
