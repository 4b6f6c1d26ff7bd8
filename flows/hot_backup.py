"""Hot backup: a consistent online backup of a running TheHive stack, verified by its manifest.

Order: lock → preflight (nothing touched on failure; clears this repository's leftover snapshots)
→ ``started.json`` → Cassandra snapshots (tag ``<backup-id>-<repository id>``) on every node in parallel,
per-table archives streamed into the repository, Elasticsearch snapshot and attachments
concurrently → clearsnapshot on every node whatever happened → manifest last.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.task_runners import ThreadPoolTaskRunner

from config.model import Stack
from flows.common import (
    ALL_COMPONENTS,
    Component,
    fan_out,
    mib,
    raise_failures,
    resolve_keyspaces,
    resolve_stack,
)
from flows.reports import hot_backup_failure_report, hot_backup_report
from tasks import cassandra, content_store, dispatch, es_repository, files, system_keyspaces
from tasks.archive import Compression
from tasks.catalog import stored_bytes
from tasks.layout import backup_prefix, new_backup_id, repository_id, snapshot_tag, started_key
from tasks.lock import HeldLock, RepositoryLocked, repository_lock
from tasks.manifest import Manifest, ObjectEntry, utcnow, write_manifest
from tasks.preflight import preflight_task
from tasks.repositories import open_repository
from tasks.ssh_pool import shared_ssh


class BackupFailed(RuntimeError):
    pass


def _repository_id(st: Stack) -> str:
    with open_repository(st) as repo:
        return repository_id(repo.url)


def _clear_leftover_snapshots(flow, flow_run, state) -> None:
    """Cancellation/crash hook: a snapshot of ours must never stay pinned on a node.

    Clears only this repository's tags, and only under its lock (then none is in flight: a run
    of another repository, or a new run of this one, keeps its snapshot). If another run holds
    the lock, its own preflight has cleared ours already, or the next one will.
    """
    log = logging.getLogger(__name__)
    try:
        stack = resolve_stack(flow_run.parameters.get("stack", ""))
        with repository_lock(stack, "hot-backup crash hook: clear snapshots", record_flow_run=False):
            outcome = cassandra.clear_leftover_snapshots_everywhere(stack, _repository_id(stack))
            for node, cleared in outcome.items():
                if isinstance(cleared, str):
                    log.warning("%s: clearing leftover snapshots failed: %s", node, cleared)
                else:
                    log.info("%s: cleared snapshots %s", node, cleared)
    except RepositoryLocked as exc:
        log.warning("leftover snapshots not cleared now (%s); the next backup's preflight will", exc)
    except Exception as exc:
        log.warning("leftover snapshots not cleared: %s", exc)


@flow(name="hot-backup", task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
      on_cancellation=[_clear_leftover_snapshots], on_crashed=[_clear_leftover_snapshots])
def hot_backup(
    stack: str = "",
    components: list[Component] = ALL_COMPONENTS,
    keyspaces: list[str] | None = None,
    compression: Compression = "zstd",
    tables_per_node: int | None = None,
    record_digests: bool | None = None,
    label: str = "",
    include_system_keyspaces: bool | None = None,
) -> dict:
    """Back up a running TheHive stack.

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK, else the Prefect Variable
            thehive-backup-stack.
        components: what to back up: cassandra, elasticsearch, files.
        keyspaces: Cassandra keyspaces (default: those of the stack file).
        compression: zstd (default), gzip, bzip2 (the reference scripts' .tbz) or none.
        tables_per_node: table archives streamed at once from each node; empty: the stack
            file's cassandra.streams_per_node (default 2). cassandra.max_streams caps all nodes'.
        record_digests: record a row count and content digest per table (a full read of the
            keyspace at consistency ALL; exact only when nothing writes meanwhile), for restore
            drills of a scheduled verification; empty: the stack file's cassandra.record_digests
            (default off: a backup then reads no row, and records SSTable fingerprints).
        label: free text stored in the manifest.
        include_system_keyspaces: also archive each node's system keyspaces (what a node rebuild
            needs; restores ignore them); default: the stack file's cassandra.include_system_keyspaces.
    """
    logger = get_run_logger()
    st = resolve_stack(stack)
    keyspaces = resolve_keyspaces(st, keyspaces)
    components = list(dict.fromkeys(components))
    if tables_per_node is None:
        tables_per_node = st.cassandra.streams_per_node
    if tables_per_node < 1:
        raise ValueError("tables_per_node must be at least 1")
    backup_id = new_backup_id("hot")
    started_at, t0 = utcnow(), time.monotonic()
    logger.info("backup %s of stack %s: %s", backup_id, st.name, ", ".join(components))

    if record_digests is None:
        record_digests = st.cassandra.record_digests
    with repository_lock(st, f"hot-backup {backup_id}") as held, shared_ssh():
        return _hot_backup(HotBackupRun(st, held, backup_id, components, keyspaces, compression,
                                        tables_per_node, record_digests, label, started_at, t0,
                                        include_system_keyspaces, stack))


@dataclass(frozen=True)
class HotBackupRun:
    """One run's settled parameters, handed to its body as one value."""

    st: Stack
    held: HeldLock
    backup_id: str
    components: Sequence[str]
    keyspaces: list[str]
    compression: Compression
    tables_per_node: int
    record_digests: bool
    label: str
    started_at: str
    t0: float
    include_system_keyspaces: bool | None = None  # None: the stack file's default
    stack_ref: str = ""  # the ``stack`` parameter as given: what a node's dispatched part resolves


def _hot_backup(run: HotBackupRun) -> dict:
    st, held, backup_id, components, keyspaces = run.st, run.held, run.backup_id, run.components, run.keyspaces
    compression, tables_per_node, record_digests = run.compression, run.tables_per_node, run.record_digests
    label, started_at, t0 = run.label, run.started_at, run.t0
    logger = get_run_logger()
    repo_id = _repository_id(st)
    tag = snapshot_tag(backup_id, repo_id)
    preflight_task(st, components, keyspaces, repo_id)
    with open_repository(st) as repo:  # first object: a killed run is then known to prune
        repo.put_bytes(started_key(backup_id), json.dumps({
            "backup_id": backup_id, "started_at": started_at, "snapshot_tag": tag,
            "repository_id": repo_id, "host": socket.gethostname(), "pid": os.getpid(),
            "flow_run_id": held.holder.flow_run_id,
            "elasticsearch_snapshot": backup_id if "elasticsearch" in components else None,
        }).encode())

    es_future = (es_repository.snapshot_and_copy_task.submit(st, backup_id)  # and its files copied
                 if "elasticsearch" in components else None)
    files_future = (files.backup_attachments_task.submit(st, backup_id, compression)
                    if "files" in components else None)

    objects: list[ObjectEntry] = []
    errors: list[str] = []
    record: dict = {}
    timings: dict[str, float] = {}
    if "cassandra" in components:
        cass_t0 = time.monotonic()
        try:
            record, entries = _backup_cassandra(st, backup_id, tag, keyspaces, compression,
                                                tables_per_node, record_digests,
                                                run.include_system_keyspaces, run.stack_ref)
            objects += entries
        except Exception as exc:
            errors.append(f"cassandra: {exc}")
        timings["cassandra"] = round(time.monotonic() - cass_t0, 2)

    manifest_parts: dict = {"cassandra": record or None}
    for name, future in (("elasticsearch", es_future), ("files", files_future)):
        if future is None:
            continue
        try:
            result = future.result()
        except Exception as exc:
            errors.append(f"{name}: {exc}")
            continue
        if name == "elasticsearch":
            manifest_parts["elasticsearch"] = result
            timings["elasticsearch"] = result.get("seconds", 0)
        else:
            manifest_parts["files"], entries = result
            objects += entries
            timings["files"] = round(sum(e.seconds or 0 for e in entries), 2)

    with open_repository(st) as repo:
        if errors:
            leftovers = sorted(o.key for o in repo.list(backup_prefix(backup_id)))
            hot_backup_failure_report(backup_id, errors, leftovers, es_future is not None)
            raise BackupFailed(f"backup {backup_id} failed, no manifest written:\n- "
                               + "\n- ".join(errors))
        held.check()  # a lost lock: another run may be pruning or restoring; no manifest
        timings["total"] = round(time.monotonic() - t0, 2)
        manifest = Manifest(
            backup_id=backup_id, kind="hot", stack=st.name, label=label, started_at=started_at,
            finished_at=utcnow(), components=components, objects=objects, timings=timings,
            content_key_id=content_store.content_key_id(repo), **manifest_parts,
        )
        write_manifest(repo, manifest)
    hot_backup_report(manifest)
    needed, added = stored_bytes(manifest)
    logger.info("backup %s complete: %d objects, %.1f MiB (%.1f MiB written by this run) in %.1fs",
                backup_id, len(objects), mib(needed), mib(added), timings["total"])
    return {"backup_id": backup_id, "objects": len(objects), "bytes": needed, "added_bytes": added,
            "seconds": timings["total"], "repository": repo.url}


def _backup_cassandra(st: Stack, backup_id: str, tag: str, keyspaces: list[str],
                      compression: Compression, tables_per_node: int,
                      digests: bool, include_system: bool | None = None,
                      stack_ref: str = "") -> tuple[dict, list[ObjectEntry]]:
    """Snapshot every node (tag: the backup id and the repository's id), stream every table,
    and clear the snapshots whatever happens."""
    nodes = [n.name for n in st.nodes_with("cassandra")]
    system = st.cassandra.include_system_keyspaces if include_system is None else include_system
    incremental = st.cassandra.storage == "incremental"
    if incremental:  # what the kept backups stored already, read once for every table
        with open_repository(st) as repo:
            content_store.RunStore.open(backup_id, repo)
    try:
        snaps = {n: system_keyspaces.snapshot_node_task.submit(st, n, tag, keyspaces, system)
                 for n in nodes}
        tables = {n: f.result() for n, f in snaps.items()}
        meta_future = cassandra.capture_metadata_task.submit(st, backup_id, keyspaces, digests)
        total = sum(len(t) for t in tables.values())
        progress = cast(UUID, create_progress_artifact(  # a sync call: a UUID, not a coroutine
            0.0, key="hot-backup-progress", description=f"{backup_id}: 0/{total} tables"))
        done_count = 0

        def on_done(_future) -> None:
            nonlocal done_count
            done_count += 1
            update_progress_artifact(progress, 100.0 * done_count / total,
                                     description=f"{backup_id}: {done_count}/{total} tables")

        incremental_keyspaces = keyspaces if incremental else []  # system keyspaces: archives (rebuild)
        remote = {n: q for n in nodes if (q := st.cassandra.settings_for(n).work_queue)}
        dispatched = [dispatch.dispatch_node_task.submit(  # on workers near those nodes (tasks/dispatch.py)
            st, n, queue, {"stack": stack_ref, "node": n, "backup_id": backup_id,
                           "tables": [asdict(t) for t in tables[n]], "compression": compression,
                           "incremental_keyspaces": incremental_keyspaces,
                           "tables_per_node": tables_per_node}) for n, queue in remote.items()]
        futures = fan_out(
            {n: t for n, t in tables.items() if n not in remote},
            lambda node, snap: cassandra.archive_table_task.submit(
                st, node, snap, backup_id, compression, snap.keyspace in incremental_keyspaces),
            tables_per_node, on_done, total=st.cassandra.max_streams)
        entries = raise_failures(futures, total - sum(len(tables[n]) for n in remote),
                                 "table archive(s) failed", BackupFailed)
        for part in raise_failures(dispatched, len(remote), "node part(s) failed", BackupFailed):
            entries += part
            done_count += len(part) - 1
            on_done(None)
    finally:
        content_store.RunStore.close(backup_id)
        clears = [cassandra.clear_node_task.submit(st, n, tag) for n in nodes]
        for c in clears:
            c.wait()
    not_cleared = [c for c in clears if c.state.is_failed()]
    if not_cleared:
        raise BackupFailed(f"clearsnapshot failed on {len(not_cleared)} node(s): "
                           f"{not_cleared[0].state.message}")
    record, schema_entries = meta_future.result()
    if system:
        record["system_keyspaces"] = system_keyspaces.archived(entries, keyspaces)
    return record, entries + schema_entries


