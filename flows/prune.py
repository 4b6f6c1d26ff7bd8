"""Prune: apply the stack's retention to the repository, oldest first, manifest first.

A backup is kept while it is among the ``keep_last`` newest complete ones or younger than
``keep_days``; the newest complete backup is never removed. Incomplete backups (no manifest: a
failed or killed run) are removed once older than ``incomplete_after_hours`` — their objects,
their Elasticsearch snapshot — and so are the repository's temporary leftovers (temp files,
pending multipart uploads) of that age. Shared Elasticsearch blobs (``es-blobs/``) and SSTable
components (``sstables/``, incremental mode) go once no kept backup's manifest references
them. Deleting the manifest first means a prune interrupted
half-way leaves an incomplete backup, never a "complete" one with holes.

A dry run only reads, so it takes no lock: it answers even while a backup runs.
"""
from __future__ import annotations

from contextlib import nullcontext
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from config.model import Stack
from flows.common import resolve_stack
from tasks import elasticsearch, es_repository, sstable_sweep
from tasks.catalog import delete_backup_objects, scan
from tasks.layout import backup_time
from tasks.lock import repository_lock
from tasks.manifest import read_manifest
from tasks.repositories import Repository, open_repository

__all__ = ["backup_time", "plan_prune", "prune"]


def plan_prune(rows: list[dict], now: datetime, keep_last: int | None, keep_days: int | None,
               incomplete_after_hours: float) -> list[str]:
    """Ids to delete, given catalog rows (newest first)."""
    doomed = []
    complete = [r for r in rows if r["status"] == "complete"]
    if keep_last is not None or keep_days is not None:
        for i, row in enumerate(complete):
            when = backup_time(row["id"])
            young = keep_days is not None and when is not None and now - when < timedelta(days=keep_days)
            recent = keep_last is not None and i < keep_last
            if i > 0 and not young and not recent:
                doomed.append(row["id"])
    for row in rows:
        when = backup_time(row["id"])
        if (row["status"] == "incomplete" and when is not None
                and now - when >= timedelta(hours=incomplete_after_hours)):
            doomed.append(row["id"])
    return doomed


@flow(name="prune")
def prune(stack: str = "", keep_last: int | None = None, keep_days: int | None = None,
          incomplete_after_hours: float = 24, dry_run: bool = True) -> dict:
    """Delete backups beyond retention (defaults: the stack's ``retention``).

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK or the Prefect Variable
            thehive-backup-stack.
        keep_last: keep this many newest complete backups.
        keep_days: keep complete backups younger than this.
        incomplete_after_hours: remove failed (manifest-less) backups older than this.
        dry_run: only list what would be deleted (the default).
    """
    logger = get_run_logger()
    st = resolve_stack(stack)
    keep_last = keep_last if keep_last is not None else st.retention.keep_last
    keep_days = keep_days if keep_days is not None else st.retention.keep_days
    with (nullcontext() if dry_run else repository_lock(st, "prune")), open_repository(st) as repo:
        found = scan(repo)
        rows = found.rows
        for note in found.notes():
            logger.warning(note)
        doomed = plan_prune(rows, datetime.now(UTC), keep_last, keep_days,
                            incomplete_after_hours)
        status = {r["id"]: r["status"] for r in rows}
        removed = [_delete_backup(st, repo, b, status[b] == "complete") for b in doomed
                   ] if not dry_run else []
        blobs = es_repository.plan_sweep(  # Elasticsearch blobs no kept backup references
            repo, [r["id"] for r in rows if r["status"] == "incomplete" and r["id"] not in doomed],
            datetime.now(UTC), incomplete_after_hours, frozenset(doomed))
        if not dry_run:
            es_repository.sweep(repo, blobs)
        components = sstable_sweep.plan_sweep(  # SSTable components no kept backup references
            repo, [r["id"] for r in rows if r["status"] == "incomplete" and r["id"] not in doomed],
            datetime.now(UTC), incomplete_after_hours, frozenset(doomed))
        if not dry_run:
            sstable_sweep.sweep(repo, components)
        temporary = repo.clean_temporary(incomplete_after_hours * 3600) if not dry_run else []
    if temporary:
        logger.info("removed %d temporary leftover(s): %s", len(temporary), temporary)
    create_table_artifact(removed or [{"backup": b, "objects": "would be deleted"} for b in doomed]
                          or [{"backup": "nothing to prune"}], key="prune")
    logger.info("%s %d backup(s): %s", "would delete" if dry_run else "deleted", len(doomed), doomed)
    if components.skipped:
        logger.warning("shared SSTable components not swept: %s", components.skipped)
    logger.info("%s %d unreferenced SSTable component(s), %d bytes; %d kept",
                "would delete" if dry_run else "deleted", len(components.unreferenced),
                components.bytes, components.kept)
    if blobs.skipped:
        logger.warning("shared Elasticsearch blobs not swept: %s", blobs.skipped)
    logger.info("%s %d unreferenced Elasticsearch blob(s), %d bytes; %d kept",
                "would delete" if dry_run else "deleted", len(blobs.unreferenced), blobs.bytes, blobs.kept)
    return {"dry_run": dry_run, "deleted": [] if dry_run else doomed, "would_delete": doomed,
            "es_blobs": {"unreferenced": len(blobs.unreferenced), "bytes": blobs.bytes,
                         "kept": blobs.kept, "deleted": 0 if dry_run else len(blobs.unreferenced),
                         "skipped": blobs.skipped},
            "sstables": {"unreferenced": len(components.unreferenced), "bytes": components.bytes,
                         "kept": components.kept,
                         "deleted": 0 if dry_run else len(components.unreferenced),
                         "skipped": components.skipped},
            "temporary_removed": temporary, "skipped": found.notes()}


def _delete_backup(st: Stack, repo: Repository, backup_id: str, complete: bool) -> dict:
    """Manifest first, then the objects, then the Elasticsearch snapshot: the manifest's record
    of it, or — for a failed run, which has none — the snapshot named after the backup id."""
    es_record = read_manifest(repo, backup_id).elasticsearch if complete else None
    deleted, left = delete_backup_objects(repo, backup_id, complete)
    snapshot = None
    if st.elasticsearch and (es_record or not complete):
        es_repo = es_record.repository if es_record else st.elasticsearch.snapshot_repository.name
        snapshot = es_record.snapshot if es_record else backup_id
        with elasticsearch.es_session(st.elasticsearch) as es:
            elasticsearch.delete_snapshot(es, es_repo, snapshot)  # absent: not an error
    return {"backup": backup_id, "objects": deleted, "es_snapshot": snapshot,
            "left_in_place": ", ".join(left)}
