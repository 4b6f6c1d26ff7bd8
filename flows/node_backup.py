"""One node's part of a hot backup, run by a worker near the node (tasks/dispatch.py).

Deployed as ``node-backup/node-backup`` (prefect.yaml, no schedule): the hot backup starts it on
the node's ``work_queue`` with the node's snapshotted tables, after the snapshot and before
``clearsnapshot``, both of which stay with the hot backup.
"""
from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import fan_out, raise_failures, resolve_stack
from tasks import cassandra, content_store, dispatch
from tasks.archive import Compression
from tasks.cassandra import TableSnapshot
from tasks.repositories import open_repository
from tasks.ssh_pool import shared_ssh


class NodeBackupFailed(RuntimeError):
    pass


@flow(name="node-backup", task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
def node_backup(stack: str, node: str, backup_id: str, tables: list[dict[str, str]],
                compression: Compression = "zstd", incremental_keyspaces: list[str] | None = None,
                tables_per_node: int = 2) -> dict:
    """Archive ``node``'s snapshotted ``tables`` of hot backup ``backup_id`` into the repository.

    Args:
        stack: the stack file (as the hot backup names it: a path on this worker's machine, or
            empty for the Prefect Variable).
        node: the Cassandra node of the stack file.
        backup_id: the running hot backup's id.
        tables: the node's table snapshots ({keyspace, table, table_dir, path}).
        compression: as the hot backup's.
        incremental_keyspaces: keyspaces stored as content-addressed components.
        tables_per_node: table archives streamed at once.
    """
    st = resolve_stack(stack)
    snaps = [TableSnapshot(**t) for t in tables]
    incremental = set(incremental_keyspaces or [])
    if incremental:
        with open_repository(st) as repo:
            content_store.RunStore.open(backup_id, repo)
    try:
        with shared_ssh():
            futures = fan_out({node: snaps}, lambda n, snap: cassandra.archive_table_task.submit(
                st, n, snap, backup_id, compression, snap.keyspace in incremental), tables_per_node,
                lambda _future: None)
            entries = raise_failures(futures, len(snaps), "table archive(s) failed", NodeBackupFailed)
    finally:
        content_store.RunStore.close(backup_id)
    with open_repository(st) as repo:
        dispatch.put_entries(repo, backup_id, node, entries)
    return {"node": node, "tables": len(entries)}
