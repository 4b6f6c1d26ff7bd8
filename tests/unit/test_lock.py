"""The repository lock on real local repositories (tmp folders): exclusive, never stranded."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from functools import partial

import pytest

from tasks.lock import (
    BREAK_PREFIX,
    LOCK_KEY,
    PREFIX,
    Holder,
    LockLost,
    RepositoryLocked,
    acquire,
    break_lock,
    hold,
    list_locks,
    read_holder,
    release,
    stale_reason,
)
from tasks.repositories import RepositoryError, TransientRepositoryError
from tasks.repositories.local import LocalRepository
from tests.lockrace import race


def put_lock(repo, key=LOCK_KEY, **fields):
    now = time.time()
    body = {"purpose": "hot-backup hot-x", "host": "elsewhere", "pid": 1, "created": now,
            "refreshed": now, "nonce": "feedface", **fields}
    repo.put_bytes(key, json.dumps(body).encode())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_taker_is_refused_with_the_holder_named(tmp_path):
    repo = LocalRepository(tmp_path)
    held = acquire(repo, "hot-backup")
    with pytest.raises(RepositoryLocked, match="locked by hot-backup on"):
        acquire(repo, "restore")
    release(repo, held)
    release(repo, acquire(repo, "restore"))
    assert not list(repo.list(PREFIX))


class FlakyReads(LocalRepository):
    def get(self, key):
        if key.startswith(PREFIX):
            raise TransientRepositoryError("503 SlowDown")
        return super().get(key)


def test_a_failed_read_is_an_error_never_no_lock(tmp_path):
    held = acquire(LocalRepository(tmp_path), "hot-backup")
    with pytest.raises(TransientRepositoryError, match="SlowDown"):
        acquire(FlakyReads(tmp_path), "restore")
    assert read_holder(LocalRepository(tmp_path), LOCK_KEY).nonce == held.nonce


def test_an_unreadable_lock_is_an_error(tmp_path):
    repo = LocalRepository(tmp_path)
    repo.put_bytes(LOCK_KEY, b"{not json")
    with pytest.raises(Exception, match="unreadable.*unlock"):
        acquire(repo, "restore")


def test_dead_pid_on_this_host_is_stale_at_once_and_a_live_one_is_not(tmp_path):
    repo = LocalRepository(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        put_lock(repo, host=socket.gethostname(), pid=sleeper.pid)
        with pytest.raises(RepositoryLocked, match=f"pid {sleeper.pid}"):
            acquire(repo, "restore")
    finally:
        sleeper.kill()
        sleeper.wait()
    pid = dead_pid()
    put_lock(repo, host=socket.gethostname(), pid=pid)  # refreshed just now
    assert "is gone" in stale_reason(read_holder(repo, LOCK_KEY), time.time())
    held = acquire(repo, "restore")
    assert read_holder(repo, LOCK_KEY).nonce == held.nonce
    assert not [o for o in repo.list(PREFIX) if o.key.startswith(BREAK_PREFIX)]


def test_a_reused_pid_is_not_the_holder(tmp_path):
    repo = LocalRepository(tmp_path)
    me = Holder.ours("x")
    put_lock(repo, host=socket.gethostname(), pid=me.pid, pid_start=(me.pid_start or 0) + 1)
    assert "is gone" in stale_reason(read_holder(repo, LOCK_KEY), time.time())


def test_terminal_flow_run_is_stale_at_once_a_running_one_is_not(tmp_path):
    repo = LocalRepository(tmp_path)
    put_lock(repo, flow_run_id="0b9e-run", prefect_api="http://api")
    holder = read_holder(repo, LOCK_KEY)
    assert stale_reason(holder, time.time(), final_state=lambda rid, api: "Crashed") == \
        "its Prefect flow run 0b9e-run is Crashed"
    assert stale_reason(holder, time.time(), final_state=lambda rid, api: None) is None
    # An old lock of another host is stale by time alone.
    assert "not refreshed for 40 min" in stale_reason(holder, time.time() + 2400,
                                                      final_state=lambda rid, api: None)


def test_old_format_locks_still_count_while_live(tmp_path):
    repo = LocalRepository(tmp_path)
    put_lock(repo, key=f"{PREFIX}lock-0123abcd.json")
    with pytest.raises(RepositoryLocked, match="hot-backup hot-x"):
        acquire(repo, "restore")
    put_lock(repo, key=f"{PREFIX}lock-0123abcd.json", refreshed=time.time() - 3600)
    release(repo, acquire(repo, "restore"))
    assert not list(repo.list(PREFIX))


def test_only_one_breaker_wins_and_a_fresh_lock_is_never_broken(tmp_path):
    repo = LocalRepository(tmp_path)
    put_lock(repo, refreshed=time.time() - 3600)
    stale = read_holder(repo, LOCK_KEY)
    repo.put_bytes(f"{BREAK_PREFIX}{stale.nonce}.json", Holder.ours("other breaker").encode())
    assert not break_lock(repo, stale, "old")  # another run is breaking it
    assert read_holder(repo, LOCK_KEY) is not None
    repo.delete(f"{BREAK_PREFIX}{stale.nonce}.json")
    assert break_lock(repo, stale, "old") and read_holder(repo, LOCK_KEY) is None
    held = acquire(repo, "new")
    assert break_lock(repo, stale, "old")  # a late breaker of the old nonce: nothing to do
    assert read_holder(repo, LOCK_KEY).nonce == held.nonce


class FailingWrites(LocalRepository):
    fail = False

    def put(self, key, chunks):
        if self.fail:
            raise TransientRepositoryError("connection reset")
        return super().put(key, chunks)


def test_a_failed_refresh_aborts_the_run(tmp_path):
    repo = FailingWrites(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(LockLost, match="refresh failing"):
        with hold(lambda: repo, "hot-backup", stale_after=0.9, refresh_every=0.1,
                  refresh_retry=0.05):
            FailingWrites.fail = True
            try:
                while time.monotonic() - t0 < 10:  # the work: aborted well before it ends
                    time.sleep(0.01)
            finally:
                FailingWrites.fail = False
    assert time.monotonic() - t0 < 5
    assert not list(repo.list(PREFIX))  # released all the same


def test_a_lock_taken_from_us_aborts_the_run(tmp_path):
    repo = LocalRepository(tmp_path)
    with pytest.raises(LockLost, match="taken from us"):
        with hold(lambda: repo, "hot-backup", refresh_every=0.05) as held:
            put_lock(repo)  # another run broke ours and holds it now
            for _ in range(500):
                time.sleep(0.01)
            held.check()
    assert read_holder(repo, LOCK_KEY).nonce == "feedface"  # not ours: left alone


class FailingDeletes(LocalRepository):
    def delete(self, key):
        raise RepositoryError("deleting lock failed")


def test_a_failed_release_never_hides_the_runs_own_error(tmp_path, caplog):
    repo = FailingDeletes(tmp_path)
    caplog.set_level(logging.WARNING)
    with pytest.raises(ValueError, match="S3 outage"):
        with hold(lambda: repo, "hot-backup"):
            raise ValueError("S3 outage")
    assert "releasing the lock" in caplog.text and "deleting lock failed" in caplog.text
    other = FailingDeletes(tmp_path / "other")
    with hold(lambda: other, "hot-backup"):
        pass  # the work succeeded: a failed release is logged, the run is not failed for it


def test_thirty_threads_started_together_exactly_one_wins(tmp_path):
    results = race(partial(LocalRepository, tmp_path), takers=30, trials=30, mode="thread")
    assert len(results) == 30
    for trial, outcomes in results.items():
        assert set(outcomes) <= {"won", "refused"}, (trial, dict(outcomes))
        assert len(outcomes["won"]) == 1 and len(outcomes["refused"]) == 29, (trial, dict(outcomes))


def test_thirty_processes_started_together_exactly_one_wins(tmp_path):
    results = race(partial(LocalRepository, tmp_path), takers=30, trials=5, mode="process")
    for trial, outcomes in results.items():
        assert len(outcomes["won"]) == 1 and len(outcomes["refused"]) == 29, (trial, dict(outcomes))


def test_list_locks_shows_every_lock_and_marker(tmp_path):
    repo = LocalRepository(tmp_path)
    put_lock(repo)
    put_lock(repo, key=f"{PREFIX}lock-99.json")
    repo.put_bytes(f"{BREAK_PREFIX}abc.json", b"{}")
    holders, markers = list_locks(repo)
    assert [h.key for h in holders] == [LOCK_KEY, f"{PREFIX}lock-99.json"]
    assert [h.format for h in holders] == [2, 1] and markers == [f"{BREAK_PREFIX}abc.json"]


def test_unlock_removes_stale_locks_and_a_live_one_only_when_forced_and_confirmed(tmp_path):
    from flows.unlock import lock_rows

    repo = LocalRepository(tmp_path)
    put_lock(repo, host=socket.gethostname(), pid=dead_pid())
    put_lock(repo, key=f"{PREFIX}lock-0a.json", refreshed=time.time() - 3600)
    repo.put_bytes(f"{BREAK_PREFIX}dead.json", Holder.ours("x").encode())  # a breaker at work
    rows = lock_rows(repo)
    assert [(r["key"], r["stale"].split(":")[0], r["action"]) for r in rows] == [
        (LOCK_KEY, "yes", "removed"), (f"{BREAK_PREFIX}dead.json", "no", "kept"),
        (f"{PREFIX}lock-0a.json", "yes", "removed")]
    assert "is gone" in rows[0]["stale"] and "hot-backup hot-x" in rows[0]["holder"]

    held = acquire(repo, "restore")
    assert lock_rows(repo)[0]["action"] == "kept" and lock_rows(repo)[0]["stale"] == "no: live"
    assert lock_rows(repo, force=True)[0]["action"] == "kept: force=True needs confirm=True too"
    assert read_holder(repo, LOCK_KEY).nonce == held.nonce
    assert lock_rows(repo, force=True, confirm=True)[0]["action"] == "removed"
    assert read_holder(repo, LOCK_KEY) is None
