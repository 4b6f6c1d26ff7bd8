"""The repository lock against real stores: 30 runs started together, trial after trial, on a
local and on an S3 repository (the harness's S3 API server) — exactly one wins every time; and a
lock held by a Prefect flow run is judged by asking the real Prefect API."""
from __future__ import annotations

import json
import time
from functools import partial

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL

from tasks.lock import LOCK_KEY, RepositoryLocked, acquire, read_holder, release
from tests.lockrace import open_repository_from, race

TAKERS = TRIALS = 30


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_thirty_processes_started_together_exactly_one_wins(real_stack, kind):
    settings = real_stack.repository(kind, f"race-{kind}")
    t0 = time.monotonic()
    results = race(partial(open_repository_from, settings), TAKERS, TRIALS, mode="process")
    seconds = time.monotonic() - t0
    assert sorted(results) == list(range(TRIALS))
    bad = {t: dict(o) for t, o in results.items()
           if len(o["won"]) != 1 or len(o["refused"]) != TAKERS - 1}
    assert not bad, f"trials without exactly one winner: {bad}"
    print(f"{kind}: {TRIALS} trials x {TAKERS} processes, one winner each, {seconds:.1f}s")
    with open_repository_from(settings) as repo:
        assert read_holder(repo, LOCK_KEY) is None  # every winner released


@flow(name="lock-test-finished")
def finished_flow() -> str:
    from prefect.runtime import flow_run

    return flow_run.id


def test_lock_of_a_finished_flow_run_is_stale_at_once_a_running_ones_is_not(real_stack, prefect_server):
    settings = real_stack.repository("local", "flowrun-lock")
    run_id = finished_flow()  # Completed, as the Prefect API now says
    now = time.time()
    with open_repository_from(settings) as repo:
        repo.put_bytes(LOCK_KEY, json.dumps({
            "purpose": "hot-backup (another machine)", "host": "another-machine", "pid": 4242,
            "created": now, "refreshed": now, "nonce": "0123456789abcdef",
            "flow_run_id": run_id, "prefect_api": PREFECT_API_URL.value()}).encode())
        held = acquire(repo, "restore")  # refreshed just now, another host: only the run's state tells
        assert read_holder(repo, LOCK_KEY).nonce == held.nonce
        release(repo, held)

    @flow(name="lock-test-running")
    def running() -> None:
        with open_repository_from(settings) as repo:
            held = acquire(repo, "hot-backup (running flow)")
            assert held.flow_run_id
            try:
                with pytest.raises(RepositoryLocked, match="running flow"):
                    with open_repository_from(settings) as other:
                        acquire(other, "restore")
            finally:
                release(repo, held)

    running()


def test_read_only_flows_take_no_lock_and_unlock_shows_the_holder(real_stack, session_stack,
                                                                 prefect_server):
    from flows.catalog import list_backups
    from flows.prune import prune
    from flows.unlock import unlock
    from tasks.lock import repository_lock

    path, stack = session_stack("local", cluster=real_stack.cassandra1)
    with repository_lock(stack, "hot-backup (held by the test)"):
        assert prune(stack=str(path))["would_delete"] == []  # a dry run
        assert list_backups(stack=str(path)) == []
        rows = unlock(stack=str(path))
        assert [(r["key"], r["stale"], r["action"]) for r in rows] == [(LOCK_KEY, "no: live", "kept")]
        assert "held by the test" in rows[0]["holder"]
        with pytest.raises(RepositoryLocked, match="held by the test"):
            prune(stack=str(path), dry_run=False)
        rows = unlock(stack=str(path), force=True)
        assert rows[0]["action"] == "kept: force=True needs confirm=True too"
    assert unlock(stack=str(path)) == []
