"""The catalog: which backups a repository holds, from their manifests alone."""
from __future__ import annotations

from collections import defaultdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from config.model import Stack
from flows.common import mib, resolve_stack
from tasks import layout
from tasks.manifest import ManifestError, read_manifest
from tasks.repositories import Repository, open_repository


def catalog(repo: Repository) -> list[dict]:
    """One row per backup id, newest first. A backup id without a manifest is incomplete."""
    sizes: dict[str, int] = defaultdict(int)
    complete: set[str] = set()
    for obj in repo.list():
        backup_id = layout.backup_id_of(obj.key)
        if backup_id is None:
            continue  # not under a backup id (probe, lock)
        sizes[backup_id] += obj.size
        if layout.is_manifest_key(obj.key):
            complete.add(backup_id)
    rows = []
    for backup_id in sizes:
        row = {"id": backup_id, "kind": layout.backup_kind(backup_id), "status": "incomplete",
               "started": "", "finished": "", "components": "", "size_mib": mib(sizes[backup_id]),
               "label": ""}
        if backup_id in complete:
            try:
                m = read_manifest(repo, backup_id)
                row.update(kind=m.kind, status="complete", started=m.started_at,
                           finished=m.finished_at, components=",".join(m.components),
                           size_mib=mib(m.size), label=m.label)
            except ManifestError as exc:
                row["status"] = f"unreadable: {exc}"
        rows.append(row)
    return sorted(rows, key=lambda r: layout.backup_sort_key(r["id"]), reverse=True)


def latest_complete(repo: Repository) -> str:
    for row in catalog(repo):
        if row["status"] == "complete":
            return row["id"]
    raise LookupError(f"{repo.url} holds no complete backup")


@flow(name="list-backups")
def list_backups(stack: str = "") -> list[dict]:
    """List the backups of the stack's repository (id, kind, dates, components, size, status)."""
    st: Stack = resolve_stack(stack)
    with open_repository(st) as repo:
        rows = catalog(repo)
    create_table_artifact(rows, key="backup-catalog", description=f"backups of {st.name}")
    get_run_logger().info("%d backup(s) in %s", len(rows), st.repository)
    return rows
