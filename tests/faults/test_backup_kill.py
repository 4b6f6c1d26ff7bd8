"""A hot backup SIGKILLed mid-stream, and two repositories backing up one cluster at once.

The backups run as real processes (``python -c "...hot_backup(...)"``) reporting to the session's
Prefect test server, on the single-node cluster seeded big enough that a table streams for
seconds (bzip2, one table at a time).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from flows.hot_backup import hot_backup
from flows.prune import prune
from tasks import cassandra
from tasks.catalog import catalog
from tasks.hosts import host_for
from tasks.layout import SNAPSHOT_TAG, new_backup_id, repository_id, snapshot_tag
from tasks.lock import LOCK_KEY, read_holder, repository_lock, stale_reason
from tasks.manifest import read_manifest
from tasks.preflight import preflight
from tasks.repositories import open_repository
from tests.stack.stack import streaming_backup

pytestmark = pytest.mark.usefixtures("prefect_server")
ROOT = Path(__file__).resolve().parents[2]
SLOW = dict(compression="bzip2", tables_per_node=1, record_digests=False)


def start_backup(path: Path, log: Path, **params) -> subprocess.Popen:
    """The hot backup in its own process, as a scheduled run would be."""
    args = ", ".join(f"{k}={v!r}" for k, v in {"stack": str(path), **params}.items())
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", f"from flows.hot_backup import hot_backup; "
                             f"hot_backup({args})"], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_mid_stream(proc: subprocess.Popen, repo_root: Path, log: Path, es=None,
                    timeout: float = 300) -> str:
    """Wait until the run streams its first table archive (a temp object in the repository)
    — and, given ``es``, until its Elasticsearch snapshot exists; return its backup id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the backup ended before it was mid-stream:\n{log.read_text()[-3000:]}"
        backup_id = streaming_backup(repo_root)
        # Looked at again after the ES call: the temporary object may have been renamed meanwhile.
        if backup_id and (es is None or es(backup_id)) and streaming_backup(repo_root) == backup_id:
            return backup_id
        time.sleep(0.02)
    raise AssertionError(f"no table archive started within {timeout}s:\n{log.read_text()[-3000:]}")


def node_tags(stack) -> set[str]:
    node = stack.nodes_with("cassandra")[0]
    with host_for(stack, node) as host:
        return cassandra.list_snapshots(host, stack.cassandra.settings_for(node.name))


def repo_id(stack) -> str:
    with open_repository(stack) as repo:
        return repository_id(repo.url)


def test_sigkill_mid_stream_next_backup_runs_at_once_and_prune_removes_the_rest(
        seeded1, session_stack, real_stack, tmp_path):
    path, stack = session_stack("local", cluster=seeded1["cluster"])
    root = Path(stack.repository.path)
    es = real_stack.elasticsearch.client()
    es_repo = stack.elasticsearch.snapshot_repository.name

    def es_snapshot(backup_id: str) -> bool:
        return bool(es.snapshot.get(repository=es_repo, snapshot=backup_id,
                                    ignore_unavailable=True)["snapshots"])

    log = tmp_path / "killed.log"
    proc = start_backup(path, log, components=["cassandra", "elasticsearch"], **SLOW)
    killed = wait_mid_stream(proc, root, log, es=es_snapshot)
    proc.kill()
    assert proc.wait() == -9
    tag = snapshot_tag(killed, repo_id(stack))
    assert tag in node_tags(stack)  # the killed run left its snapshot pinned…
    with open_repository(stack) as repo:
        holder = read_holder(repo, LOCK_KEY)  # …and its lock, on this host, with a dead PID
    assert holder.pid == proc.pid and "is gone" in stale_reason(holder, time.time())
    # mid-stream: a component's temporary object (incremental, the default), or an archive's
    assert [*root.glob(f"{killed}/cassandra/**/.tmp-*"), *root.glob("sstables/**/.tmp-*")] and es_snapshot(killed)

    t0 = time.monotonic()
    result = hot_backup(stack=str(path), components=["cassandra"], record_digests=False)
    seconds = time.monotonic() - t0
    assert tag not in node_tags(stack)
    assert not [t for t in node_tags(stack) if (m := SNAPSHOT_TAG.match(t)) and m["repo"] == repo_id(stack)]
    with open_repository(stack) as repo:
        rows = {r["id"]: r["status"] for r in catalog(repo)}
    assert rows == {result["backup_id"]: "complete", killed: "incomplete"}
    print(f"next backup ran at once after the kill: {seconds:.1f}s")

    pruned = prune(stack=str(path), incomplete_after_hours=0, dry_run=False)
    assert pruned["deleted"] == [killed]
    # The killed run's temporaries: its components' (or table archives'), and the ES snapshot
    # copy's under es-blobs/.
    assert pruned["temporary_removed"] and all(k.startswith((f"{killed}/", "sstables/", "es-blobs/"))
                                               for k in pruned["temporary_removed"])
    assert not [p for p in root.rglob("*") if p.is_file() and p.parts[len(root.parts)] == killed]
    assert not list(root.rglob(".tmp-*")) and not es_snapshot(killed)
    with open_repository(stack) as repo:
        assert [r["id"] for r in catalog(repo)] == [result["backup_id"]]
        read_manifest(repo, result["backup_id"])  # the good one untouched
        assert read_holder(repo, LOCK_KEY) is None


def test_two_repositories_backing_up_one_cluster_never_clear_each_others_snapshots(
        seeded1, session_stack, tmp_path):
    cluster = seeded1["cluster"]
    path_a, stack_a = session_stack("local", cluster=cluster)
    path_b, stack_b = session_stack("local", cluster=cluster)
    id_a, id_b = repo_id(stack_a), repo_id(stack_b)
    assert id_a != id_b
    node = stack_a.nodes_with("cassandra")[0]
    settings = stack_a.cassandra.settings_for(node.name)
    # Never ours to clear: a restore's rollback snapshot and an earlier version's tag.
    others = ["rb-thehive-20261128-000000", new_backup_id("hot")]
    with host_for(stack_a, node) as host:
        for tag in others:
            cassandra.take_snapshot(host, settings, tag, ["thehive"])
    try:
        log = tmp_path / "a.log"
        proc = start_backup(path_a, log, components=["cassandra"], **SLOW)
        backup_a = wait_mid_stream(proc, Path(stack_a.repository.path), log)
        tag_a = snapshot_tag(backup_a, id_a)
        assert tag_a in node_tags(stack_a)
        # B backs up the same cluster meanwhile: its preflight must leave A's snapshot alone.
        result_b = hot_backup(stack=str(path_b), components=["cassandra"], record_digests=False)
        left = node_tags(stack_b)
        assert snapshot_tag(result_b["backup_id"], id_b) not in left
        assert set(others) <= left
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]  # A finished, snapshot intact
        with open_repository(stack_a) as repo:
            manifest = read_manifest(repo, backup_a)
        assert {o.table for o in manifest.objects if o.table} >= set(seeded1["rows"])
        assert tag_a not in node_tags(stack_a)

        # A leftover of A (a killed run) is cleared by A's next preflight, never by B's.
        leftover = snapshot_tag(new_backup_id("hot"), id_a)
        with host_for(stack_a, node) as host:
            cassandra.take_snapshot(host, settings, leftover, ["thehive"])
        for stack, rid in ((stack_b, id_b), (stack_a, id_a)):
            with repository_lock(stack, "hot-backup (test: preflight only)"):
                facts = preflight(stack, ["cassandra"], ["thehive"], rid)["cassandra"]
            left = node_tags(stack)
            assert set(others) <= left
            assert (leftover in left) == (rid == id_b), facts
        assert facts["stale_snapshots_cleared"] == [f"{node.name}:{leftover}"]
        assert f"{node.name}:{others[1]}" in facts["unattributed_snapshots"]
    finally:
        with host_for(stack_a, node) as host:
            for tag in others:
                cassandra.clear_snapshot(host, settings, tag)
